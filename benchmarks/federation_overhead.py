"""Federation overhead: one simulated round over k clients vs one centralized epoch.

Same users, same model, same optimiser settings, one epoch each: the federated run is
``partition.num_clients=k strategy.local_epochs=1`` on Flower's Ray simulation engine; the
centralized run is ``baseline=centralized`` (every user in one place) in-process. Both run
through ``python -m simulations.run`` with ``privacy=none`` (DP's own cost is dp_overhead.py's)
and the ratio compares training time only, read from each run's metrics.jsonl: the federated
``fit_seconds`` (configure → aggregate, i.e. sending the adapter, every client's training and
the aggregation) of rounds 2..N against the centralized ``seconds`` of epochs 2..N. Round 1
and the process start-up (imports, data, Ray start, actor creation) are reported apart.

    .venv/bin/python benchmarks/federation_overhead.py --clients 10 --rounds 5
    .venv/bin/python benchmarks/federation_overhead.py --overrides dataset=movielens_100k \\
        dataset.path=../shared/data/ml-100k
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(overrides: list[str], out: Path, threads: int | None = None) -> dict:
    """Run simulations.run; per-round training seconds and the wall-clock of the process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0", "FEDREC_PROGRESS": "0"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.run", *overrides, f"hydra.run.dir={out}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"run failed: {' '.join(overrides)}\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [float(r["fit_seconds"] if "fit_seconds" in r else r["seconds"]) for r in rows]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "seconds": seconds,
        "wall": wall,
        "rounds_total": float(sum(r["seconds"] for r in rows)),
        "ndcg@10": summary["metrics"]["full"]["ndcg@10"],
    }


def steady(seconds: list[float]) -> float:
    """Median over rounds after the first (the first pays warm-up); the only round if one."""
    return statistics.median(seconds[1:] or seconds)


def bench(clients: int, rounds: int, extra: list[str], tmp: Path, threads: int | None = None) -> dict:
    common = ["privacy=none", "secagg=none", *extra]  # plain FedAvg: secagg_overhead.py measures SecAgg+
    fed = run(
        [
            *common,
            f"partition.num_clients={clients}",
            "strategy.local_epochs=1",
            f"strategy.num_rounds={rounds}",
            "strategy.fraction_fit=1.0",
        ],
        tmp / "federated",
    )
    cen = run([*common, "baseline=centralized", f"train.epochs={rounds}"], tmp / "centralized", threads)
    f, c = steady(fed["seconds"]), steady(cen["seconds"])
    return {
        "clients": clients,
        "rounds": rounds,
        "federated_s_per_round": f,
        "centralized_s_per_epoch": c,
        "ratio": f / c,
        "federated_first_round_s": fed["seconds"][0],
        "centralized_first_epoch_s": cen["seconds"][0],
        # Everything outside the timed rounds: imports, data, Ray start, actors, final eval.
        "federated_outside_rounds_s": fed["wall"] - fed["rounds_total"],
        "centralized_outside_epochs_s": cen["wall"] - cen["rounds_total"],
        "federated_rounds_s": fed["seconds"],
        "centralized_epochs_s": cen["seconds"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5, help="rounds (federated) = epochs (centralized)")
    p.add_argument("--overrides", nargs="*", default=[], help="extra config overrides for both runs")
    p.add_argument(
        "--centralized-threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS of the centralized run (default: torch's own, one per core). "
        "On a busy machine multi-threaded torch stalls; 1 keeps the comparison meaningful",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = bench(args.clients, args.rounds, args.overrides, Path(tmp), args.centralized_threads)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(
        f"overrides: {' '.join(args.overrides) or '(defaults)'}; privacy=none secagg=none; {args.rounds} rounds/epochs; "
        f"median of rounds 2..{args.rounds}; centralized threads: {args.centralized_threads or 'torch default'}"
    )
    print(
        f"federated rounds s: {' '.join(f'{s:.2f}' for s in r['federated_rounds_s'])}; outside rounds "
        f"{r['federated_outside_rounds_s']:.1f} s (imports, data, Ray start, final evaluation)"
    )
    print(
        f"centralized epochs s: {' '.join(f'{s:.2f}' for s in r['centralized_epochs_s'])}; outside epochs "
        f"{r['centralized_outside_epochs_s']:.1f} s"
    )
    print(f"{'clients':>7} {'federated s/round':>18} {'centralized s/epoch':>20} {'ratio fed/central':>18}")
    print(
        f"{r['clients']:>7} {r['federated_s_per_round']:>18.3f} {r['centralized_s_per_epoch']:>20.3f} "
        f"{r['ratio']:>18.3f}"
    )


if __name__ == "__main__":
    main()
