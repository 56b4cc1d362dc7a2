"""Baselines in the same harness and summary format: popularity, and the same model trained
centralized (all users in one place), with or without DP."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
from omegaconf import DictConfig

from common.device import resolve_device
from common.evaluation import evaluate_scorer, evaluate_users
from common.privacy.accounting import AccountantState
from common.run_store import RunStore, build_summary
from common.serialization import num_bytes, get_weights, save_adapter
from common.task import RunData, adapter_config, build_model, client_plan, learning_rate, training_sequences
from common.training import train_local, trainable_sequences

log = logging.getLogger("fedrec")


def popularity_scores(split, which: str) -> np.ndarray:
    """Interaction counts per item over every user's input history for ``which``."""
    items = [split.train[r] for r in range(split.num_users)]
    if which == "test":
        items.append(split.valid)
    return np.bincount(np.concatenate(items), minlength=split.num_items).astype(np.float64)


def run_popularity(cfg: DictConfig, run: RunData, store: RunStore) -> dict:
    start = time.perf_counter()
    counts = popularity_scores(run.split, cfg.eval.split)
    score = lambda hist: np.broadcast_to(counts, (len(hist), counts.size))  # noqa: E731
    rows = np.arange(run.split.num_users)
    sums = evaluate_scorer(score, run.split, rows, cfg.eval.split, cfg.eval.sampled_negatives, cfg.seed, tuple(cfg.eval.ks))
    store.append_metrics({"round": 0, **{f"eval_{k}": v for k, v in sums.means().items()}})
    return _summary(cfg, run, "popularity", sums, None, time.perf_counter() - start, [])


def run_centralized(cfg: DictConfig, run: RunData, store: RunStore) -> dict:
    """The federated model's architecture trained on all users at once for train.epochs."""
    start = time.perf_counter()
    model = build_model(cfg, run).to(resolve_device(cfg.device))
    rows = np.arange(run.split.num_users)
    seqs = trainable_sequences(training_sequences(run.split, rows))
    plan = None
    accountant = AccountantState()
    if cfg.privacy.enabled:
        plan = client_plan(cfg, len(seqs), len(rows), rounds=1, epochs_per_round=cfg.train.epochs)
    epoch_seconds = []
    for epoch in range(1, cfg.train.epochs + 1):
        t = time.perf_counter()
        seed = cfg.seed * 100_003 + epoch
        dp = None
        if plan:
            dp = replace(plan.dp, noise_seed=seed) if cfg.privacy.seeded_noise else plan.dp
        result = train_local(
            model, seqs, run.data.num_items, epochs=1, batch_size=cfg.train.batch_size, lr=learning_rate(cfg),
            num_negatives=cfg.model.num_negatives, seed=seed, dp=dp, weight_decay=cfg.train.weight_decay,
        )  # fmt: skip
        row = {"round": epoch, "train_loss": result["loss"]}
        if plan:
            accountant.extend(result["history"])
            row["epsilon_max"] = accountant.epsilon(plan.delta, cfg.privacy.accountant)
        epoch_seconds.append(time.perf_counter() - t)
        row["seconds"] = epoch_seconds[-1]
        store.append_metrics(row)
        log.info("epoch %d/%d  loss %.4f  %s", epoch, cfg.train.epochs, result["loss"],
                 f"eps {row['epsilon_max']:.2f}" if plan else "eps inf")  # fmt: skip
    sums = evaluate_users(model, run.split, rows, cfg.eval.split, cfg.eval.sampled_negatives, cfg.seed, tuple(cfg.eval.ks))
    save_adapter(model.cpu(), adapter_config(cfg, run), store.dir / "adapter")
    privacy = None
    if plan:
        privacy = {
            "epsilon": accountant.epsilon(plan.delta, cfg.privacy.accountant),
            "delta": plan.delta,
            "noise_multiplier": plan.dp.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "steps": accountant.steps,
            "users": len(rows),
        }
    summary = _summary(cfg, run, "centralized", sums, privacy, time.perf_counter() - start, epoch_seconds)
    summary["communication"] = {"adapter_bytes": num_bytes(get_weights(model))}
    return summary


def _summary(cfg, run, kind, sums, privacy, seconds, epoch_seconds) -> dict:
    per_client = {"central": privacy} if privacy else {}
    mechanism = "dp-sgd (central)" if privacy else "none"
    return build_summary(kind, cfg, run, sums, per_client, mechanism, seconds, epoch_seconds, len(epoch_seconds))
