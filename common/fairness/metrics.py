"""Fairness metrics across users, clients and items.

Pure numpy, one function per metric with its formula, plain numbers out (the style of
:mod:`common.metrics.ranking`, whose ``ndcg`` / ``hit_rate`` already give the per-user values,
from 0-based ranks, that the user-group functions take). Item metrics work on top-K lists
``[n_users, K]`` of item ids and are also looked up by name with :func:`get_item_metric`.

Ties at a group boundary (users or items) are broken by a stable sort on the index: among equal
counts the lower index is ranked higher. It is arbitrary but deterministic, and it keeps group
sizes exactly ``ceil(share * n)`` so results from data sets with many tied counts compare.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

# ML-1M's age codes are the lower bounds of its buckets (README); same labels as the loader's
# ``age_group`` (common.data.movielens), copied so metrics need no pandas; a test keeps them equal.
AGE_BUCKETS: dict[int, str] = {
    1: "Under 18",
    18: "18-24",
    25: "25-34",
    35: "35-44",
    45: "45-49",
    50: "50-55",
    56: "56+",
}
MISSING = "unknown"  # same label as common.data.assemble.MISSING_ATTRIBUTE


def _values(x: Any, what: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-d array, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{what} must be finite (a NaN would silently poison every mean)")
    return v


def _counts(x: Any, what: str) -> np.ndarray:
    c = _values(x, what)
    if (c < 0).any():
        raise ValueError(f"{what} must be non-negative counts")
    return c


def _ceil_share(share: float, n: int) -> int:
    # Rounding first so 0.07 * 100 = 7.000000000000001 gives 7 users, not 8.
    return math.ceil(round(share * n, 9))


def _top_mask(counts: np.ndarray, share: float) -> np.ndarray:
    """True for the ceil(share * n) largest counts; ties go to the lower index (stable sort)."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share}")
    order = np.argsort(-counts, kind="stable")
    mask = np.zeros(counts.size, dtype=bool)
    mask[order[: _ceil_share(share, counts.size)]] = True
    return mask


# --- Users -------------------------------------------------------------------------------------


def activity_groups(train_counts: Any, top_share: float = 0.05) -> np.ndarray:
    """Advantaged-user mask: the ``ceil(top_share * n)`` users with the most training interactions.

    Li et al., "User-oriented Fairness in Recommendation", WWW 2021: advantaged = top 5 % most
    active users, the rest disadvantaged. Ties at the boundary go to the lower user index.
    """
    return _top_mask(_counts(train_counts, "train_counts"), top_share)


def age_bucket(age: float) -> str:
    """MovieLens age bucket: the label of the largest ML-1M bucket lower bound <= ``age``.

    Below 18 is "Under 18". Works for ML-100K's exact ages and for ML-1M's codes (1, 18, 25, …),
    which are already bucket lower bounds, so both data sets share the same groups.
    """
    try:
        a = float(age)
    except (TypeError, ValueError):
        raise ValueError(f"age must be a number, got {age!r}") from None
    if not np.isfinite(a) or a < 0:
        raise ValueError(f"age must be a non-negative number, got {age!r}")
    # Bounds ascend; the first bucket also takes ages below its code 1 (e.g. a 0 in the data).
    return [name for lower, name in AGE_BUCKETS.items() if a >= lower or lower == 1][-1]


def _is_missing(v: Any) -> bool:
    if v is None or (isinstance(v, str) and not v.strip()):
        return True
    try:
        return bool(v != v)  # NaN; pandas' NA raises TypeError on bool()
    except (TypeError, ValueError):
        return True


def attribute_groups(values: Sequence[Any]) -> dict[str, np.ndarray]:
    """User indices per attribute value: ``{str(value): int64 indices}``, keys sorted.

    Missing values (None, NaN, empty string) form the group ``"unknown"`` so the groups always
    partition the users, as the attribute partition does.
    """
    if len(values) == 0:
        raise ValueError("values must be non-empty (one attribute value per user)")
    keys = np.array([MISSING if _is_missing(v) else str(v) for v in values])
    return {k: np.flatnonzero(keys == k) for k in sorted(set(keys.tolist()))}


def _mean(v: np.ndarray) -> float:
    return float(v.mean()) if v.size else float("nan")


