"""AUC of ``model=causal_lora`` as one client trains: the training path a federated client
runs (``train_causal`` with the DP-SGD plan it would get), in one process, with the AUC of
every user's validation (or test) prompt after each round. For choosing settings on the
validation split before a federated run, and for the non-private sanity check.

    .venv/bin/python benchmarks/causal_auc.py dataset=movielens_100k dataset.path=../shared/data/ml-100k \\
        partition.num_clients=2 strategy.num_rounds=3 strategy.local_epochs=4 train.batch_size=64 \\
        model.top_layers=1 model.train_targets=4 model.candidates_per_user=4 model.lower_cache_dir=CACHE

Client ``--client`` (default 0) trains on its partition with the σ its federated plan gets
for ``privacy.epsilon`` over all rounds, its learning rate and its per-round seeds
(``privacy=none``: no DP; ``privacy.noise=central`` is refused: its noise is the server's); the AUC is
over all users (``--eval-users`` to cut), round 0 = the untrained model. No FedAvg: the
federated run averages several such clients. With ``model.rerank_run=PROJECTION_RUN`` each
evaluation also re-ranks that run's top ``model.rerank_top`` per user (NDCG@10, HR@10).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.causal.task import evaluate_causal, train_causal  # noqa: E402
from common.config import compose  # noqa: E402
from common.data.run import load_run_data  # noqa: E402
from common.metrics.auc import AucHistogram  # noqa: E402
from common.metrics.ranking import MetricSums  # noqa: E402
from common.model.factory import build_model  # noqa: E402
from common.privacy.plans import federated_plan, is_central, learning_rate  # noqa: E402
from common.training.local import round_seed  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="config overrides (model=causal_lora implied)")
    ap.add_argument("--client", type=int, default=0)
    ap.add_argument("--split", choices=["valid", "test"], default="valid")
    ap.add_argument("--eval-users", type=int, default=None, help="evaluate the first N users only")
    a = ap.parse_args(argv)
    cfg = compose(" ".join(["model=causal_lora", *a.overrides]))
    run = load_run_data(cfg)
    rows = np.asarray(run.partitions[a.client])
    eval_rows = np.arange(len(run.split.users))[: a.eval_users]
    if is_central(cfg):
        raise SystemExit(
            "causal_auc: privacy.noise=central adds its noise at the server, which this one-client "
            "harness does not model; use privacy.noise=local or privacy=none"
        )
    dp, plan, lr = None, None, learning_rate(cfg)
    if cfg.privacy.enabled:
        plan = federated_plan(cfg, run, a.client)
        dp = plan.dp
        print(
            f"DP-SGD: ε {cfg.privacy.epsilon}, δ {plan.delta:.1e}, σ {dp.noise_multiplier:.3f}, q {plan.sample_rate:.3f}, "
            f"{plan.total_steps} steps; {plan.num_users} users train",
            flush=True,
        )
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg, run)
    rounds = []

    def evaluate(r: int, seconds: float, loss: float) -> None:
        t = time.perf_counter()
        metrics, logloss = evaluate_causal(
            model, run, eval_rows, int(cfg.model.max_history), a.split, int(cfg.model.eval_batch_size), cfg=cfg
        )
        h = AucHistogram.from_metrics(metrics)
        row = {
            "round": r,
            "auc": h.auc(),
            "tie_bound": h.tie_bound(),
            "logloss": logloss,
            "train_loss": loss,
            "train_s": seconds,
        }
        ranking = ""
        if "ndcg@10_sum" in metrics:  # model.rerank_run: the projection run's top-N re-ranked
            means = MetricSums.from_dict(metrics).means()
            row.update({k: means[k] for k in ("ndcg@10", "hr@10", "projection_ndcg@10", "projection_hr@10")})
            ranking = (
                f"; re-ranked NDCG@10 {means['ndcg@10']:.4f} HR@10 {means['hr@10']:.4f} (projection alone "
                f"{means['projection_ndcg@10']:.4f} / {means['projection_hr@10']:.4f})"
            )
        row["eval_s"] = time.perf_counter() - t
        rounds.append(row)
        print(
            f"round {r}: {a.split} AUC {h.auc():.4f} (±{h.tie_bound():.1e} ties, {h.count} users), "
            f"log-loss {logloss:.4f}{ranking}; train loss {loss:.4f}, {seconds:.0f} s train, "
            f"{row['eval_s']:.0f} s eval",
            flush=True,
        )

    evaluate(0, 0.0, float("nan"))
    for r in range(1, int(cfg.strategy.num_rounds) + 1):
        t = time.perf_counter()
        seed = round_seed(cfg.seed, r, a.client)  # the client's own seed for round r
        round_dp = replace(dp, noise_seed=seed) if dp is not None and cfg.privacy.seeded_noise else dp
        out = train_causal(
            model, run, rows, cfg, int(cfg.strategy.local_epochs), int(cfg.train.batch_size), lr, seed=seed, dp=round_dp
        )
        if plan is not None:  # what Opacus' accountant saw must be the planned mechanism, as the client checks
            for noise, q, _ in out["history"]:
                if abs(noise - plan.dp.noise_multiplier) > 1e-12 or abs(q - plan.sample_rate) > 1e-12:
                    raise RuntimeError(f"trained with σ={noise}, q={q}; planned σ={plan.dp.noise_multiplier}")
        evaluate(r, time.perf_counter() - t, out["loss"])
        rounds[-1]["dp_steps"] = sum(s for _, _, s in out["history"])
    return rounds


if __name__ == "__main__":
    main()
