"""Scale: a cross-device simulation with one client per user, a fraction of them per round.

Default: the synthetic generator at MovieLens-1M statistics (6,040 users, 3,706 items, ~165
interactions per user, ~1M in all), ``partition=cross_device`` (6,040 one-user clients),
``strategy.fraction_fit=0.1`` (604 clients per round), DP-FedAvg (``privacy.noise=central``,
user-level DP for one-user clients). The generated set is written once as Parquet
(``--data-dir``, reused when its stats match) and read with ``dataset=csv``, so the engine's
processes load it instead of each re-running the generator.

Reports seconds per round (the server's ``fit_seconds``: send, every sampled client's fit,
aggregation; rounds after the first, which also starts Ray's actors) and the peak memory of
the whole process tree (the run, Ray's GCS, raylet, workers), sampled every second: the sum
of RSS (counts shared pages once per process: an upper bound) and of PSS (shared pages
split between their users: what the tree really holds). Targets: 60 s per round, 8 GiB.

    .venv/bin/python benchmarks/scale.py --rounds 3
    .venv/bin/python benchmarks/scale.py --dataset-overrides dataset=movielens_1m dataset.path=/data/ml-1m
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
GIB = 1024**3
TARGET_S, TARGET_GIB = 60.0, 8.0


def prepare_data(folder: Path, users: int, items: int, mean: int, seed: int) -> Path:
    """The generated set as an interaction folder (DESIGN.md format), written once, atomically."""
    stats = {"users": users, "items": items, "mean_interactions": mean, "seed": seed}
    marker = folder / "generator.json"
    if marker.is_file() and json.loads(marker.read_text()) == stats:
        return folder
    import pandas as pd

    from common.data.synthetic import make_synthetic

    d = make_synthetic(num_users=users, num_items=items, mean_interactions=mean, seed=seed)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    lengths = [len(s) for s in d.sequences]
    pd.DataFrame(
        {
            "user_id": [u for u, n in zip(d.user_ids, lengths) for _ in range(n)],
            "item_id": [d.item_ids[i] for s in d.sequences for i in s],
            "timestamp": [int(t) for ts in d.timestamps for t in ts],
            "rating": [float(r) for rs in d.ratings for r in rs],
        }
    ).to_parquet(tmp / "interactions.parquet", index=False)
    pd.DataFrame({"item_id": d.item_ids, "text": d.item_text}).to_parquet(tmp / "items.parquet", index=False)
    d.user_attributes.assign(user_id=d.user_ids).to_parquet(tmp / "users.parquet", index=False)
    (tmp / "generator.json").write_text(json.dumps(stats))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


class TreeMemory(threading.Thread):
    """Peak summed RSS and PSS of a process and all its descendants, sampled every ``every`` s."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.root, self.every = psutil.Process(pid), every
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = pss = 0
            for p in procs:
                try:
                    info = p.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, len(procs))
            self.stop.wait(self.every)


def run(overrides: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0", "FEDREC_PROGRESS": "0"}
    log = open(out.parent / f"{out.name}.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.run", *overrides, f"hydra.run.dir={out}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    mem = TreeMemory(proc.pid)
    mem.start()
    code = proc.wait()
    wall = time.perf_counter() - t0
    mem.stop.set()
    mem.join()
    log.close()
    if code:
        tail = (out.parent / f"{out.name}.log").read_text()[-3000:]
        raise SystemExit(f"run failed ({code}): {' '.join(overrides)}\n{tail}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "rows": rows,
        "summary": summary,
        "wall": wall,
        "peak_rss": mem.peak_rss,
        "peak_pss": mem.peak_pss,
        "peak_processes": mem.peak_processes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=6040)
    p.add_argument("--items", type=int, default=3706)
    p.add_argument("--mean-interactions", type=int, default=165)
    p.add_argument("--fraction", type=float, default=0.1, help="strategy.fraction_fit")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--privacy",
        choices=["central", "none"],
        default="central",
        help="central = DP-FedAvg (user-level for one-user clients); none = no DP",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "fedrec_scale_data",
        help="where the generated set is kept between runs (outside the repo)",
    )
    p.add_argument(
        "--dataset-overrides",
        nargs="*",
        default=None,
        help="use this data instead of the generated set, e.g. dataset=movielens_1m dataset.path=DIR",
    )
    p.add_argument("--overrides", nargs="*", default=[], help="further config overrides")
    p.add_argument("--keep", type=Path, default=None, help="keep the run folder here")
    args = p.parse_args()
    if args.dataset_overrides is None:
        folder = args.data_dir / f"synthetic_{args.users}u_{args.items}i_{args.mean_interactions}m"
        folder.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        data = [
            "dataset=csv",
            f"dataset.path={prepare_data(folder, args.users, args.items, args.mean_interactions, 0)}",
        ]
        print(f"data: {folder} ({time.perf_counter() - t:.0f} s to prepare)", flush=True)
    else:
        data = args.dataset_overrides
    privacy = ["privacy=dp", "privacy.noise=central"] if args.privacy == "central" else ["privacy=none"]
    # secagg=none: all-pairs SecAgg+ over one-user clients is refused (quadratic key agreement).
    overrides = [
        *data,
        "partition=cross_device",
        "secagg=none",
        f"strategy.fraction_fit={args.fraction}",
        f"strategy.num_rounds={args.rounds}",
        *privacy,
        *args.overrides,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "run"
        r = run(overrides, out)
    rows = r["rows"]
    fit = [float(x["fit_seconds"]) for x in rows]
    per_round = statistics.median(fit[1:] or fit)
    data_block = r["summary"].get("data", {})
    peak_gib = r["peak_pss"] / GIB
    print(f"overrides: {' '.join(overrides)}")
    print(
        f"users {data_block.get('users')}, clients {data_block.get('clients', len(data_block.get('client_users', [])))}, "
        f"clients per round {[x.get('clients') for x in rows]}"
    )
    print(
        f"fit seconds per round: {' '.join(f'{s:.1f}' for s in fit)}; whole run {r['wall']:.0f} s "
        f"(data, Ray start, rounds, final evaluation of every client)"
    )
    print(
        f"peak memory of the process tree ({r['peak_processes']} processes): PSS {peak_gib:.2f} GiB, "
        f"RSS sum {r['peak_rss'] / GIB:.2f} GiB"
    )
    print(f"{'s/round':>8} {'target':>7} {'ratio':>6} {'peak GiB':>9} {'target':>7} {'ratio':>6}")
    print(
        f"{per_round:>8.1f} {TARGET_S:>7.0f} {per_round / TARGET_S:>6.2f} {peak_gib:>9.2f} {TARGET_GIB:>7.0f} "
        f"{peak_gib / TARGET_GIB:>6.2f}"
    )


if __name__ == "__main__":
    main()
