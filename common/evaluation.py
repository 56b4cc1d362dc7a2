"""Leave-one-out evaluation of the adapter on a set of users (README, "What the main job does").

Full ranking over every item except the items in the user's input history (for the test item:
training items + the validation item; for the validation item: training items). Sampled
ranking (1 positive + 99 negatives the user never touched) is the labelled secondary.
Results are sums and counts, so clients' results add up to the user-weighted mean exactly.
Fairness travels the same way (:mod:`common.fairness.groups`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from common.data.types import LeaveOneOutSplit
from common.fairness.groups import FAIR_K, FairnessGroups, FairnessSums, top_items
from common.fairness.rerank_eval import PREFIX as RERANK_PREFIX
from common.fairness.rerank_eval import RerankCollector, RerankSettings, info_metrics
from common.metrics.ranking import MetricSums, full_ranks, sample_negatives, sampled_ranks
from common.model.recommender import TextSeqRec
from common.training.local import left_pad


def metric_names(ks: list[int] | tuple[int, ...]) -> list[str]:
    """HR@K and NDCG@K for every cutoff in ``eval.ks``, plus MRR."""
    return [f"{m}@{k}" for k in ks for m in ("hr", "ndcg")] + ["mrr"]


def histories(split: LeaveOneOutSplit, rows: np.ndarray, which: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Input history and held-out target of each user in ``rows`` for ``which`` = test|valid."""
    if which == "test":
        hist = [np.append(split.train[r], split.valid[r]) for r in rows]
        return hist, split.test[rows]
    if which == "valid":
        return [split.train[r] for r in rows], split.valid[rows]
    raise ValueError(f"eval.split={which!r}: expected test or valid")


def user_negatives(split: LeaveOneOutSplit, rows: np.ndarray, num: int, seed: int) -> np.ndarray:
    """Sampled negatives per user, keyed by the user's own split row so that any grouping of
    users into clients sees the same negatives (federated = centralized evaluation)."""
    seen = [np.concatenate([split.train[r], [split.valid[r], split.test[r]]]) for r in rows]
    return sample_negatives(split.num_items, seen, num=num, seed=seed, user_keys=rows)


@torch.no_grad()
def user_scores(
    model: TextSeqRec, item_vectors: torch.Tensor, hist: list[np.ndarray], bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Scores [users, items] of every item for each user's next interaction."""
    model.eval()
    ids, pad = left_pad(hist, model.max_len)
    ids, pad = ids.to(item_vectors.device), pad.to(item_vectors.device)
    scores = model.user_states(ids, pad) @ item_vectors.T
    return scores if bias is None else scores + bias


def evaluate_client(model: TextSeqRec, run, rows: np.ndarray, cfg) -> tuple[float, dict]:
    """One client's evaluation for the text families (``ModelFamily.evaluate``): its users'
    metric sums, group and exposure sums and re-ranking sums for the server to pool; Flower's
    loss is 1 − NDCG@10."""
    sums = evaluate_users(
        model,
        run.split,
        rows,
        which=cfg.eval.split,
        sampled_negatives=cfg.eval.sampled_negatives,
        seed=cfg.seed,
        ks=tuple(cfg.eval.ks),
        groups=run.fairness,
        rerank=RerankSettings.from_config(cfg.eval.get("rerank")),
    )
    metrics = sums.to_dict()
    # Group sums and top-10 exposure counts: per-user values when a group (or the client)
    # holds one user, as README says; outside the ε accounting like the evaluation sums.
    if sums.fairness is not None:
        metrics.update(sums.fairness.to_metrics())
    if sums.rerank_fairness is not None:
        metrics.update(sums.rerank_fairness.to_metrics(RERANK_PREFIX))
    metrics.update(info_metrics(sums.rerank_info))
    return float(1.0 - sums.means().get("ndcg@10", 0.0)), metrics


def evaluate_users(
    model: TextSeqRec,
    split: LeaveOneOutSplit,
    rows: np.ndarray,
    which: str = "test",
    sampled_negatives: int = 99,
    seed: int = 0,
    ks: tuple[int, ...] = (5, 10, 20),
    groups: FairnessGroups | None = None,
    rerank: RerankSettings | None = None,
) -> EvaluatedSums:
    """Metric sums of ``model`` over the users in ``rows`` (split-row indices); with ``groups``,
    also their fairness sums (``.fairness``); with ``rerank``, the re-ranked lists' too."""
    return evaluate_scorer(
        model_scorer(model, split.num_items),
        split,
        rows,
        which,
        sampled_negatives,
        seed,
        ks,
        groups=groups,
        rerank=rerank,
    )


def model_scorer(model: TextSeqRec, num_items: int) -> Callable[[list[np.ndarray]], np.ndarray]:
    """``model`` as a scorer of histories; item vectors computed once, not per batch of users."""
    model.eval()
    items = model.item_vectors(num_items)
    bias = model.item_bias(num_items)
    return lambda hist: user_scores(model, items, hist, bias).cpu().numpy()


def evaluate_scorer(
    score: Callable[[list[np.ndarray]], np.ndarray],
    split: LeaveOneOutSplit,
    rows: np.ndarray,
    which: str = "test",
    sampled_negatives: int = 99,
    seed: int = 0,
    ks: tuple[int, ...] = (5, 10, 20),
    batch_size: int = 512,
    groups: FairnessGroups | None = None,
    rerank: RerankSettings | None = None,
) -> EvaluatedSums:
    """Metric sums of any scorer mapping users' histories to scores [users, items]; with
    ``groups``, also the fairness sums of the same users (``.fairness``, else None); with
    ``rerank``, these users' lists re-ranked together (:mod:`common.fairness.rerank_eval`): ``rerank_*``
    sums among the metrics, and ``.rerank_fairness`` / ``.rerank_info``."""
    sums = MetricSums(metric_names(ks))
    fair = FairnessSums.empty(split.num_items) if groups is not None else None
    collector = RerankCollector(rerank, split.num_items) if rerank is not None else None
    rows = np.asarray(rows, dtype=np.int64)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        hist, targets = histories(split, chunk, which)
        scores = score(hist)
        ranks = full_ranks(scores, targets, hist)
        sums.add(ranks)
        if fair is not None:
            fair.add(groups.labels(chunk), ranks, top_items(scores, hist, targets, FAIR_K))
        if sampled_negatives:
            negs = user_negatives(split, chunk, sampled_negatives, seed)
            sums.add(sampled_ranks(scores, targets, negs), prefix="sampled_")
        if collector is not None:
            collector.add(chunk, scores, hist, targets)
    out = EvaluatedSums(sums.metrics, sums.sums, sums.counts, fairness=fair)
    if collector is not None and len(rows):
        reranked, out.rerank_fairness, out.rerank_info = collector.finish(groups)
        out.sums.update(reranked.sums)  # "rerank_" keys: they add up across clients like the rest
        out.counts.update(reranked.counts)
    return out


@dataclass
class EvaluatedSums(MetricSums):
    """:class:`MetricSums` plus the fairness sums of the same users (None when not asked for),
    and with re-ranking the re-ranked lists' fairness sums and what the re-ranker did."""

    fairness: FairnessSums | None = None
    rerank_fairness: FairnessSums | None = None
    # What the re-ranker did: one party's values (common.fairness.rerank_eval); per client once a
    # baseline has merged its clients (simulations.baselines.evaluate_by_client).
    rerank_info: dict | None = None
