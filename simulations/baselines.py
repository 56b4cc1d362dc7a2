"""Baselines in the same harness and summary format, each one ``baseline=`` away:

- ``popularity``: items ranked by interaction count;
- ``centralized``: the federated model's architecture trained on all users in one place for
  ``train.epochs`` (with ``privacy=dp``: one DP-SGD over all users);
- ``local``: every client trains the same model alone on its own users, with the same epochs
  (rounds × local epochs) and the same DP plan as in the federation, and is evaluated on its
  own users — what an organisation gets without federating;
- ``sasrec_ids``: a classic SASRec on item ids (no item text), trained centrally, to put the
  language-model approach in context.

Every baseline evaluates each client's users separately too (``fairness.clients``), so its
per-client distribution compares with a federated run's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from omegaconf import DictConfig, open_dict

from common.data.run import RunData, training_sequences
from common.device import resolve_device
from common.evaluation import EvaluatedSums, evaluate_scorer, model_scorer
from common.fairness.groups import FairnessSums, fairness_block
from common.fairness.rerank_eval import RerankSettings, add_rerank_block, client_rerank, info_metrics
from common.metrics.ranking import MetricSums
from common.model.factory import adapter_config, build_model
from common.model.families import family_of
from common.privacy.accounting import AccountantState
from common.privacy.plans import ClientPlan, client_plan, learning_rate
from common.serialization import get_weights, num_bytes, save_adapter
from common.tracking.progress import RunProgress, round_status
from common.tracking.store import RunStore
from common.tracking.summary import build_summary
from common.training.local import round_seed, train_local, trainable_sequences

log = logging.getLogger("fedrec")
BASELINES = ("popularity", "centralized", "local", "sasrec_ids")


def run_baseline(cfg: DictConfig, run: RunData, store: RunStore) -> dict:
    if cfg.baseline not in family_of(cfg.model.name).baselines:
        # centralized/local train and rank as the text families do; the yes/no AUC path is not wired in.
        raise ValueError(
            f"baseline={cfg.baseline} with model={cfg.model.name} is not supported (it runs "
            f"{', '.join(family_of(cfg.model.name).baselines)}); for one client's users alone "
            "see benchmarks/causal_auc.py (docs/causal-lora.md)"
        )
    runners = {
        "popularity": run_popularity,
        "centralized": run_centralized,
        "local": run_local,
        "sasrec_ids": run_sasrec_ids,
    }
    return runners[cfg.baseline](cfg, run, store)


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
    total, clients = evaluate_by_client(cfg, run, lambda _client: score)
    store.append_metrics({"round": 0, **{f"eval_{k}": v for k, v in total.means().items()}})
    return _summary(cfg, run, "popularity", total, clients, {}, time.perf_counter() - start, [])


@dataclass
class Learner:
    """One model trained on one set of users, with its own DP plan and accountant."""

    rows: np.ndarray
    model: object
    seqs: list[np.ndarray]
    plan: ClientPlan | None
    accountant: AccountantState = field(default_factory=AccountantState)
    loss: float = float("nan")

    def privacy(self, accountant: str) -> dict | None:
        if self.plan is None:
            return None
        return {
            "epsilon": self.accountant.epsilon(self.plan.delta, accountant),
            "delta": self.plan.delta,
            "noise_multiplier": self.plan.dp.noise_multiplier,
            "sample_rate": self.plan.sample_rate,
            "steps": self.accountant.steps,
            "users": len(self.seqs),
        }


def new_learner(cfg: DictConfig, run: RunData, rows: np.ndarray, epochs: int) -> Learner:
    """Same initialisation as the federated model; with DP, the plan that spends
    ``privacy.epsilon`` over ``epochs`` epochs of these users."""
    model = build_model(cfg, run).to(resolve_device(cfg.device))
    seqs = trainable_sequences(training_sequences(run.split, rows))
    plan = None
    if cfg.privacy.enabled:
        plan = client_plan(cfg, len(seqs), run.split.num_users, rounds=1, epochs_per_round=epochs)
    return Learner(np.asarray(rows), model, seqs, plan)


def train_epoch(cfg: DictConfig, run: RunData, learner: Learner, seed: int) -> None:
    dp = None
    if learner.plan:
        dp = replace(learner.plan.dp, noise_seed=seed) if cfg.privacy.seeded_noise else learner.plan.dp
    result = train_local(
        learner.model,
        learner.seqs,
        run.data.num_items,
        epochs=1,
        batch_size=cfg.train.batch_size,
        lr=learning_rate(cfg),
        num_negatives=cfg.model.num_negatives,
        seed=seed,
        dp=dp,
        weight_decay=cfg.train.weight_decay,
    )
    learner.loss = result["loss"]
    if learner.plan:
        learner.accountant.extend(result["history"])


def train_learners(cfg: DictConfig, run: RunData, learners: list[Learner], epochs: int, store: RunStore) -> list[float]:
    """Train every learner one epoch at a time (lockstep, so metrics.jsonl has one row per
    epoch); returns seconds per epoch."""
    epoch_seconds = []
    progress = RunProgress(epochs, "epoch", cfg.baseline)
    try:
        for epoch in range(1, epochs + 1):
            epoch_seconds.append(_train_one_epoch(cfg, run, learners, epoch, epochs, store, progress))
    finally:
        progress.close()
    return epoch_seconds


def _train_one_epoch(cfg, run, learners, epoch, epochs, store, progress) -> float:
    """One epoch of every learner; one metrics row; seconds taken."""
    t = time.perf_counter()
    for i, learner in enumerate(learners):
        train_epoch(cfg, run, learner, seed=round_seed(cfg.seed, epoch, i))
    trained = [x for x in learners if x.seqs]  # a client without a trainable user has no loss
    users = sum(len(x.seqs) for x in trained)
    row = {"round": epoch, "train_loss": sum(len(x.seqs) * x.loss for x in trained) / max(users, 1)}
    eps = [p["epsilon"] for p in (x.privacy(cfg.privacy.accountant) for x in learners) if p]
    if eps:
        row["epsilon_max"] = max(eps)
    row["seconds"] = time.perf_counter() - t
    store.append_metrics(row)
    status = round_status(None, None, row.get("epsilon_max"), None)
    log.info("epoch %d/%d  loss %.4f  %s", epoch, epochs, row["train_loss"], status)
    progress.update(epoch, status)
    return row["seconds"]


def evaluate_by_client(
    cfg: DictConfig, run: RunData, scorer_for: Callable[[int], Callable]
) -> tuple[EvaluatedSums, dict[str, dict]]:
    """Evaluate each client's users with ``scorer_for(client)``; the total (with the merged
    fairness sums as ``.fairness``, as a federation adds them up) and per-client means in the
    federated summary's ``fairness.clients`` format."""
    total, clients, fair, reranked, rerank_clients = MetricSums(), {}, None, None, {}
    settings = RerankSettings.from_config(cfg.eval.get("rerank"))
    for c, rows in enumerate(run.partitions):
        sums = evaluate_scorer(
            scorer_for(c),
            run.split,
            rows,
            cfg.eval.split,
            cfg.eval.sampled_negatives,
            cfg.seed,
            tuple(cfg.eval.ks),
            groups=run.fairness,
            rerank=settings,
        )
        clients[str(c)] = {"users": int(len(rows)), **sums.means()}
        total = total.merge(sums)
        if sums.fairness is not None:
            fair = sums.fairness if fair is None else fair.merge(sums.fairness)
        if sums.rerank_fairness is not None:  # each client's users re-ranked apart, as a federation does
            reranked = sums.rerank_fairness if reranked is None else reranked.merge(sums.rerank_fairness)
            rerank_clients[str(c)] = client_rerank(sums.means(), info_metrics(sums.rerank_info))
    out = EvaluatedSums(total.metrics, total.sums, total.counts, fairness=fair, rerank_fairness=reranked)
    out.rerank_info = rerank_clients
    return out, clients


