"""Bytes per client per round, upload and download, for each adapter (model=projection|lora).

Runs the real simulation harness with ``simulation.measure_bytes=true``: the ClientApp's
``count_bytes`` mod logs the serialized size (Flower's protobuf, what goes on the wire) of
every message a client receives and sends to RUN_DIR/bytes.jsonl. Training messages are
averaged per (round, client); evaluation messages are reported apart (they carry the
adapter down and only sums back up). The ratio printed is upload per round / 2 MB (target ≤ 1).

The adapter's size depends on the catalogue (the item bias has one value per item), so the
data matters: default synthetic 400 items; ``--dataset-overrides dataset=movielens_100k
dataset.path=...`` for 1,682 items.

    .venv/bin/python benchmarks/bytes_per_round.py
    .venv/bin/python benchmarks/bytes_per_round.py --models projection lora --dataset-overrides \\
        dataset=movielens_100k dataset.path=../shared/data/ml-100k
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 2_000_000  # bytes: "≤ 2 MB per client per round" (decimal MB)


def measure(model: str, clients: int, rounds: int, data: list[str], extra: list[str], out: Path) -> dict:
    overrides = [
        f"model={model}",
        *data,
        f"partition.num_clients={clients}",
        f"strategy.num_rounds={rounds}",
        "simulation.measure_bytes=true",
        "secagg=none",
        *extra,
        f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0", "FEDREC_PROGRESS": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.run", *overrides], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(f"run failed (model={model}):\n{proc.stderr[-3000:]}")
    per: dict[str, dict[tuple[int, int], list[int]]] = {"train": {}, "evaluate": {}}
    for line in (out / "bytes.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["type"] in per:
            up_down = per[r["type"]].setdefault((r["round"], r["client"]), [0, 0])
            up_down[0] += r["up"]
            up_down[1] += r["down"]
    summary = json.loads((out / "summary.json").read_text())
    row = {
        "model": model,
        "adapter_parameters": summary["communication"]["adapter_parameters"],
        "adapter_bytes": summary["communication"]["adapter_bytes"],
        "items": summary["data"].get("items"),
    }
    for kind, values in per.items():
        n = max(len(values), 1)
        row[f"{kind}_up"] = sum(v[0] for v in values.values()) / n
        row[f"{kind}_down"] = sum(v[1] for v in values.values()) / n
        row[f"{kind}_messages"] = len(values)
    row["ratio"] = row["train_up"] / TARGET
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["projection", "lora"], choices=["projection", "lora"])
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--dataset-overrides",
        nargs="*",
        default=["dataset.num_users=90"],
        help="data for the runs (bytes do not depend on the users, only on the catalogue)",
    )
    p.add_argument(
        "--overrides",
        nargs="*",
        default=[],
        help="further config overrides, e.g. secagg=secaggplus (default: secagg=none)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            measure(m, args.clients, args.rounds, args.dataset_overrides, args.overrides, Path(tmp) / m)
            for m in args.models
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"data: {' '.join(args.dataset_overrides) or '(defaults)'}; {args.clients} clients, {args.rounds} rounds; "
        f"serialized Flower messages per client per round; target upload <= {TARGET:,} B"
    )
    print(
        f"{'model':<11} {'items':>6} {'parameters':>11} {'train up B':>11} {'train down B':>13} "
        f"{'eval down B':>12} {'eval up B':>10} {'ratio up/2MB':>13}"
    )
    for r in rows:
        print(
            f"{r['model']:<11} {r['items'] or '':>6} {r['adapter_parameters']:>11,} {r['train_up']:>11,.0f} "
            f"{r['train_down']:>13,.0f} {r['evaluate_down']:>12,.0f} {r['evaluate_up']:>10,.0f} {r['ratio']:>13.3f}"
        )


if __name__ == "__main__":
    main()
