"""The default private run's mathematics without the federation, for tuning it quickly.

    .venv/bin/python benchmarks/pooled_dp.py --seeds 0 1 2 --eval-every 50 -- \
        dataset=movielens_100k dataset.path=../shared/data/ml-100k eval.split=valid

``privacy.noise=distributed`` is pooled DP-SGD: every step, each client sums its sampled
users' clipped gradients and adds its noise share; SecAgg+ reveals the sum over the clients;
the server divides by the expected batch and takes an Adam step (the DP popularity prior is
added to the item bias after the first step). This script runs exactly that loop in one
process with the same functions (``noisy_gradient_sum``, the prior's ``noisy_share``,
``ServerOptimizer``), minus Flower, Ray and SecAgg+'s quantization (a rounding of ~1e-6 per
coordinate), so a 150-step ML-100K run takes a few minutes instead of a quarter of an hour.
It prints NDCG@10 / HR@10 on ``eval.split`` (use ``valid`` to tune: never the test item) at
every ``--eval-every`` steps and the mean ± SD over seeds at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import compose  # noqa: E402
from common.data.run import load_run_data, training_sequences  # noqa: E402
from common.evaluation import evaluate_users  # noqa: E402
from common.model.factory import build_model  # noqa: E402
from common.privacy.distributed import ServerOptimizer, noisy_gradient_sum  # noqa: E402
from common.privacy.plans import learning_rate, pooled_plan  # noqa: E402
from common.privacy.popularity_prior import noisy_share, prior_logits, user_counts  # noqa: E402
from common.serialization import get_weights, set_weights  # noqa: E402
from common.training.local import round_seed, trainable_sequences  # noqa: E402


def evaluate(model, run, cfg) -> dict:
    rows = np.arange(run.split.num_users)
    sums = evaluate_users(model, run.split, rows, which=cfg.eval.split, sampled_negatives=0, ks=(10,))
    return sums.means()


def run_one(overrides: list[str], seed: int, eval_every: int, seeded: bool, save: Path | None = None) -> list[dict]:
    cfg = compose([*overrides, f"seed={seed}"])
    run = load_run_data(cfg)
    model = build_model(cfg, run)
    plan = pooled_plan(cfg, run)
    clients = [trainable_sequences(training_sequences(run.split, rows)) for rows in run.partitions]
    opt = ServerOptimizer(get_weights(model), learning_rate(cfg))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    print(
        f"seed {seed}: σ={plan.noise_multiplier:.3f} q={plan.sample_rate:.3f} steps={plan.steps} "
        f"t={plan.noise_shares} of {plan.num_clients} clients, d={sum(p.size for p in get_weights(model))}",
        flush=True,
    )
    curve = []
    start = time.perf_counter()
    for step in range(1, plan.steps + 1):
        total = None
        for cid, seqs in enumerate(clients):
            noise_seed = round_seed(cfg.seed, step, cid) if seeded else None
            share, _ = noisy_gradient_sum(model, seqs, run.data.num_items, cfg.model.num_negatives, plan, noise_seed)
            total = share if total is None else [a + b for a, b in zip(total, share)]
        if plan.loss_weight:
            total = total[:-1]
        new = opt.step([(g * plan.send_scale / plan.expected_batch).astype(np.float32) for g in total])
        if step == 1 and plan.prior is not None:
            prior = sum(
                noisy_share(
                    user_counts(seqs, run.data.num_items),
                    plan.prior,
                    np.random.default_rng(None if not seeded else round_seed(cfg.seed, 1, cid) + 1),
                )
                for cid, seqs in enumerate(clients)
            )
            i = names.index("bias.weight")
            new[i] = new[i] + prior_logits(prior, plan.prior).reshape(new[i].shape)
            opt.assign(new)
        set_weights(model, new)
        if step % eval_every == 0 or step == plan.steps:
            m = evaluate(model, run, cfg)
            curve.append({"step": step, **{k: round(v, 4) for k, v in m.items()}})
            print(
                f"  step {step}: ndcg@10 {m['ndcg@10']:.4f} hr@10 {m['hr@10']:.4f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    if save is not None:  # the final adapter, by parameter name (for the equivalence test)
        save.mkdir(parents=True, exist_ok=True)
        np.savez(save / f"adapter_seed{seed}.npz", **dict(zip(names, get_weights(model))))
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--seeded-noise", action="store_true", help="noise from the seed (reproducible, not private)")
    ap.add_argument("--json", type=Path, help="append one line of results here")
    ap.add_argument("--save", type=Path, help="write each seed's final adapter here (adapter_seedN.npz)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)
    finals = []
    for seed in args.seeds:
        curve = run_one(args.overrides, seed, args.eval_every, args.seeded_noise, args.save)
        finals.append(curve[-1])
    for key in ("ndcg@10", "hr@10"):
        vals = [f[key] for f in finals]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"{key}: {statistics.mean(vals):.4f} ± {sd:.4f}  {vals}")
    if args.json:
        with args.json.open("a") as fh:
            fh.write(json.dumps({"overrides": args.overrides, "seeds": args.seeds, "final": finals}) + "\n")


if __name__ == "__main__":
    main()