def run_centralized(cfg: DictConfig, run: RunData, store: RunStore, kind: str = "centralized") -> dict:
    """The federated model's architecture trained on all users at once for train.epochs."""
    start = time.perf_counter()
    learner = new_learner(cfg, run, np.arange(run.split.num_users), cfg.train.epochs)
    epoch_seconds = train_learners(cfg, run, [learner], cfg.train.epochs, store)
    total, clients = evaluate_by_client(cfg, run, lambda _c: model_scorer(learner.model, run.split.num_items))
    save_adapter(learner.model.cpu(), adapter_config(cfg, run), store.dir / "adapter")
    privacy = learner.privacy(cfg.privacy.accountant)
    per_client = {"central": privacy} if privacy else {}
    summary = _summary(cfg, run, kind, total, clients, per_client, time.perf_counter() - start, epoch_seconds)
    summary["communication"] = {"adapter_bytes": num_bytes(get_weights(learner.model))}
    return summary


def run_sasrec_ids(cfg: DictConfig, run: RunData, store: RunStore) -> dict:
    """SASRec on item ids: the same training, no item text, and SASRec's transformer as the
    user encoder whatever model.user_encoder says (the classic id-only context baseline)."""
    if cfg.model.name != "projection":
        raise ValueError(f"baseline=sasrec_ids needs model=projection (got model={cfg.model.name})")
    ids_cfg = cfg.copy()
    with open_dict(ids_cfg):
        ids_cfg.model.item_text = False
        ids_cfg.model.item_ids = True
        ids_cfg.model.user_encoder = "sasrec"
    return run_centralized(ids_cfg, run, store, kind="sasrec_ids")


