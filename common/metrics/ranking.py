"""Ranking metrics for next-item recommendation with one held-out item per user.

Everything here works on the 0-based *rank* ``r`` of the held-out item among its candidates:
``r`` = number of other candidates scored strictly higher, plus the number of other candidates
with an equal score. Counting ties as "above" is pessimistic on purpose: a constant scorer then
ranks every target last instead of first, so a broken model cannot look good.

Metric functions follow RecBole's style (one function per metric, formula in the docstring,
looked up by name with :func:`get_metric`) and return one value per user, so that clients can
report sums and counts and a federated average stays the exact user-weighted mean
(:class:`MetricSums`).

Protocols:
- full ranking: :func:`full_ranks`, the target against every item except the user's own
  training items;
- sampled ranking, a labelled secondary (``sampled_*``): :func:`sample_negatives` draws 99 items
  the user never interacted with, :func:`sampled_ranks` ranks the target against them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_METRICS: list[str] = ["hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr"]


# ---------------------------------------------------------------------------------------------
# Metric functions: ranks [n] (int, 0-based) -> per-user values [n] (float64)
# ---------------------------------------------------------------------------------------------


def _as_ranks(ranks: Any) -> np.ndarray:
    r = np.asarray(ranks)
    if r.ndim != 1:
        raise ValueError(f"ranks must be a 1-d array of 0-based ranks, got shape {r.shape}")
    if r.size and (not np.issubdtype(r.dtype, np.integer) or r.min() < 0):
        raise ValueError("ranks must be non-negative integers (0 = ranked first)")
    return r.astype(np.int64, copy=False)


def _check_k(k: int) -> None:
    if int(k) != k or k < 1:
        raise ValueError(f"cutoff k must be a positive integer, got {k!r}")


def hit_rate(ranks: Any, k: int) -> np.ndarray:
    r"""Hit rate at k (HR@k, also called Recall@k with one relevant item).

    .. math:: \mathrm{HR@}k = \mathbb{1}[r < k]
    """
    _check_k(k)
    return (_as_ranks(ranks) < k).astype(np.float64)


def ndcg(ranks: Any, k: int) -> np.ndarray:
    r"""Normalised discounted cumulative gain at k, one relevant item (so IDCG = 1).

    .. math:: \mathrm{NDCG@}k = \frac{\mathbb{1}[r < k]}{\log_2(r + 2)}
    """
    _check_k(k)
    r = _as_ranks(ranks)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def mrr(ranks: Any) -> np.ndarray:
    r"""Mean reciprocal rank over the full candidate list (no cutoff).

    .. math:: \mathrm{MRR} = \frac{1}{r + 1}
    """
    return 1.0 / (_as_ranks(ranks) + 1.0)


# name -> (function, takes a cutoff)
_METRICS: dict[str, tuple[Callable[..., np.ndarray], bool]] = {
    "hr": (hit_rate, True),
    "ndcg": (ndcg, True),
    "mrr": (mrr, False),
}
_NAME_RE = re.compile(r"^([a-z]+)(?:@(\d+))?$")


def get_metric(name: str) -> Callable[[Any], np.ndarray]:
    """Return ``ranks -> per-user values`` for a name like ``"ndcg@10"``, ``"hr@5"``, ``"mrr"``."""
    known = "hr@K, ndcg@K, mrr (K a positive integer)"
    m = _NAME_RE.match(str(name).strip().lower())
    if m is None or m.group(1) not in _METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {known}")
    fn, takes_k = _METRICS[m.group(1)]
    if takes_k != (m.group(2) is not None) or (takes_k and int(m.group(2)) < 1):
        raise ValueError(f"unknown metric {name!r}; known: {known}")
    if takes_k:
        k = int(m.group(2))
        return lambda ranks: fn(ranks, k)
    return fn


# ---------------------------------------------------------------------------------------------
# Ranks
# ---------------------------------------------------------------------------------------------


def _as_scores(scores: Any) -> np.ndarray:
    # Accept torch tensors without importing torch here (metrics stay usable without it).
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().float().numpy()
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be [n_users, n_items], got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    # A diverged model (NaN) must rank its targets last, not crash the round or look good:
    # NaN becomes -inf, the lowest score, and ties with it count against the target.
    if np.isnan(s).any():
        s = np.where(np.isnan(s), -np.inf, s)
    return s


def _as_targets(targets: Any, n: int, num_items: int) -> np.ndarray:
    t = np.asarray(targets.detach().cpu() if hasattr(targets, "detach") else targets)
    t = t.astype(np.int64).reshape(-1)
    if t.shape[0] != n:
        raise ValueError(f"got {t.shape[0]} targets for {n} score rows")
    if n and (t.min() < 0 or t.max() >= num_items):
        raise ValueError(f"targets must be item indices in [0, {num_items})")
    return t


def rankable(scores: Any, hist: Sequence[Any], targets: Any | None = None) -> np.ndarray:
    """The scores over the items the protocol ranks, as a float64 copy: each user's history
    items at -inf except their own target (the :func:`full_ranks` rule: a user may re-consume
    an item), NaN at -inf. ``targets=None`` (serving, no held-out item) removes all history."""
    s = np.array(scores.detach().cpu() if hasattr(scores, "detach") else scores, dtype=np.float64)
    s[np.isnan(s)] = -np.inf
    for i, h in enumerate(hist):
        h = np.asarray(h, dtype=np.int64).reshape(-1)
        s[i, h if targets is None else h[h != targets[i]]] = -np.inf
    return s


def full_ranks(
    scores: Any,
    targets: Any,
    exclude: Sequence[Any] | None = None,
) -> np.ndarray:
    """0-based rank of each user's target among all items except the user's excluded ones.

    ``scores`` is ``[n_users, n_items]`` (numpy or torch), ``targets`` ``[n_users]`` item
    indices, ``exclude[i]`` the item indices user i must not be ranked against (their training
    items). The target itself is never excluded, even if listed (a user may re-consume an item);
    duplicates in ``exclude[i]`` count once. Ties count against the target (see module doc).
    """
    s = _as_scores(scores)
    n, num_items = s.shape
    t = _as_targets(targets, n, num_items)
    rows = np.arange(n)
    target_scores = s[rows, t]
    above = s >= target_scores[:, None]  # includes the target itself
    ranks = above.sum(axis=1, dtype=np.int64) - 1

    if exclude is not None:
        if len(exclude) != n:
            raise ValueError(f"got {len(exclude)} exclude lists for {n} score rows")
        lengths = np.array([len(e) for e in exclude], dtype=np.int64)
        if lengths.sum():
            cols = np.concatenate([np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude])
            erows = np.repeat(rows, lengths)
            if cols.min() < 0 or cols.max() >= num_items:
                raise ValueError(f"excluded items must be item indices in [0, {num_items})")
            keep = cols != t[erows]
            # Dedupe (row, item) pairs so an item listed twice is removed only once.
            flat = np.unique(erows[keep] * num_items + cols[keep])
            erows, cols = flat // num_items, flat % num_items
            hit = above[erows, cols]
            ranks -= np.bincount(erows[hit], minlength=n)
    return ranks


def sampled_ranks(scores: Any, targets: Any, negatives: Any) -> np.ndarray:
    """0-based rank of each target among its sampled negatives (secondary protocol).

    ``scores`` is the full ``[n_users, n_items]`` score matrix, ``negatives`` ``[n_users, m]``
    item indices from :func:`sample_negatives`; entries ``-1`` are padding (users who have
    seen nearly every item) and are skipped. A negative equal to the target is a sampling bug
    and raises. Ties count against the target.
    """
    s = _as_scores(scores)
    n, num_items = s.shape
    t = _as_targets(targets, n, num_items)
    neg = np.asarray(negatives, dtype=np.int64)
    if neg.ndim != 2 or neg.shape[0] != n:
        raise ValueError(f"negatives must be [{n}, m], got shape {neg.shape}")
    valid = neg >= 0
    if (neg >= num_items).any():
        raise ValueError(f"negatives must be item indices in [0, {num_items}) or -1 padding")
    if ((neg == t[:, None]) & valid).any():
        raise ValueError("negatives contain a user's own target; pass it in `seen` when sampling")
    rows = np.arange(n)
    neg_scores = s[rows[:, None], np.where(valid, neg, 0)]
    return ((neg_scores >= s[rows, t][:, None]) & valid).sum(axis=1, dtype=np.int64)


def sample_negatives(
    num_items: int,
    seen: Sequence[Any],
    num: int = 99,
    seed: int = 0,
    user_keys: Sequence[int] | None = None,
) -> np.ndarray:
    """Draw ``num`` distinct items per user, uniformly among items the user never interacted with.

    ``seen[i]`` must hold *all* of user i's items (train, validation and test), so a negative is
    never a positive. Returns ``[n_users, num]`` int64. Each user's draw comes from its own
    generator seeded with ``(seed, user_keys[i])`` (default key: the row index), so passing
    global user indices as keys gives the same negatives whichever client holds the user.
    A user with fewer than ``num`` unseen items gets all of them (in random order) and the row
    is padded with ``-1``, which :func:`sampled_ranks` skips — that user is ranked against fewer
    candidates rather than against repeated or seen items.
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    keys = range(len(seen)) if user_keys is None else user_keys
    if len(keys) != len(seen):
        raise ValueError(f"got {len(keys)} user_keys for {len(seen)} users")
    out = np.full((len(seen), num), -1, dtype=np.int64)
    for i, (items, key) in enumerate(zip(seen, keys)):
        rng = np.random.default_rng([int(seed), int(key)])
        seen_i = np.unique(np.asarray(items, dtype=np.int64))
        n_free = num_items - seen_i.size
        if n_free >= 4 * num:
            # Usual case, catalogue mostly unseen: rejection sampling, O(num + |seen|).
            # Order-preserving dedupe keeps the draw uniform over unseen subsets.
            draw = rng.integers(0, num_items, size=2 * num + seen_i.size + 16)
            draw = draw[~np.isin(draw, seen_i)]
            _, first = np.unique(draw, return_index=True)
            draw = draw[np.sort(first)]
            if draw.size >= num:
                out[i] = draw[:num]
                continue
        # Dense users (or an unlucky draw): sample from the explicit pool, O(num_items).
        pool = np.setdiff1d(np.arange(num_items), seen_i, assume_unique=True)
        take = min(num, pool.size)
        out[i, :take] = rng.choice(pool, size=take, replace=False)
    return out


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


