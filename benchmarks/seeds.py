"""Mean ± SD over seeds of completed runs, grouped by every config key but ``seed``.

    .venv/bin/python benchmarks/seeds.py runs/w21_iid runs/w21_none [--metric ndcg@10 hr@10]

Reads every ``summary.json`` below the folders given (with its ``config.yaml``) and prints one
row per group: the keys in which the groups differ, the seeds, each seed's value, mean and
sample SD (n - 1), the largest ε spent, and seconds per round.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, f"{key}.") if isinstance(v, dict) else {key: v})
    return out


IGNORED = ("seed", "output_dir", "resume", "cache_dir")


def load_runs(folders: list[Path]) -> list[tuple[dict, dict]]:
    runs = []
    for folder in folders:
        for summary in sorted(folder.rglob("summary.json")):
            config = yaml.safe_load((summary.parent / "config.yaml").read_text())
            runs.append((_flat(config), json.loads(summary.read_text())))
    return runs


def table(runs: list[tuple[dict, dict]], metrics: list[str]) -> list[str]:
    keys = sorted({k for c, _ in runs for k in c if not k.startswith(IGNORED)})
    differ = [k for k in keys if len({json.dumps(c.get(k)) for c, _ in runs}) > 1]
    groups: dict[str, list[tuple[dict, dict]]] = {}
    for c, s in runs:
        groups.setdefault(" ".join(f"{k}={c.get(k)}" for k in differ) or "(all)", []).append((c, s))
    lines = []
    for label, members in groups.items():
        members.sort(key=lambda m: m[0].get("seed", 0))
        parts = [label, f"seeds {[m[0].get('seed') for m in members]}"]
        for metric in metrics:
            values = [m[1]["metrics"]["full"][metric] for m in members]
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            parts.append(
                f"{metric} {statistics.fmean(values):.4f} ± {sd:.4f} ({', '.join(f'{v:.4f}' for v in values)})"
            )
        eps = [m[1]["privacy"].get("epsilon_max") for m in members]
        eps = [e for e in eps if e is not None]
        secs = [m[1]["timing"].get("seconds_per_round") for m in members]
        secs = [x for x in secs if x is not None]
        parts.append(f"ε {max(eps):.2f}" if eps else "ε ∞")
        if secs:
            parts.append(f"{statistics.fmean(secs):.1f} s/round")
        lines.append(" | ".join(parts))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--metric", nargs="+", default=["ndcg@10", "hr@10"])
    args = ap.parse_args()
    runs = load_runs(args.folders)
    if not runs:
        raise SystemExit(f"no completed run (summary.json) under {', '.join(map(str, args.folders))}")
    print("\n".join(table(runs, args.metric)))


if __name__ == "__main__":
    main()
