"""Re-ranking a ``model=projection`` run's top-N by the causal LM's yes/no score (``model.rerank_run``)."""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from common.causal.lm import CausalLoraRec
from common.causal.prompts import PromptBuilder, user_ratings
from common.metrics.ranking import rankable


def rerank_settings(cfg: DictConfig) -> tuple[str, int] | None:
    """(projection run folder, N) when ``model.rerank_run`` asks for full-ranking metrics."""
    run_dir = cfg.model.get("rerank_run")
    if not run_dir:
        return None
    top = int(cfg.model.get("rerank_top", 20))
    if top < 1:
        raise ValueError(f"model.rerank_top={top}: must be at least 1")
    return str(run_dir), top


def _projection_scorer(run_dir: str, dataset: DictConfig):
    """Scores [users, items] of histories by a trained ``model=projection`` run, on this run's data."""
    from common.evaluation import user_scores
    from common.recommend import Recommender

    rec = Recommender(run_dir, {"dataset": dataset})
    if rec.cfg.model.name != "projection":
        raise ValueError(f"model.rerank_run={run_dir}: needs a model=projection run, got model={rec.cfg.model.name}")
    return lambda hist: user_scores(rec.model, rec.item_vectors, hist, rec.bias).cpu().numpy()


def rerank_ranks(
    base_scores: np.ndarray, lm_scores: list[np.ndarray], top: np.ndarray, targets: np.ndarray, hist: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of each target (projection alone, after re-ranking its top-N by the LM).

    ``top[i]`` is user i's top-N (history excluded, best first), ``lm_scores[i]`` the LM's
    scores of those N. Re-ranking permutes the top-N only; the tail keeps its order, so a target
    outside the top-N keeps its full rank (a miss at every K ≤ N) and MRR stays exact."""
    from common.metrics.ranking import full_ranks

    base = full_ranks(base_scores, targets, hist)
    out = base.copy()
    for i, (cands, s) in enumerate(zip(top, lm_scores)):
        where = np.flatnonzero(cands == targets[i])
        if where.size:  # stable: LM ties keep the projection order
            out[i] = int(np.flatnonzero(np.argsort(-np.asarray(s), kind="stable") == where[0])[0])
    return base, out


def evaluate_rerank(model: CausalLoraRec, run, rows: np.ndarray, cfg: DictConfig, which: str = "test") -> dict:
    """Full-ranking metric sums (``MetricSums.to_dict``) of the projection run's top-N
    re-ranked by the yes/no score (unprefixed, -> ``metrics.full``) and of the projection
    alone on the same users (``projection_*``)."""
    from common.evaluation import histories, metric_names
    from common.metrics.ranking import MetricSums

    run_dir, n = rerank_settings(cfg)
    rows = np.asarray(rows, dtype=np.int64)
    hist, targets = histories(run.split, rows, which)
    scores = _projection_scorer(run_dir, cfg.dataset)(hist).astype(np.float64)
    build = PromptBuilder(run.data.item_text, int(cfg.model.max_history))
    tops, lm = [], []
    ranked = rankable(scores, hist, targets)
    for i, r in enumerate(rows):
        top = np.argsort(-ranked[i], kind="stable")[:n]
        liked = user_ratings(run, r)[: len(hist[i])]
        prompts = [build(np.append(hist[i], c), np.append(liked, False), len(hist[i])) for c in top]
        tops.append(top)
        lm.append(model.score(prompts, int(cfg.model.eval_batch_size)).numpy())
    base, reranked = rerank_ranks(scores, lm, tops, targets, hist)
    sums = MetricSums(metric_names(tuple(cfg.eval.ks)))
    sums.add(reranked).add(base, prefix="projection_")
    return sums.to_dict()
