"""Comparison report over every run folder under a directory (``fedrec report DIR``).

A run is any folder holding ``config.yaml``; it is complete when it also holds
``summary.json``, incomplete (crashed or still running) otherwise. Written into OUTDIR:

- ``results.csv``: one row per run (complete and incomplete): label, setting, seed, ε spent,
  δ, full-ranking NDCG@10 / HR@10 / MRR, sampled NDCG@10, timing, bytes per client per round,
  per-client spread of the chosen metric, fairness (:mod:`simulations.report_fairness`);
- ``report.md`` and ``report.html`` (the same content): a table of the complete runs, their
  fairness, the means over seeds, the incomplete runs, and the plots with one-line captions;
- ``plots/utility_vs_epsilon.png`` (metric vs ε spent, one line per setting),
  ``plots/metric_per_round.png`` (training loss and metric per round),
  ``plots/per_client.png`` (the metric over each run's clients),
  ``plots/group_ndcg_vs_epsilon.png`` (NDCG@10 of the activity groups vs ε spent).

A run's *label* is its kind plus the config keys whose values differ between the runs; its
*group* is the label without ``seed`` (seeds are averaged); its *setting* is the group without
the privacy budget (one curve of the privacy–utility plot).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.run_store import atomic_write

# Keys that never change a result, or name a machine-specific place.
IGNORED = ("output_dir", "cache_dir", "device", "baseline", "hydra", "privacy.ledger_dir")
BUDGET = ("privacy.epsilon", "privacy.delta", "privacy.enabled", "privacy.name")
# Config groups a kind does not read: a difference there must not split its runs.
UNUSED = {
    "federated": ("train.epochs",),
    "popularity": ("model", "privacy", "secagg", "strategy", "simulation", "train"),
    "centralized": ("strategy", "secagg", "simulation"),
    "sasrec_ids": ("strategy", "secagg", "simulation"),
    "local": ("secagg", "simulation", "train.epochs", "strategy.evaluate_every", "strategy.fraction_fit",
              "strategy.fraction_evaluate", "strategy.min_fit_clients"),
}  # fmt: skip
FIXED_METRICS = ("ndcg@10", "hr@10", "mrr")


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested mapping; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return "inf" if value == math.inf else format(value, "g")
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


@dataclass
class Run:
    rel: str
    config: dict[str, Any]
    summary: dict[str, Any] | None
    rows: list[dict[str, Any]]
    note: str = ""
    label: str = ""
    group: str = ""
    setting: str = ""
    keys: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def kind(self) -> str:
        kind = (self.summary or {}).get("kind") or self.config.get("baseline")
        return str(kind or "federated")

    @property
    def private(self) -> bool:
        privacy = (self.summary or {}).get("privacy")
        if isinstance(privacy, dict) and "enabled" in privacy:
            return bool(privacy["enabled"])
        return bool(self.config.get("privacy.enabled")) and self.kind != "popularity"

    def get(self, *path: str) -> Any:
        """A value deep in summary.json, None when any step is missing."""
        node: Any = self.summary or {}
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        return node

    @property
    def epsilon(self) -> float | None:
        """ε spent; inf without DP; None when not known (incomplete run, older summary)."""
        if not self.complete:
            return None
        if not self.private:
            return math.inf
        eps = self.get("privacy", "epsilon_max")
        return float(eps) if isinstance(eps, (int, float)) else None

    def metric(self, name: str) -> float | None:
        part, key = ("sampled", name.removeprefix("sampled_")) if name.startswith("sampled_") else ("full", name)
        value = self.get("metrics", part, key)
        return float(value) if isinstance(value, (int, float)) else None

    def client_values(self, name: str) -> list[float]:
        clients = self.get("fairness", "clients")
        if not isinstance(clients, dict):
            return []
        values = [c.get(name) for c in clients.values() if isinstance(c, dict)]
        return [float(v) for v in values if isinstance(v, (int, float))]

    @property
    def last_round(self) -> int | None:
        return max((r["round"] for r in self.rows if isinstance(r.get("round"), int)), default=None)

    def row_mean(self, key: str) -> float | None:
        values = [r[key] for r in self.rows if isinstance(r.get(key), (int, float))]
        return statistics.fmean(values) if values else None


def load_run(root: Path, folder: Path) -> Run:
    config, summary, rows, note = {}, None, [], ""
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        note = f"config.yaml unreadable: {type(e).__name__}"
    if (folder / "summary.json").is_file():
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError) as e:
            note = f"summary.json unreadable: {type(e).__name__}"
    if (folder / "failed.txt").is_file():  # the run ended without a result, and said why
        note = "failed: " + (folder / "failed.txt").read_text(errors="replace").strip()
    if (folder / "metrics.jsonl").is_file():
        for line in (folder / "metrics.jsonl").read_text(errors="replace").splitlines():
            try:  # a crash can leave a half-written last line
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    config = flatten(config) if isinstance(config, dict) else {}
    return Run(folder.relative_to(root).as_posix(), config, summary if isinstance(summary, dict) else None, rows, note)


def find_runs(root: Path) -> list[Run]:
    """Every run folder under ``root``; symlinked folders are followed (a folder of links
    gathers sweeps from elsewhere into one report), each real folder once."""
    runs, seen = [], set()
    for here, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # a link back up the tree, or two links to one folder
            dirs[:] = []
            continue
        seen.add(real)
        # Hydra keeps its own unresolved config.yaml in .hydra/: not a run.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "config.yaml" in files:
            run = load_run(root, Path(here))
            # An audit's re-training (RUN_DIR/audit/train) has canaries and held-out users:
            # not comparable with the runs, and the audit report covers it.
            if not (run.config.get("audit.canaries") or run.config.get("audit.holdout")):
                runs.append(run)
    return runs


def _relevant(run: Run) -> dict[str, Any]:
    unused = UNUSED.get(run.kind, ())
    keys = {k: v for k, v in run.config.items() if not _under(k, IGNORED) and not _under(k, unused)}
    if "dataset.path" in keys and keys["dataset.path"]:
        # The same data mounted at two places is the same data set: compare the folder name.
        keys["dataset.path"] = Path(str(keys["dataset.path"])).name
    if not run.private:
        # Without DP the other privacy.* keys are meaningless (privacy=none sets them to null).
        keys = {k: v for k, v in keys.items() if not k.startswith("privacy.")}
        if not _under("privacy", unused):
            keys["privacy"] = "none"
    return keys


def assign_labels(runs: list[Run]) -> None:
    """Label, group and setting of every run from the config keys that differ between runs."""
    for run in runs:
        run.keys = _relevant(run)
    values: dict[str, set[str]] = {}
    for run in runs:
        for k, v in run.keys.items():
            values.setdefault(k, set()).add(_show(v))
    # A key only some runs have (partition.alpha) differs only if its values differ; being
    # absent is already explained by the key that selected another group (partition.scheme).
    differ = {k for k, vs in values.items() if len(vs) > 1}
    if any(r.private for r in runs) and any("privacy" in r.keys for r in runs):
        differ.add("privacy")
    order = sorted(differ, key=lambda k: (not k.startswith("privacy"), k == "seed", k))
    for run in runs:
        parts = [f"{k}={_show(run.keys[k])}" for k in order if k in run.keys]
        run.label = " ".join([run.kind, *parts])
        run.group = " ".join([run.kind, *(p for p in parts if not p.startswith("seed="))])
        budget = ("seed=", "privacy=", *(f"{k}=" for k in BUDGET))
        run.setting = " ".join([run.kind, *(p for p in parts if not p.startswith(budget))])
    seen = Counter(run.label for run in runs)
    for run in runs:
        if seen[run.label] > 1:  # identical configs (a re-run elsewhere): keep rows apart
            run.label += f" [{run.rel}]"


def sort_key(run: Run) -> tuple:
    """Table order: setting, then ε spent (∞ last, unknown after), then seed."""
    eps = run.epsilon
    return (run.setting, eps is None, eps if eps is not None else 0.0, _show(run.config.get("seed")), run.label)


@dataclass
class Group:
    """Runs that differ only in their seed, for the privacy–utility curve."""

    name: str
    setting: str
    kind: str
    epsilon: float | None
    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)


def group_runs(runs: list[Run], metric: str | Callable[[Run], float | None]) -> list[Group]:
    """Complete runs reporting ``metric`` (a name, or Run -> value or None), grouped by label
    without the seed, by setting and ε."""
    value = metric if callable(metric) else lambda run: run.metric(metric)
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if run.complete and value(run) is not None:
            groups.setdefault(run.group, []).append(run)
    out = []
    for name, members in groups.items():
        eps = [r.epsilon for r in members]
        known = [e for e in eps if e is not None]
        epsilon = None if not known else (math.inf if math.inf in known else statistics.fmean(known))
        values = [v for v in map(value, members) if v is not None]
        out.append(Group(name, members[0].setting, members[0].kind, epsilon, values))
    return sorted(out, key=lambda g: (g.setting, g.epsilon is None, g.epsilon or 0.0))


def _csv_num(value: Any) -> str:
    if value is None:
        return ""
    return "inf" if value == math.inf else str(value)


def csv_rows(runs: list[Run], metric: str) -> list[dict[str, str]]:
    from simulations.report_fairness import fairness_values

    metrics = list(dict.fromkeys([*FIXED_METRICS, metric]))
    out = []
    for run in runs:
        clients = run.client_values(metric)
        row: dict[str, Any] = {
            "run": run.rel, "status": "complete" if run.complete else "incomplete", "kind": run.kind,
            "label": run.label, "setting": run.setting, "seed": run.config.get("seed"),
            "dataset": run.get("data", "dataset") or run.config.get("dataset.name"),
            "clients": run.get("data", "clients") or run.config.get("partition.num_clients"),
            "epsilon": run.epsilon, "delta": run.get("privacy", "delta"),
            **{m: run.metric(m) for m in metrics}, "sampled_ndcg@10": run.metric("sampled_ndcg@10"),
            "eval_users": run.get("eval_users"),
            "rounds": run.get("timing", "rounds") if run.complete else run.last_round,
            "seconds_total": run.get("timing", "seconds_total"),
            "seconds_per_round": run.get("timing", "seconds_per_round"),
            "adapter_bytes": run.get("communication", "adapter_bytes"),
            "bytes_up_per_client_per_round": run.row_mean("bytes_up_per_client"),
            "bytes_down_per_client_per_round": run.row_mean("bytes_down_per_client"),
            f"client_{metric}_min": min(clients) if clients else None,
            f"client_{metric}_mean": statistics.fmean(clients) if clients else None,
            f"client_{metric}_max": max(clients) if clients else None, **fairness_values(run),
        }  # fmt: skip
        out.append({k: _csv_num(v) for k, v in row.items()})
    return out


class NoRunsError(Exception):
    pass


def build_report(root: Path, out: Path | None = None, metric: str = "ndcg@10") -> tuple[list[Run], list[Path]]:
    """Write the report of every run under ``root`` into ``out`` (default ``root``); returns the
    runs and the paths written. Raises NoRunsError when ``root`` holds no run."""
    from simulations import report_plots

    root, out = Path(root), Path(out if out is not None else root)
    if not root.is_dir():
        raise NoRunsError(f"{root} is not a folder")
    runs = find_runs(root)
    if not runs:
        raise NoRunsError(f"no run under {root} (no folder holding config.yaml)")
    assign_labels(runs)
    runs.sort(key=sort_key)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs, metric)
    written = []
    plots: dict[str, str | None] = {}
    for name, draw in (("utility_vs_epsilon", report_plots.utility_vs_epsilon),
                       ("metric_per_round", report_plots.metric_per_round),
                       ("per_client", report_plots.per_client),
                       ("group_ndcg_vs_epsilon", report_plots.group_ndcg_vs_epsilon)):  # fmt: skip
        path = out / "plots" / f"{name}.png"
        plots[name] = draw(runs, groups, metric, path)
        if plots[name] is None:
            written.append(path)
        else:  # an earlier report's plot would pass for this one
            path.unlink(missing_ok=True)
    rows = csv_rows(runs, metric)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    from simulations.report_render import build_blocks, render_html, render_markdown

    blocks = build_blocks(root, runs, groups, metric, plots)
    for name, text in (("results.csv", buf.getvalue()), ("report.md", render_markdown(blocks)),
                       ("report.html", render_html(blocks))):  # fmt: skip
        atomic_write(out / name, text)
        written.append(out / name)
    return runs, written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR", help="searched recursively for run folders (with config.yaml)")
    parser.add_argument("--out", type=Path, metavar="OUTDIR", help="where the report is written (default: DIR)")
    parser.add_argument("--metric", default="ndcg@10",
                        help="metric of the plots, seed means and per-client columns (default ndcg@10; e.g. hr@10, "
                             "mrr, sampled_ndcg@10)")  # fmt: skip


def run_from_args(args: argparse.Namespace, prog: str = "fedrec report") -> int:
    try:
        runs, written = build_report(args.dir, args.out, args.metric)
    except NoRunsError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    done = sum(r.complete for r in runs)
    print(f"{len(runs)} runs: {done} complete, {len(runs) - done} incomplete")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.report", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), prog="simulations.report")


if __name__ == "__main__":
    sys.exit(main())