def _prefix_of(key: str, prefixes: Iterable[str]) -> str | None:
    # Longest matching prefix, so "sampled_hr@10" belongs to "sampled_", not to "".
    return next((p for p in sorted(prefixes, key=len, reverse=True) if key.startswith(p)), None)


@dataclass
class MetricSums:
    """Per-metric sums and user counts, so means aggregate exactly across clients.

    ``add(ranks)`` for the full protocol, ``add(ranks, prefix="sampled_")`` for the sampled one.
    ``to_dict()`` is a flat ``{"ndcg@10_sum": float, ..., "count": int,
    "sampled_ndcg@10_sum": ..., "sampled_count": ...}`` that fits a Flower MetricRecord; the sum
    of clients' records divided by the summed count is the user-weighted mean over all users.
    """

    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    sums: dict[str, float] = field(default_factory=dict)  # "<prefix><metric>" -> sum
    counts: dict[str, int] = field(default_factory=dict)  # "<prefix>" -> users

    def __post_init__(self) -> None:
        self.metrics = [m.strip().lower() for m in self.metrics]
        self._fns = {m: get_metric(m) for m in self.metrics}  # fail early on a bad name

    def add(self, ranks: Any, prefix: str = "") -> MetricSums:
        r = _as_ranks(ranks)
        for m, fn in self._fns.items():
            self.sums[prefix + m] = self.sums.get(prefix + m, 0.0) + float(fn(r).sum())
        self.counts[prefix] = self.counts.get(prefix, 0) + int(r.size)
        return self

    def merge(self, other: MetricSums) -> MetricSums:
        """A new MetricSums holding both; an empty one is the identity."""
        if not other.counts:
            return MetricSums(list(self.metrics), dict(self.sums), dict(self.counts))
        if not self.counts:
            return other.merge(self)
        if set(self.sums) != set(other.sums) or set(self.counts) != set(other.counts):
            # Summing a metric only some clients report would divide by the wrong count.
            raise ValueError(
                f"cannot merge metric sums with different keys: {sorted(self.sums)} vs {sorted(other.sums)}"
            )
        return MetricSums(
            list(self.metrics),
            {k: v + other.sums[k] for k, v in self.sums.items()},
            {k: v + other.counts[k] for k, v in self.counts.items()},
        )

    def __add__(self, other: MetricSums) -> MetricSums:
        return self.merge(other)

    def __radd__(self, other: Any) -> MetricSums:
        # Lets plain sum(...) start from 0.
        if isinstance(other, int) and other == 0:
            return self.merge(MetricSums(list(self.metrics)))
        return NotImplemented

    def means(self) -> dict[str, float]:
        """``{"<prefix><metric>": mean over users}``; NaN for a prefix with zero users."""
        out = {}
        for key, total in self.sums.items():
            c = self.counts.get(_prefix_of(key, self.counts), 0)
            out[key] = total / c if c else float("nan")
        return out

    def to_dict(self) -> dict[str, float | int]:
        d: dict[str, float | int] = {f"{k}_sum": v for k, v in self.sums.items()}
        d.update({f"{p}count": c for p, c in self.counts.items()})
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetricSums:
        """Inverse of :meth:`to_dict`. Keys that are neither ``*_sum`` of a known metric nor
        ``*count`` are ignored, so a client's whole metric record (with e.g. train loss) can be
        passed in."""
        counts = {k[: -len("count")]: int(v) for k, v in d.items() if k.endswith("count")}
        sums: dict[str, float] = {}
        metrics: list[str] = []
        for k, v in d.items():
            if not k.endswith("_sum"):
                continue
            key = k[: -len("_sum")]
            prefix = _prefix_of(key, counts)
            if prefix is None:
                continue
            name = key[len(prefix) :]
            try:
                get_metric(name)
            except ValueError:
                continue
            sums[key] = float(v)
            if name not in metrics:
                metrics.append(name)
        # Keep only counts that some sum uses (plus the main one), so an unrelated
        # "*count" key in the record does not become a phantom prefix.
        used = {_prefix_of(k, counts) for k in sums} | ({""} & counts.keys())
        return cls(metrics, sums, {p: c for p, c in counts.items() if p in used})

    @classmethod
    def aggregate(cls, records: Iterable[Mapping[str, Any]]) -> MetricSums:
        """Merge many clients' ``to_dict()`` records."""
        total = cls([])
        for rec in records:
            total = total.merge(cls.from_dict(rec))
        return total
