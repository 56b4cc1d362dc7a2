"""Quality beside cost: NDCG@10 of a federated run over its centralized counterpart.

Reads finished run folders (summary.json), pairs a federated run with a centralized one and
prints NDCG@10, HR@10, ε, seconds per round / epoch and the NDCG@10 ratio federated /
centralized. ``--run OVERRIDES`` makes a fresh pair instead (a federated run and
``baseline=centralized`` with the same overrides), e.g. for a quick check.

    .venv/bin/python benchmarks/quality_cost.py \\
        --pair 'eps=inf' runs/ml100k_base_nodp/0 runs/ml100k_base_nodp/2 \\
        --pair 'eps=8'   runs/ml100k_eps/8       runs/ml100k_base_dp/0
    .venv/bin/python benchmarks/quality_cost.py --run 'privacy=none strategy.num_rounds=5 train.epochs=5'
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (an incomplete run, or not a run folder)")
    s = json.loads(path.read_text())
    full = s["metrics"]["full"]
    privacy = s.get("privacy") or {}
    return {
        "dir": str(run_dir),
        "kind": s.get("kind", "?"),
        "ndcg@10": full["ndcg@10"],
        "hr@10": full["hr@10"],
        "epsilon": privacy.get("epsilon_max"),
        "s_per_round": s.get("timing", {}).get("seconds_per_round"),
        "rounds": s.get("timing", {}).get("rounds"),
    }


def fresh_pair(overrides: str, tmp: Path) -> tuple[Path, Path]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0", "FEDREC_PROGRESS": "0"}
    dirs = []
    for name, extra in (("federated", []), ("centralized", ["baseline=centralized"])):
        out = tmp / name
        cmd = [sys.executable, "-m", "simulations.run", *shlex.split(overrides), *extra, f"hydra.run.dir={out}"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{name} run failed:\n{proc.stderr[-3000:]}")
        dirs.append(out)
    return dirs[0], dirs[1]


def _eps(e) -> str:
    return "inf" if e is None else f"{e:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", nargs=3, action="append", default=[], metavar=("LABEL", "FEDERATED_DIR", "CENTRAL_DIR"))
    p.add_argument("--run", default=None, help="overrides for a fresh federated + centralized pair")
    args = p.parse_args()
    if not args.pair and args.run is None:
        p.error("give --pair LABEL FEDERATED_DIR CENTRAL_DIR (repeatable) or --run OVERRIDES")
    with tempfile.TemporaryDirectory() as tmp:
        pairs = [(label, Path(f), Path(c)) for label, f, c in args.pair]
        if args.run is not None:
            pairs.append((args.run or "(defaults)", *fresh_pair(args.run, Path(tmp))))
        rows = [(label, read(f), read(c)) for label, f, c in pairs]
    print(
        f"{'pair':<12} {'fed NDCG@10':>11} {'cen NDCG@10':>11} {'fed HR@10':>9} {'cen HR@10':>9} {'fed eps':>7} "
        f"{'cen eps':>7} {'fed s/round':>11} {'cen s/epoch':>11} {'ratio fed/cen':>13}"
    )
    for label, f, c in rows:
        print(
            f"{label[:12]:<12} {f['ndcg@10']:>11.4f} {c['ndcg@10']:>11.4f} {f['hr@10']:>9.4f} {c['hr@10']:>9.4f} "
            f"{_eps(f['epsilon']):>7} {_eps(c['epsilon']):>7} {f['s_per_round'] or 0:>11.2f} "
            f"{c['s_per_round'] or 0:>11.2f} {f['ndcg@10'] / c['ndcg@10']:>13.3f}"
        )
    for label, f, c in rows:
        print(
            f"{label}: federated {f['dir']} ({f['kind']}, {f['rounds']} rounds); centralized {c['dir']} "
            f"({c['kind']}, {c['rounds']} epochs)"
        )


if __name__ == "__main__":
    main()
