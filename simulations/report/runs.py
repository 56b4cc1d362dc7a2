"""The runs under a folder, as the report sees them: config, summary, metrics, labels, seed groups."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Keys that never change a result, or name a machine-specific place.
IGNORED = ("output_dir", "cache_dir", "device", "baseline", "hydra", "privacy.ledger_dir")


BUDGET = ("privacy.epsilon", "privacy.delta", "privacy.enabled", "privacy.name")


# Config groups a kind does not read: a difference there must not split its runs.
UNUSED = {
    "federated": ("train.epochs",),
    "popularity": ("model", "privacy", "secagg", "strategy", "simulation", "train"),
    "centralized": ("strategy", "secagg", "simulation"),
    "sasrec_ids": ("strategy", "secagg", "simulation"),
    "local": (
        "secagg",
        "simulation",
        "train.epochs",
        "strategy.evaluate_every",
        "strategy.fraction_fit",
        "strategy.fraction_evaluate",
        "strategy.min_fit_clients",
    ),
}


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


class NoRunsError(Exception):
    pass
