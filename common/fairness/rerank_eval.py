"""UGF re-ranking applied at evaluation time (``eval.rerank``), per evaluating party.

Each party (a federated client, or each client's users in a baseline) re-ranks its own users'
top-N candidates with :func:`common.fairness.ugf.ugf_solve` so that the gap in *expected* NDCG@10
between its advantaged (most active) and disadvantaged users shrinks, while the loss of its
users' mean expected NDCG@10 stays within ``max_ndcg_loss`` (relative). The gap bound is the
smallest one, found by bisection, that keeps that loss in bounds. Expected NDCG needs no test
item: with one held-out item per user it is ``sum_pos p_j / log2(pos + 1)``, ``p`` being the
model's softmax over the items the protocol ranks (``relevance: model``). ``relevance:
oracle`` marks the held-out item instead — UGF's own setting, an upper bound only, never a
result (see :mod:`common.fairness.ugf`).

Why per party: the constraint couples users, and no party may see another's users; a party
with users of one group only keeps its lists. The re-ranked lists' realised HR/NDCG@5/10 (target
position in the new top-10) travel as ``rerank_*`` metric sums, and their fairness sums under
the ``rerank_`` prefix, so a federation's totals are the sums of its clients'.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.fairness.groups import FAIR_K, FairnessGroups, FairnessSums
from common.fairness.ugf import ugf_solve
from common.metrics.ranking import MetricSums, rankable

log = logging.getLogger("fedrec")
PREFIX = "rerank_"
METRICS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10")  # a re-ranked list is 10 long: no @20, no MRR
RELEVANCE = ("model", "oracle")
_BISECTIONS = 14


@dataclass(frozen=True)
class RerankSettings:
    """``eval.rerank``: ``method`` none|ugf, ``candidates`` N (top-N re-ranked into 10),
    ``relevance`` model|oracle, ``max_ndcg_loss`` (relative loss of expected NDCG@10 allowed),
    ``epsilon`` (a fixed gap bound instead; null = the smallest within ``max_ndcg_loss``)."""

    candidates: int = 50
    relevance: str = "model"
    max_ndcg_loss: float = 0.05
    epsilon: float | None = None

    @classmethod
    def from_config(cls, rerank: Any) -> RerankSettings | None:
        """None when re-ranking is off; a clear error naming the bad ``eval.rerank`` key."""
        if rerank is None or str(rerank.get("method", "none")) == "none":
            return None
        if rerank.get("method") != "ugf":
            raise ValueError(f"eval.rerank.method={rerank.get('method')!r}: expected none or ugf")
        n = rerank.get("candidates", 50)
        if isinstance(n, bool) or not isinstance(n, int) or n <= FAIR_K:
            raise ValueError(f"eval.rerank.candidates={n!r}: must be an integer > {FAIR_K}")
        rel = str(rerank.get("relevance", "model"))
        if rel not in RELEVANCE:
            raise ValueError(f"eval.rerank.relevance={rel!r}: expected one of {', '.join(RELEVANCE)}")
        loss = float(rerank.get("max_ndcg_loss", 0.05))
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"eval.rerank.max_ndcg_loss={loss!r}: must be in [0, 1)")
        eps = rerank.get("epsilon")
        if eps is not None and (not np.isfinite(float(eps)) or float(eps) < 0):
            raise ValueError(f"eval.rerank.epsilon={eps!r}: must be a non-negative number or null")
        return cls(n, rel, loss, None if eps is None else float(eps))


def candidates_of(scores: np.ndarray, hist: list[np.ndarray], targets: np.ndarray, n: int):
    """Top-``n`` candidate ids [users, n] in score order over the items the protocol ranks
    (every item but the history; the target stays), their softmax probabilities over all those
    items, and the 0/1 oracle relevance."""
    s = rankable(scores, hist, targets)
    n = min(n, s.shape[1])
    part = np.argpartition(-s, n - 1, axis=1)[:, :n]
    order = np.lexsort((part, -np.take_along_axis(s, part, axis=1)), axis=-1)  # ties: lower id first
    cand = np.take_along_axis(part, order, axis=1)
    top = np.take_along_axis(s, cand, axis=1)
    peak = s.max(axis=1, keepdims=True)
    log_z = peak[:, 0] + np.log(np.exp(s - peak).sum(axis=1))
    probs = np.exp(top - log_z[:, None])
    oracle = (cand == np.asarray(targets)[:, None]).astype(np.float64)
    return cand, probs, oracle


def expected_ndcg(selected: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """Per-user NDCG@K of the selected candidates shown in candidate order, under
    ``relevance`` (one relevant item per user, so the ideal DCG is 1)."""
    pos = np.cumsum(selected, axis=1)  # 1-based position of each selected candidate
    discount = np.where(selected, 1.0 / np.log2(np.maximum(pos, 1) + 1.0), 0.0)
    return (relevance * discount).sum(axis=1)


@dataclass
class RerankCollector:
    """Gathers each evaluated batch's candidates; :meth:`finish` re-ranks all users at once."""

    settings: RerankSettings
    num_items: int
    _rows: list = field(default_factory=list)
    _cand: list = field(default_factory=list)
    _probs: list = field(default_factory=list)
    _oracle: list = field(default_factory=list)
    _targets: list = field(default_factory=list)

    def add(self, rows: np.ndarray, scores: Any, hist: list[np.ndarray], targets: np.ndarray) -> None:
        s = scores.detach().cpu().numpy() if hasattr(scores, "detach") else np.asarray(scores)
        cand, probs, oracle = candidates_of(s, hist, targets, self.settings.candidates)
        self._rows.append(np.asarray(rows))
        self._cand.append(cand)
        self._probs.append(probs)
        self._oracle.append(oracle)
        self._targets.append(np.asarray(targets))

    def finish(self, groups: FairnessGroups | None) -> tuple[MetricSums, FairnessSums | None, dict]:
        """``rerank_*`` metric sums, the re-ranked lists' fairness sums, and what was done:
        NDCG@10 and the activity gap before/after under the relevance used (expected values for
        ``model``), the gap bound chosen, users whose list changed, feasible (0 = a fixed
        ``epsilon`` could not be met), skipped (1 = one group only)."""
        rows = np.concatenate(self._rows)
        cand, probs = np.concatenate(self._cand), np.concatenate(self._probs)
        rel = probs if self.settings.relevance == "model" else np.concatenate(self._oracle)
        targets = np.concatenate(self._targets)
        advantaged = groups.advantaged[rows] if groups is not None else None
        selected, info = rerank_users(cand, probs, rel, advantaged, self.settings)
        lists = cand[selected].reshape(len(rows), FAIR_K)  # keeps candidate (score) order
        hit = lists == targets[:, None]
        ranks = np.where(hit.any(axis=1), hit.argmax(axis=1), self.num_items).astype(np.int64)
        sums = MetricSums(list(METRICS)).add(ranks, prefix=PREFIX)
        fair = None
        if groups is not None:
            fair = FairnessSums.empty(self.num_items)
            fair.add(groups.labels(rows), ranks, lists)
        return sums, fair, info


