"""SecAgg+ overhead: seconds per round and bytes per client, with vs without.

Runs the real simulation harness on the synthetic data (privacy=none, so only aggregation
differs) for each client count, back to back, and prints the ratios. Round 1 (Ray start-up,
model load) is excluded from the mean.

    .venv/bin/python benchmarks/secagg_overhead.py --clients 10 50 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run(clients: int, rounds: int, secagg: bool, users: int, out: Path, extra: list[str]) -> dict:
    overrides = [
        *(extra if secagg else []),
        f"dataset.num_users={users}",
        f"partition.num_clients={clients}",
        f"strategy.num_rounds={rounds}",
        "privacy=none",
        f"secagg={'secaggplus' if secagg else 'none'}",
        f"hydra.run.dir={out}",
        "simulation.measure_bytes=true",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.run", *overrides], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(f"run failed ({clients} clients, secagg={secagg}):\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["fit_seconds"] for r in rows[1:]] or [rows[0]["fit_seconds"]]
    up, down = bytes_per_client(out)
    return {"seconds_per_round": float(np.mean(seconds)), "up": up, "down": down}


def bytes_per_client(out: Path) -> tuple[float, float]:
    """Mean (upload, download) bytes per client per round over all training messages (every
    SecAgg+ stage), as serialized by Flower; measured by the client's count_bytes mod."""
    per: dict[tuple[int, int], list[int]] = {}
    for line in (out / "bytes.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["type"] == "train":
            up_down = per.setdefault((r["round"], r["client"]), [0, 0])
            up_down[0] += r["up"]
            up_down[1] += r["down"]
    values = np.array(list(per.values()), dtype=np.float64)
    return float(values[:, 0].mean()), float(values[:, 1].mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--users", type=int, default=600)
    p.add_argument(
        "--num-shares", default=None, help="secagg.num_shares (fraction of clients, or an odd int > 2); default: config"
    )
    args = p.parse_args()
    print(
        f"{'clients':>7} {'plain s/round':>14} {'secagg s/round':>15} {'time ratio':>10} "
        f"{'plain up B':>11} {'secagg up B':>12} {'plain down B':>12} {'secagg down B':>13}"
    )
    extra = [f"secagg.num_shares={args.num_shares}"] if args.num_shares else []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.clients:
            plain = run(k, args.rounds, False, args.users, Path(tmp) / f"plain{k}", extra)
            sa = run(k, args.rounds, True, args.users, Path(tmp) / f"sa{k}", extra)
            print(
                f"{k:>7} {plain['seconds_per_round']:>14.2f} {sa['seconds_per_round']:>15.2f} "
                f"{sa['seconds_per_round'] / plain['seconds_per_round']:>10.2f} {plain['up']:>11.0f} "
                f"{sa['up']:>12.0f} {plain['down']:>12.0f} {sa['down']:>13.0f}"
            )


if __name__ == "__main__":
    main()
