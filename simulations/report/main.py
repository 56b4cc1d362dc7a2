"""Comparison report over every run folder under a directory (``fedrec report DIR``).

A run is any folder holding ``config.yaml``; it is complete when it also holds
``summary.json``, incomplete (crashed or still running) otherwise. Written into OUTDIR:

- ``results.csv``: one row per run (complete and incomplete): label, setting, seed, ε spent,
  δ, full-ranking NDCG@10 / HR@10 / MRR, sampled NDCG@10, timing, bytes per client per round,
  per-client spread of the chosen metric, fairness (:mod:`simulations.report.fairness`);
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
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from common.tracking.store import atomic_write
from simulations.report.runs import FIXED_METRICS, NoRunsError, Run, assign_labels, find_runs, group_runs, sort_key


def _csv_num(value: Any) -> str:
    if value is None:
        return ""
    return "inf" if value == math.inf else str(value)


def csv_rows(runs: list[Run], metric: str) -> list[dict[str, str]]:
    from simulations.report.fairness import fairness_values

    metrics = list(dict.fromkeys([*FIXED_METRICS, metric]))
    out = []
    for run in runs:
        clients = run.client_values(metric)
        row: dict[str, Any] = {
            "run": run.rel,
            "status": "complete" if run.complete else "incomplete",
            "kind": run.kind,
            "label": run.label,
            "setting": run.setting,
            "seed": run.config.get("seed"),
            "dataset": run.get("data", "dataset") or run.config.get("dataset.name"),
            "clients": run.get("data", "clients") or run.config.get("partition.num_clients"),
            "epsilon": run.epsilon,
            "delta": run.get("privacy", "delta"),
            **{m: run.metric(m) for m in metrics},
            "sampled_ndcg@10": run.metric("sampled_ndcg@10"),
            "eval_users": run.get("eval_users"),
            "rounds": run.get("timing", "rounds") if run.complete else run.last_round,
            "seconds_total": run.get("timing", "seconds_total"),
            "seconds_per_round": run.get("timing", "seconds_per_round"),
            "adapter_bytes": run.get("communication", "adapter_bytes"),
            "bytes_up_per_client_per_round": run.row_mean("bytes_up_per_client"),
            "bytes_down_per_client_per_round": run.row_mean("bytes_down_per_client"),
            f"client_{metric}_min": min(clients) if clients else None,
            f"client_{metric}_mean": statistics.fmean(clients) if clients else None,
            f"client_{metric}_max": max(clients) if clients else None,
            **fairness_values(run),
        }
        out.append({k: _csv_num(v) for k, v in row.items()})
    return out


def build_report(root: Path, out: Path | None = None, metric: str = "ndcg@10") -> tuple[list[Run], list[Path]]:
    """Write the report of every run under ``root`` into ``out`` (default ``root``); returns the
    runs and the paths written. Raises NoRunsError when ``root`` holds no run."""
    from simulations.report import plots as report_plots

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
    for name, draw in (
        ("utility_vs_epsilon", report_plots.utility_vs_epsilon),
        ("metric_per_round", report_plots.metric_per_round),
        ("per_client", report_plots.per_client),
        ("group_ndcg_vs_epsilon", report_plots.group_ndcg_vs_epsilon),
    ):
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
    from simulations.report.render import build_blocks, render_html, render_markdown

    blocks = build_blocks(root, runs, groups, metric, plots)
    for name, text in (
        ("results.csv", buf.getvalue()),
        ("report.md", render_markdown(blocks)),
        ("report.html", render_html(blocks)),
    ):
        atomic_write(out / name, text)
        written.append(out / name)
    return runs, written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR", help="searched recursively for run folders (with config.yaml)")
    parser.add_argument("--out", type=Path, metavar="OUTDIR", help="where the report is written (default: DIR)")
    parser.add_argument(
        "--metric",
        default="ndcg@10",
        help="metric of the plots, seed means and per-client columns (default ndcg@10; e.g. hr@10, "
        "mrr, sampled_ndcg@10)",
    )


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