def rerank_users(
    cand: np.ndarray, probs: np.ndarray, rel: np.ndarray, advantaged: np.ndarray | None, settings: RerankSettings
) -> tuple[np.ndarray, dict[str, float]]:
    """The chosen candidates [users, N] of one party's users (``candidates_of`` order):
    the objective is the model's probabilities (the total kept is expected HR@10), quality, the
    gap and the loss bound are NDCG@10 under ``rel``; plus what was done (see ``finish``)."""
    users, n = cand.shape
    original = np.zeros((users, n), dtype=bool)
    original[:, :FAIR_K] = True
    before = float(expected_ndcg(original, rel).mean()) if users else float("nan")
    if advantaged is None or advantaged.all() or not advantaged.any():
        # The constraint needs both groups among this party's users.
        return original, {
            "ndcg_before": before,
            "ndcg_after": before,
            "gap_before": float("nan"),
            "gap_after": float("nan"),
            "epsilon": float("nan"),
            "changed_users": 0.0,
            "feasible": 1.0,
            "skipped": 1.0,
        }

    def solve(eps: float):
        return ugf_solve(probs, cand, rel, advantaged, FAIR_K, eps, "ndcg")

    def ok(result) -> bool:
        return result.feasible and expected_ndcg(result.selected, rel).mean() >= floor - 1e-12

    floor = (1.0 - settings.max_ndcg_loss) * before
    if settings.epsilon is not None:
        bound = settings.epsilon
        best = solve(bound)
        if not best.feasible:  # the lists with the smallest violation found: say so
            log.warning(
                "eval.rerank.epsilon=%s: no lists found within it; the gap after is %.4g (feasible=0 in the summary)",
                bound,
                best.gap,
            )
    else:  # the smallest gap bound whose lists keep NDCG@10 within max_ndcg_loss
        bound, best = 0.0, solve(0.0)
        if not ok(best):
            lo = 0.0
            bound = hi = abs(best.gap_before)
            best = solve(hi)  # the original lists: always within the loss bound
            for _ in range(_BISECTIONS):
                mid = (lo + hi) / 2
                result = solve(mid)
                if ok(result):
                    bound, hi, best = mid, mid, result
                else:
                    lo = mid
    return best.selected, {
        "ndcg_before": before,
        "ndcg_after": float(expected_ndcg(best.selected, rel).mean()),
        "gap_before": float(best.gap_before),
        "gap_after": float(best.gap),
        "epsilon": float(bound),
        "changed_users": float(best.changed_users),
        "feasible": float(best.feasible),
        "skipped": 0.0,
    }


INFO_PREFIX = "rerank_info_"


def info_metrics(info: dict | None) -> dict[str, float]:
    """What a client reports of its re-ranking (scalars, outside the ε accounting like every
    evaluation metric)."""
    return {f"{INFO_PREFIX}{k}": float(v) for k, v in (info or {}).items()}


def client_rerank(means: dict[str, float], record: dict[str, Any]) -> dict[str, float]:
    """One client's entry in the summary's rerank block: the ``rerank_*`` metric means and the
    ``rerank_info_*`` values of its record (:func:`info_metrics`)."""
    out = {k[len(PREFIX) :]: v for k, v in means.items() if k.startswith(PREFIX)}
    out.update({k[len(INFO_PREFIX) :]: float(v) for k, v in record.items() if k.startswith(INFO_PREFIX)})
    return out


def rerank_block(
    settings: RerankSettings, fair: FairnessSums, clients: dict[str, dict], groups: FairnessGroups | None
) -> dict[str, Any]:
    """summary.json's ``fairness.rerank``: the settings, then the fairness block of the
    re-ranked lists (same layout as ``fairness``; ``clients`` entries from :func:`client_rerank`)."""
    from common.fairness.groups import fairness_block

    return {
        "method": "ugf",
        "scope": "each client re-ranks its own users",
        **vars(settings),
        **fairness_block(fair, clients, groups),
    }


def add_rerank_block(
    summary: dict, rerank_cfg: Any, fair: FairnessSums | None, clients: dict[str, dict], groups: FairnessGroups | None
) -> None:
    """Put ``fairness.rerank`` into a run's summary when the run re-ranked its lists."""
    settings = RerankSettings.from_config(rerank_cfg)
    if settings is not None and fair is not None:
        summary.setdefault("fairness", {})["rerank"] = rerank_block(settings, fair, clients, groups)