def run_local(cfg: DictConfig, run: RunData, store: RunStore) -> dict:
    """Each client alone: its own model, its own users, no federation."""
    if cfg.partition.scheme == "cross_device":
        raise ValueError(
            "baseline=local with partition=cross_device would train one model per user; "
            "use a cross-silo partition (iid, dirichlet, attribute)"
        )
    start = time.perf_counter()
    epochs = cfg.strategy.num_rounds * cfg.strategy.local_epochs
    learners = [new_learner(cfg, run, rows, epochs) for rows in run.partitions]
    epoch_seconds = train_learners(cfg, run, learners, epochs, store)
    total, clients = evaluate_by_client(cfg, run, lambda c: model_scorer(learners[c].model, run.split.num_items))
    per_client = {}
    for c, learner in enumerate(learners):
        privacy = learner.privacy(cfg.privacy.accountant)
        if privacy:
            per_client[str(c)] = privacy
    summary = _summary(cfg, run, "local", total, clients, per_client, time.perf_counter() - start, epoch_seconds)
    summary["communication"] = {"adapter_bytes": 0}  # nothing leaves a client
    return summary


def _summary(cfg, run, kind, sums, clients, per_client, seconds, epoch_seconds) -> dict:
    mechanism = "dp-sgd (central)" if kind != "local" else "dp-sgd per client, no federation"
    summary = build_summary(
        kind,
        cfg,
        run,
        sums,
        per_client,
        mechanism if per_client else "none",
        seconds,
        epoch_seconds,
        len(epoch_seconds),
    )
    fair: FairnessSums | None = getattr(sums, "fairness", None)
    summary["fairness"] = fairness_block(fair, clients, run.fairness) if fair is not None else {"clients": clients}
    add_rerank_block(
        summary,
        cfg.eval.get("rerank"),
        getattr(sums, "rerank_fairness", None),
        getattr(sums, "rerank_info", None) or {},
        run.fairness,
    )
    return summary