def group_gap(per_user: Any, advantaged: Any) -> dict[str, float]:
    r"""Mean of a per-user metric in the advantaged group, the rest, and their difference.

    .. math:: \mathrm{gap} = \bar M_{adv} - \bar M_{dis}, \qquad \mathrm{UGF} = |\mathrm{gap}|

    Li et al. (WWW'21) define user group fairness (UGF) as the absolute difference, ``abs_gap``
    here; ``gap`` keeps the sign too (positive = advantaged users served better).
    An empty group gives NaN for its mean and the gaps (and its count is 0).
    """
    v = _values(per_user, "per_user")
    adv = np.asarray(advantaged)
    if adv.dtype != bool or adv.shape != v.shape:
        # An int array here is most likely user indices, which would be misread as a mask.
        raise ValueError(f"advantaged must be a bool mask of shape {v.shape}")
    a, d = _mean(v[adv]), _mean(v[~adv])
    return {
        "advantaged": a,
        "disadvantaged": d,
        "gap": a - d,
        "abs_gap": abs(a - d),
        "n_advantaged": int(adv.sum()),
        "n_disadvantaged": int((~adv).sum()),
    }


def groups_summary(per_user: Any, groups: Mapping[str, Any]) -> dict[str, Any]:
    """Mean and count of a per-user metric per group, and ``gap`` = max - min of group means.

    Returns ``{"groups": {name: {"mean", "count"}}, "gap", "best", "worst"}``; empty groups get
    a NaN mean and are left out of the gap (NaN if no group has users).
    """
    v = _values(per_user, "per_user")
    out: dict[str, dict[str, float | int]] = {}
    for name, idx in groups.items():
        i = np.asarray(idx).reshape(-1)
        i = i.astype(np.int64) if i.size == 0 else i  # np.asarray([]) is float, not an index
        if i.size and (not np.issubdtype(i.dtype, np.integer) or i.min() < 0 or i.max() >= v.size):
            raise ValueError(f"group {name!r} must hold user indices in [0, {v.size})")
        if np.unique(i).size != i.size:
            raise ValueError(f"group {name!r} lists a user twice")
        out[str(name)] = {"mean": _mean(v[i]), "count": int(i.size)}
    filled = {k: g["mean"] for k, g in out.items() if g["count"]}
    if not filled:
        return {"groups": out, "gap": float("nan"), "best": None, "worst": None}
    best, worst = max(filled, key=filled.get), min(filled, key=filled.get)
    return {"groups": out, "gap": filled[best] - filled[worst], "best": best, "worst": worst}


# --- Clients -----------------------------------------------------------------------------------


def gini(values: Any) -> float:
    r"""Gini coefficient of non-negative values; 0 = all equal, (n-1)/n = one holds everything.

    .. math:: G = \frac{\sum_i \sum_j |x_i - x_j|}{2 n^2 \mu}
              = \frac{\sum_{i=1}^{n} (2i - n - 1)\, x_{(i)}}{n \sum_i x_i}

    with :math:`x_{(i)}` sorted ascending (the second form is O(n log n), as RecBole's
    GiniIndex). All zeros gives 0 (nothing to share is shared equally).
    """
    x = np.sort(_counts(values, "values"))
    total = x.sum()
    if total == 0:
        return 0.0
    n = x.size
    return float(((2 * np.arange(1, n + 1) - n - 1) * x).sum() / (n * total))


def client_distribution(values: Sequence[float], weights: Any = None) -> dict[str, float]:
    """How a per-client metric is spread: n, mean, std, min, max, worst10_mean, gini.

    ``mean`` and ``std`` (population) are weighted by ``weights`` if given (e.g. users per
    client, which makes ``mean`` the user-weighted global value); everything else counts each
    client once. ``worst10_mean`` = mean of the ``ceil(0.1 n)`` lowest values. ``gini`` is NaN
    if a value is negative (Gini is undefined there).
    """
    v = _values(values, "values")
    w = np.ones_like(v) if weights is None else _counts(weights, "weights")
    if w.shape != v.shape or w.sum() == 0:
        raise ValueError(f"weights must be {v.size} non-negative numbers with a positive sum")
    mean = float(np.average(v, weights=w))
    worst = np.sort(v)[: _ceil_share(0.1, v.size)]
    return {
        "n": int(v.size),
        "mean": mean,
        "std": float(np.sqrt(np.average((v - mean) ** 2, weights=w))),
        "min": float(v.min()),
        "max": float(v.max()),
        "worst10_mean": float(worst.mean()),
        "gini": gini(v) if (v >= 0).all() else float("nan"),
    }


# --- Items, from top-K lists [n_users, K] ------------------------------------------------------


