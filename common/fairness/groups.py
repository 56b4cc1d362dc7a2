"""Fairness of an evaluation, as sums that add up across clients (across users,
clients and items): per-group sums of NDCG@10 / HR@10 and user counts, and how often each item
is in a top-10 list (:class:`FairnessSums`), so a federation's fairness block equals the
centralized one. The metric formulas live in :mod:`common.fairness.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from common.data.types import LeaveOneOutSplit
from common.fairness.metrics import activity_groups, attribute_groups, client_distribution, exposure_metrics
from common.metrics.ranking import hit_rate, ndcg, rankable

FAIR_K = 10
FAIR_METRICS = ("ndcg@10", "hr@10")
ACTIVITY = "activity"
# Attributes with more values (zip codes, exact ages) would make groups of a few users, whose
# sums are close to per-user values, and a gap between tiny groups is mostly noise.
MAX_ATTRIBUTE_GROUPS = 25
EXPOSURE_KEY = "fair_exposure@10"
_GROUP_PREFIX = "fair:"  # keys neither end in "_sum" nor "count", so MetricSums.from_dict skips them
# Per group: sums of NDCG@10, HR@10, users, and NDCG@10 squared (for the gap's standard error).
_SLOTS = {"ndcg@10": 0, "hr@10": 1, "users": 2, "ndcg@10_sq": 3}


@dataclass(frozen=True)
class FairnessGroups:
    """The fairness groups of a run's users (split rows), fixed once for the whole run.

    Activity groups follow Li et al. (WWW'21) over ALL users of the run: the ``top_share`` most
    active by training interactions are advantaged. Deployment caveat: a real client sees only
    its own users, so it cannot rank them against everyone's; the coordinator would publish
    ``activity_threshold`` (the fewest training interactions of an advantaged user; itself a
    statistic of all users, to be released with DP or taken from public knowledge) and each
    client would mark its users with ``len(train) >= activity_threshold``. That differs from the
    exact ``advantaged`` mask used in simulation only for users tied at the threshold.
    """

    advantaged: np.ndarray  # bool per split row
    activity_threshold: int
    attributes: dict[str, np.ndarray]  # attribute -> group label (str) per split row
    item_counts: np.ndarray  # training interactions per item: the long-tail split
    top_share: float = 0.05

    def labels(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Group label of each user in ``rows``, per grouping (activity and each attribute)."""
        out = {ACTIVITY: np.where(self.advantaged[rows], "advantaged", "disadvantaged")}
        out.update({a: v[rows] for a, v in self.attributes.items()})
        return out


def fairness_groups(
    split: LeaveOneOutSplit, attributes: pd.DataFrame | None = None, top_share: float = 0.05
) -> FairnessGroups:
    """Activity groups, attribute groups and item training counts of ``split``'s users.

    ``attributes`` is ``InteractionData.user_attributes`` (indexed by data user index); users
    it lacks get the group "unknown". A column ``c`` is skipped when ``c_group`` exists (ML-1M's
    age codes next to ``age_group``) or when it has more than MAX_ATTRIBUTE_GROUPS values.
    """
    lengths = np.array([len(t) for t in split.train], dtype=np.int64)
    advantaged = activity_groups(lengths, top_share)
    attrs: dict[str, np.ndarray] = {}
    if attributes is not None and split.num_users:
        table = attributes.reindex(split.users)
        for col in table.columns:
            name = str(col)
            if name == ACTIVITY or f"{name}_group" in table.columns:
                continue
            groups = attribute_groups(table[col].tolist())
            if len(groups) > MAX_ATTRIBUTE_GROUPS:
                continue
            labels = np.empty(split.num_users, dtype=object)
            for value, idx in groups.items():
                labels[idx] = value
            attrs[name] = labels.astype(str)
    trained = [t for t in split.train if len(t)]
    items = np.concatenate(trained).astype(np.int64) if trained else np.zeros(0, dtype=np.int64)
    return FairnessGroups(
        advantaged, int(lengths[advantaged].min()), attrs, np.bincount(items, minlength=split.num_items), top_share
    )


def top_items(scores: Any, hist: list[np.ndarray], targets: np.ndarray, k: int = FAIR_K) -> np.ndarray:
    """Each user's top-``k`` item ids [users, k] over the candidates the protocol ranks (every
    item but the user's history; the target stays, as in :func:`full_ranks`). Ties go to the
    lower item id; slots with no candidate left (or only NaN scores) are -1."""
    s = rankable(scores, hist, targets)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.where(np.isneginf(np.take_along_axis(s, top, axis=1)), -1, top)


@dataclass
class FairnessSums:
    """Per-group sums of NDCG@10 and HR@10 with user counts, and top-10 exposure counts per item.

    Sums and counts add up across clients, so merged sums give exactly the centralized group
    means; no per-user value is kept. ``to_metrics`` is what a client sends: floats per group and
    the exposure vector as little-endian int32 bytes (Flower metrics are scalars or bytes).
    """

    exposure: np.ndarray  # int64 [num_items]
    groups: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # -> [ndcg, hr, users]

    @classmethod
    def empty(cls, num_items: int) -> FairnessSums:
        return cls(np.zeros(num_items, dtype=np.int64))

    def add(self, labels: Mapping[str, np.ndarray], ranks: np.ndarray, top: np.ndarray) -> None:
        n = ndcg(ranks, FAIR_K)
        per_user = np.stack([n, hit_rate(ranks, FAIR_K), np.ones(len(ranks)), n * n], axis=1)
        for grouping, lab in labels.items():
            names, inverse = np.unique(np.asarray(lab, dtype=str), return_inverse=True)
            for j, name in enumerate(names):
                key = (grouping, str(name))
                self.groups[key] = self.groups.get(key, np.zeros(len(_SLOTS))) + per_user[inverse == j].sum(axis=0)
        self.exposure += np.bincount(top[top >= 0], minlength=self.exposure.size)

    def merge(self, other: FairnessSums) -> FairnessSums:
        if other.exposure.size != self.exposure.size:
            raise ValueError(f"exposure over {other.exposure.size} items, expected {self.exposure.size}")
        groups = {k: v.copy() for k, v in self.groups.items()}
        for k, v in other.groups.items():
            groups[k] = groups.get(k, np.zeros(len(_SLOTS))) + v
        return FairnessSums(self.exposure + other.exposure, groups)

    def to_metrics(self, prefix: str = "") -> dict[str, float | bytes]:
        """Flat metric record; ``prefix`` keeps a second set (the re-ranked lists') apart."""
        out: dict[str, float | bytes] = {}
        for (grouping, name), values in self.groups.items():
            for metric, i in _SLOTS.items():
                out[f"{prefix}{_GROUP_PREFIX}{grouping}={name}:{metric}"] = float(values[i])
        out[prefix + EXPOSURE_KEY] = self.exposure.astype("<i4").tobytes()
        return out

    @classmethod
    def from_metrics(cls, m: Mapping[str, Any], prefix: str = "") -> FairnessSums | None:
        """Inverse of :meth:`to_metrics`; None if the record has no fairness sums. Other keys
        (the metric sums, client_id…) are ignored, so a client's whole record can be passed."""
        if prefix + EXPOSURE_KEY not in m:
            return None
        head_prefix = prefix + _GROUP_PREFIX
        groups: dict[tuple[str, str], np.ndarray] = {}
        for key, value in m.items():
            if not key.startswith(head_prefix):
                continue
            head, metric = key[len(head_prefix) :].rsplit(":", 1)
            grouping, name = head.split("=", 1)
            groups.setdefault((grouping, name), np.zeros(len(_SLOTS)))[_SLOTS[metric]] = float(value)
        return cls(np.frombuffer(m[prefix + EXPOSURE_KEY], dtype="<i4").astype(np.int64), groups)


def gap_standard_error(a: np.ndarray, d: np.ndarray) -> float:
    r"""Standard error of the NDCG@10 gap between two groups' means (slot sums of
    :class:`FairnessSums`), from each group's sample variance:

    .. math:: \mathrm{SE} = \sqrt{s_A^2 / n_A + s_D^2 / n_D}, \qquad
              s^2 = \frac{\sum x^2 - (\sum x)^2 / n}{n - 1}

    With 5 % advantaged users the small group dominates it (ML-100K: 48 users), so a gap
    smaller than about twice this is not evidence of a difference. NaN if a group has < 2 users.
    """
    var = []
    for s in (a, d):
        n = s[_SLOTS["users"]]
        if n < 2:
            return math.nan
        total, sq = s[_SLOTS["ndcg@10"]], s[_SLOTS["ndcg@10_sq"]]
        var.append(max(sq - total * total / n, 0.0) / (n - 1) / n)
    return math.sqrt(sum(var))


def _group_entry(s: np.ndarray) -> dict[str, float | int]:
    n = int(s[2])
    return {"ndcg@10": s[0] / n if n else math.nan, "hr@10": s[1] / n if n else math.nan, "users": n}


def fairness_block(
    fair: FairnessSums, clients: dict[str, dict], groups: FairnessGroups | None = None
) -> dict[str, Any]:
    """summary.json's ``fairness`` block from merged sums and the per-client means.

    ``clients`` is passed through unchanged; ``groups`` adds the activity threshold and the
    item training counts the long-tail share needs (without it that share is left out).
    """
    by: dict[str, dict[str, np.ndarray]] = {}
    for (grouping, name), s in sorted(fair.groups.items()):
        by.setdefault(grouping, {})[name] = s
    activity = by.pop(ACTIVITY, {})
    a, d = (activity.get(g, np.zeros(len(_SLOTS))) for g in ("advantaged", "disadvantaged"))
    adv, dis = _group_entry(a), _group_entry(d)
    users: dict[str, Any] = {
        ACTIVITY: {
            "advantaged": adv,
            "disadvantaged": dis,
            "gap": {m: adv[m] - dis[m] for m in FAIR_METRICS},
            "gap_se": {"ndcg@10": gap_standard_error(a, d)},
        }
    }
    if groups is not None:
        users[ACTIVITY].update(top_share=groups.top_share, threshold=groups.activity_threshold)
    for attribute, named in by.items():
        entries = {name: _group_entry(s) for name, s in named.items()}
        filled = {n: e for n, e in entries.items() if e["users"]}
        gap = {
            m: (max(e[m] for e in filled.values()) - min(e[m] for e in filled.values())) if filled else math.nan
            for m in FAIR_METRICS
        }
        ranked = sorted(filled, key=lambda n: filled[n]["ndcg@10"])
        users[attribute] = {
            "groups": entries,
            "gap": gap,
            "best": ranked[-1] if ranked else None,
            "worst": ranked[0] if ranked else None,
        }
    values = [c.get("ndcg@10") for c in clients.values()]
    values = [float(v) for v in values if v is not None and math.isfinite(v)]  # a client without users has NaN
    items = exposure_metrics(fair.exposure, groups.item_counts if groups is not None else None)
    return {
        "users": users,
        "clients": clients,
        "client_distribution": client_distribution(values) if values else None,
        "items": {f"{k}@{FAIR_K}": v for k, v in items.items()},
    }


def fairness_row(block: Mapping[str, Any]) -> dict[str, float | None]:
    """The flat fairness keys of an evaluated round's metrics.jsonl row."""
    dist = block.get("client_distribution") or {}
    return {
        "fair_activity_gap_ndcg@10": block["users"][ACTIVITY]["gap"]["ndcg@10"],
        "fair_items_coverage@10": block["items"]["coverage@10"],
        "fair_clients_gini_ndcg@10": dist.get("gini"),
    }
