"""AUC for the TALLRec-style "will the user like this item?" protocol, exact and federated.

:func:`auc` is the exact value on (score, label) pairs. Federated evaluation cannot average
client AUCs (AUC is a ratio over all positive-negative pairs, not a mean over users), and
sending (score, label) lists would hand the server every user's test label and score. Clients
therefore send :class:`AucHistogram` counts: per label, how many scores fall in each fixed
bin. Counts add across clients, so the server's AUC is exactly the AUC of the pooled
histogram, whichever clients hold which users. The only approximation is inside a bin, where
a positive and a negative count as a tie (1/2); :meth:`AucHistogram.tie_bound` bounds the
error this can cause. Histogram counts are evaluation output outside the DP accounting, like
the ranking metric sums (with one user in a bin, a count reveals that user's score range).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

POS, NEG = "auc_pos_bin_", "auc_neg_bin_"
SCALE = 0.01  # logit scale below which bins are (nearly) equal-width


def auc(scores: Any, labels: Any) -> float:
    r"""Area under the ROC curve (Mann-Whitney U), ties counted as one half.

    .. math:: \mathrm{AUC} = \frac{1}{PN}\sum_{i:y_i=1}\sum_{j:y_j=0}
              \big(\mathbb{1}[s_i > s_j] + \tfrac12\,\mathbb{1}[s_i = s_j]\big)

    Computed from mid-ranks in O(n log n). NaN when either class is empty.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    p, n = int(y.sum()), int((~y).sum())
    if p == 0 or n == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s))
    # Mid-ranks: tied scores share the mean of the 1-based ranks they span.
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    mid = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mid, counts)
    return float((ranks[y].sum() - p * (p + 1) / 2.0) / (p * n))


@dataclass
class AucHistogram:
    """Per-label score counts in ``bins`` bins over logits x = log(p/(1-p)) in [-limit, limit]
    (beyond fall in the end bins), equal-width in asinh(x / 0.01): about 1.5e-4 wide near
    x = 0, where an untrained or DP-noised model's scores crowd, 0.015 at |x| = 1 and 0.15 at
    |x| = 10 with the default 1000 bins."""

    bins: int = 1000
    limit: float = 10.0
    pos: np.ndarray = field(default=None)  # type: ignore[assignment]
    neg: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.pos is None:
            self.pos = np.zeros(self.bins, dtype=np.int64)
        if self.neg is None:
            self.neg = np.zeros(self.bins, dtype=np.int64)

    def bin_of(self, logits: Any) -> np.ndarray:
        x = np.asarray(logits, dtype=np.float64)
        if np.isnan(x).any():  # would become a negative bin index; a diverged model, say so
            raise ValueError(
                f"AUC histogram: {int(np.isnan(x).sum())} of {x.size} scores are NaN (did training diverge?)"
            )
        x = np.clip(x, -self.limit, self.limit)
        t, top = np.arcsinh(x / SCALE), np.arcsinh(self.limit / SCALE)
        return np.minimum(((t + top) / (2 * top) * self.bins).astype(np.int64), self.bins - 1)

    def add(self, logits: Any, labels: Any) -> AucHistogram:
        """Add scores given as logits (log-odds of "yes"; monotone in p(yes), so AUC is the same)."""
        b = self.bin_of(logits)
        y = np.asarray(labels).astype(bool)
        self.pos += np.bincount(b[y], minlength=self.bins)
        self.neg += np.bincount(b[~y], minlength=self.bins)
        return self

    def merge(self, other: AucHistogram) -> AucHistogram:
        if (self.bins, self.limit) != (other.bins, other.limit):
            raise ValueError(f"cannot merge AUC histograms of {self.bins} and {other.bins} bins")
        return AucHistogram(self.bins, self.limit, self.pos + other.pos, self.neg + other.neg)

    def auc(self) -> float:
        """AUC with pairs in the same bin counted as ties (1/2). NaN without both labels."""
        p, n = int(self.pos.sum()), int(self.neg.sum())
        if p == 0 or n == 0:
            return float("nan")
        neg_below = np.concatenate([[0], np.cumsum(self.neg)[:-1]])
        return float((self.pos * neg_below).sum() + 0.5 * (self.pos * self.neg).sum()) / (p * n)

    def tie_bound(self) -> float:
        """Largest possible |histogram AUC - exact AUC|: half the share of pairs sharing a bin."""
        p, n = int(self.pos.sum()), int(self.neg.sum())
        return float(0.5 * (self.pos * self.neg).sum() / (p * n)) if p and n else float("nan")

    def to_metrics(self) -> dict[str, int]:
        """Flat scalar keys for a Flower MetricRecord; empty bins are left out."""
        out = {"auc_bins": self.bins, "auc_limit_x1000": int(round(self.limit * 1000))}
        out.update({f"{POS}{i:04d}": int(c) for i, c in enumerate(self.pos) if c})
        out.update({f"{NEG}{i:04d}": int(c) for i, c in enumerate(self.neg) if c})
        return out

    @classmethod
    def from_metrics(cls, m: Mapping[str, Any]) -> AucHistogram | None:
        """Inverse of :meth:`to_metrics`; None when the record holds no histogram."""
        if "auc_bins" not in m:
            return None
        h = cls(int(m["auc_bins"]), int(m["auc_limit_x1000"]) / 1000.0)
        for key, value in m.items():
            if key.startswith(POS):
                h.pos[int(key[len(POS) :])] += int(value)
            elif key.startswith(NEG):
                h.neg[int(key[len(NEG) :])] += int(value)
        return h

    @property
    def count(self) -> int:
        return int(self.pos.sum() + self.neg.sum())


def logit(p: Any) -> np.ndarray:
    """log(p / (1 - p)), finite for p in (0, 1)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    return np.log(p) - np.log1p(-p)


__all__ = ["AucHistogram", "auc", "logit"]
