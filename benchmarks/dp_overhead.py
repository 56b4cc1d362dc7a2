"""DP-SGD overhead: seconds per training example with Opacus DP-SGD vs without.

Same model, same users, same batch size, same negatives, one process: for each repetition it
times ``common.training.local.train_local`` for one epoch without DP (dp=None) and with DP-SGD
(noise_multiplier=1.0, max_grad_norm=1.0), interleaved, after one untimed warm-up call of
each, and reports the median seconds per example. Each call starts from a fresh copy of the
same initial model (copied outside the timed region). The DP time includes Opacus'
``make_private`` wrapping (once per call, as in a federated round).

One example = one user's history. Poisson sampling makes the DP epoch's size random, so the
users actually processed are counted (by wrapping ``common.training.local.user_loss``); the
non-DP epoch processes every selected user once.

    .venv/bin/python benchmarks/dp_overhead.py
    .venv/bin/python benchmarks/dp_overhead.py --models projection lora --users 100
    .venv/bin/python benchmarks/dp_overhead.py --dataset-overrides dataset=movielens_100k \\
        dataset.path=../shared/data/ml-100k
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import common.training.local as training  # noqa: E402
from common.config import compose  # noqa: E402
from common.data.run import load_run_data  # noqa: E402
from common.model.factory import build_model  # noqa: E402
from common.privacy.dp_sgd import DPSettings  # noqa: E402
from common.training.local import train_local, trainable_sequences  # noqa: E402

DP = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0)


class _Counter:
    """Counts the users ``train_local`` actually runs through the loss (the real batch sizes)."""

    def __init__(self) -> None:
        self.users = 0
        self._orig = training.user_loss

    def __enter__(self) -> "_Counter":
        def counted(model, seqs, *a, **kw):
            self.users += len(seqs)
            return self._orig(model, seqs, *a, **kw)

        training.user_loss = counted
        return self

    def __exit__(self, *exc) -> None:
        training.user_loss = self._orig


def timed(base, seqs, cfg, dp: DPSettings | None, seed: int) -> tuple[float, int]:
    """(seconds, users processed) for one epoch of train_local on a fresh copy of ``base``."""
    model = copy.deepcopy(base)
    with _Counter() as c:
        t0 = time.perf_counter()
        train_local(
            model,
            seqs,
            cfg.run_num_items,
            epochs=1,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            num_negatives=cfg.num_negatives,
            seed=seed,
            dp=dp,
        )
        seconds = time.perf_counter() - t0
    return seconds, c.users


def bench(model_name: str, dataset_overrides: list[str], users: int | None, repeats: int) -> dict:
    cfg = compose([f"model={model_name}", "device=cpu", *dataset_overrides])
    run = load_run_data(cfg)
    seqs = trainable_sequences(run.split.train)
    if users is not None:
        seqs = seqs[:users]
    base = build_model(cfg, run)
    p = argparse.Namespace(
        run_num_items=run.data.num_items,
        batch_size=int(cfg.train.batch_size),
        lr=float(cfg.train.lr),
        num_negatives=int(cfg.model.num_negatives),
    )
    for dp in (None, DP):  # warm-up: allocator, Opacus import and first-call costs
        timed(base, seqs, p, dp, seed=0)
    plain, private = [], []
    for r in range(repeats):
        s, n = timed(base, seqs, p, None, seed=r + 1)
        plain.append((s / n, n))
        s, n = timed(base, seqs, p, DP, seed=r + 1)
        private.append((s / n, n))
    non_dp = statistics.median(x for x, _ in plain)
    dp_s = statistics.median(x for x, _ in private)
    return {
        "model": model_name,
        "dataset": run.data.name,
        "users": len(seqs),
        "batch_size": p.batch_size,
        "repeats": repeats,
        "examples_non_dp": statistics.median(n for _, n in plain),
        "examples_dp": statistics.median(n for _, n in private),
        "s_per_example_non_dp": non_dp,
        "s_per_example_dp": dp_s,
        "ratio": dp_s / non_dp,
    }


def profile(model_name: str, dataset_overrides: list[str], users: int | None, top: int) -> None:
    """Where the DP time goes, op by op: the evidence behind BENCHMARKS.md's profile figures."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cfg = compose([f"model={model_name}", "device=cpu", *dataset_overrides])
    run = load_run_data(cfg)
    seqs = trainable_sequences(run.split.train)[:users]
    base = build_model(cfg, run)
    p = argparse.Namespace(
        run_num_items=run.data.num_items,
        batch_size=int(cfg.train.batch_size),
        lr=float(cfg.train.lr),
        num_negatives=int(cfg.model.num_negatives),
    )
    for dp in (None, DP):
        timed(base, seqs, p, dp, seed=0)  # warm-up
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for seed in (1, 2):
                timed(base, seqs, p, dp, seed=seed)
        print(
            f"== {model_name}, {'DP-SGD' if dp else 'no DP'}, 2 epochs, "
            f"mode={training.per_sample_gradient_mode(base) if dp else '-'}"
        )
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["projection"], choices=["projection", "lora"])
    p.add_argument(
        "--dataset-overrides",
        nargs="*",
        default=[],
        help="config overrides for the data, e.g. dataset=movielens_100k dataset.path=...",
    )
    p.add_argument("--users", type=int, default=None, help="first N trainable users (default: all)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--grad-sample-mode",
        choices=["auto", "hooks", "ew"],
        default="auto",
        help="Opacus per-sample gradient mode; auto = what training uses "
        "(common.privacy.dp_sgd.per_sample_gradient_mode); hooks = the old default, for before/after",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="instead of timing: torch.profiler top-N ops (self CPU) of 2 epochs without and with DP",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.grad_sample_mode != "auto":
        training.per_sample_gradient_mode = lambda model: args.grad_sample_mode
    if args.profile:
        for m in args.models:
            profile(m, args.dataset_overrides, args.users, args.profile)
        return
    rows = [bench(m, args.dataset_overrides, args.users, args.repeats) for m in args.models]
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    threads = torch.get_num_threads()
    if args.json:
        print(
            json.dumps(
                {
                    "command": command,
                    "torch_threads": threads,
                    "dp": vars(DP),
                    "grad_sample_mode": args.grad_sample_mode,
                    "load_average": os.getloadavg()[0],
                    "results": rows,
                },
                indent=2,
            )
        )
        return
    print(f"command: {command}")
    print(
        f"torch threads: {threads}; DP: noise_multiplier={DP.noise_multiplier}, "
        f"max_grad_norm={DP.max_grad_norm}; median of {args.repeats} interleaved repeats, 1 epoch each; "
        f"grad_sample_mode={args.grad_sample_mode}; load average at end: {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'model':<11} {'dataset':<16} {'users':>6} {'examples non-DP/DP':>19} {'s/example non-DP':>17} "
        f"{'s/example DP':>13} {'ratio DP/non-DP':>16}"
    )
    for r in rows:
        ex = f"{r['examples_non_dp']:g}/{r['examples_dp']:g}"
        print(
            f"{r['model']:<11} {r['dataset']:<16} {r['users']:>6} {ex:>19} {r['s_per_example_non_dp']:>17.3e} "
            f"{r['s_per_example_dp']:>13.3e} {r['ratio']:>16.3f}"
        )


if __name__ == "__main__":
    main()