def _top_k(top_k: Any, num_items: int, k: int | None) -> np.ndarray:
    t = np.asarray(top_k)
    if t.ndim != 2 or 0 in t.shape:
        raise ValueError(f"top_k must be a non-empty [n_users, K] array, got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError("top_k must hold integer item ids")
    if k is not None:
        if int(k) != k or not 1 <= k <= t.shape[1]:
            raise ValueError(f"k={k!r} must be an integer in [1, {t.shape[1]}] (top_k's K)")
        t = t[:, : int(k)]
    if t.min() < 0 or t.max() >= num_items:
        raise ValueError(f"top_k item ids must be in [0, {num_items})")
    s = np.sort(t, axis=1)
    if (s[:, 1:] == s[:, :-1]).any():
        raise ValueError("a top-K list recommends the same item twice")
    return t


def _num_items(num_items: int) -> int:
    if int(num_items) != num_items or num_items < 1:
        raise ValueError(f"num_items must be a positive integer, got {num_items!r}")
    return int(num_items)


def coverage_at_k(top_k: Any, num_items: int, k: int | None = None) -> float:
    r"""Catalogue coverage: share of items recommended to at least one user.

    .. math:: \mathrm{Coverage@}K = |\textstyle\bigcup_u R_u| / |I|

    ``k`` keeps the first ``k`` columns (default: all K). RecBole's ItemCoverage.
    """
    n = _num_items(num_items)
    return float(np.unique(_top_k(top_k, n, k)).size / n)


def long_tail_share(top_k: Any, item_counts: Any, head_share: float = 0.2, k: int | None = None) -> float:
    r"""Share of recommended slots filled by long-tail items.

    .. math:: \mathrm{TailShare@}K = \frac{\sum_u |R_u \cap T|}{|U| \cdot K}

    Head = the ``ceil(head_share * |I|)`` items with the most training interactions (ties to
    the lower item index), tail T = all other items (the 80 % least popular by default).
    """
    c = _counts(item_counts, "item_counts")
    t = _top_k(top_k, c.size, k)
    return float((~_top_mask(c, head_share))[t].mean())


def exposure_gini(top_k: Any, num_items: int, k: int | None = None) -> float:
    r"""Gini of how often each item (never-recommended ones included, as 0) is recommended.

    .. math:: G\big(\{\textstyle\sum_u \mathbb{1}[i \in R_u]\}_{i \in I}\big)

    0 = every item equally exposed; near 1 = a few items fill all lists. RecBole's GiniIndex.
    """
    n = _num_items(num_items)
    return gini(np.bincount(_top_k(top_k, n, k).reshape(-1), minlength=n))


# name -> fn(top_k, item_counts, k); num_items is len(item_counts) so all share one signature
_ITEM_METRICS: dict[str, Callable[[Any, np.ndarray, int], float]] = {
    "coverage": lambda t, c, k: coverage_at_k(t, len(c), k),
    "long_tail_share": lambda t, c, k: long_tail_share(t, c, k=k),
    "exposure_gini": lambda t, c, k: exposure_gini(t, len(c), k),
}
_NAME_RE = re.compile(r"^([a-z_]+)@(\d+)$")


def get_item_metric(name: str) -> Callable[[Any, Any], float]:
    """``(top_k, item_counts) -> float`` for ``"coverage@10"``, ``"long_tail_share@10"``,
    ``"exposure_gini@10"``."""
    m = _NAME_RE.match(str(name).strip().lower())
    if m is None or m.group(1) not in _ITEM_METRICS or int(m.group(2)) < 1:
        raise ValueError(
            f"unknown item metric {name!r}; known: {', '.join(f'{n}@K' for n in _ITEM_METRICS)} (K a positive integer)"
        )
    fn, k = _ITEM_METRICS[m.group(1)], int(m.group(2))
    return lambda top_k, item_counts: fn(top_k, np.asarray(item_counts), k)


def exposure_metrics(exposure: Any, item_counts: Any = None, head_share: float = 0.2) -> dict[str, float]:
    """Coverage, long-tail share and exposure Gini from per-item recommendation counts.

    ``exposure[i]`` = in how many top-K lists item i appears. Clients can add these vectors up,
    so a federation gets the same values as :func:`coverage_at_k`, :func:`long_tail_share` and
    :func:`exposure_gini` on the pooled lists without any list leaving a client. The long-tail
    share divides by the filled slots (``sum(exposure)``), which is ``|U| * K`` for full lists;
    it is left out without ``item_counts``.
    """
    e = _counts(exposure, "exposure")
    total = e.sum()
    out = {"coverage": float((e > 0).sum() / e.size), "exposure_gini": gini(e)}
    if item_counts is not None:
        c = _counts(item_counts, "item_counts")
        if c.shape != e.shape:
            raise ValueError(f"item_counts must have one count per item ({e.size}), got {c.size}")
        out["long_tail_share"] = float(e[~_top_mask(c, head_share)].sum() / total) if total else float("nan")
    return out
