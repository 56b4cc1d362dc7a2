"""Empirical privacy audit in one training run (Steinke, Nasr & Jagielski, NeurIPS 2023,
arXiv:2305.08846) plus a loss-threshold membership-inference attack (MIA).

- :func:`inject_audit` appends ``m`` canary users with random histories to the data, each
  trained on with probability 1/2 (independently, seeded), and leaves a share of real users
  out of training (non-members for the MIA).
- :func:`audit_canaries` turns canary membership scores into an ε lower bound;
  :func:`roc_auc` / :func:`roc_curve` measure the MIA on real members vs held-out users.

Pure numpy/scipy; the driver (training, scoring) is ``simulations/audit/run.py``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from common.data.types import DataError, InteractionData, LeaveOneOutSplit

METHOD = (
    "Steinke, Nasr & Jagielski 2023 (arXiv:2305.08846), main theorem for (eps, delta)-DP ("
    "p-value as in the paper's code); Bonferroni over {k} (k+, k-) choices fixed in advance"
)
# Canary timestamps: any increasing values do (the split only uses order).
_CANARY_START = 1_600_000_000


@dataclass(frozen=True)
class AuditInfo:
    """Who the audit added or withheld. Users never trained on are in no split row at all
    (every consumer of the split, e.g. the centralized baseline, trains on all of its rows),
    so their training sequences are kept here for scoring."""

    member_rows: np.ndarray  # int64: split rows of the real users (all of them are trained on)
    canary_train: list[np.ndarray]  # training sequence of each of the m canaries
    included: np.ndarray  # bool [m]: canary in the split and in one client's partition
    canary_rows: np.ndarray  # int64 [m]: split row of an included canary, -1 if excluded
    holdout_users: np.ndarray  # int64: InteractionData indices of the held-out real users
    holdout_train: list[np.ndarray]  # their training sequences (never trained on)


def audit_active(audit) -> bool:
    """Whether the config's ``audit`` block (may be None) changes the data at all."""
    return audit is not None and (int(audit.get("canaries", 0)) > 0 or float(audit.get("holdout", 0.0)) > 0)


def _rng(seed: int, stream: int) -> np.random.Generator:
    # One stream per purpose: changing the canary count leaves the held-out users alone.
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def inject_audit(
    data: InteractionData,
    split: LeaveOneOutSplit,
    partitions: list[np.ndarray],
    canaries: int,
    canary_length: int,
    holdout: float,
    seed: int,
    one_client_per_user: bool = False,
) -> tuple[InteractionData, LeaveOneOutSplit, list[np.ndarray], AuditInfo]:
    """Data, split and partitions with the included canaries appended and the held-out real
    users taken out of the split (as users with < 3 interactions are).

    Real users keep their data, their order and the client the usual partition gave them, so
    a canary's inclusion changes exactly one client's data by one user (the neighbouring data
    sets DP is about). Each canary's client is drawn whether or not it is included, for the
    same reason; with ``one_client_per_user`` (cross-device) an included canary is a client of
    its own. Clients left empty by the hold-out are dropped.
    """
    if canaries < 0 or not 0.0 <= holdout < 1.0:
        raise DataError(f"audit: need canaries >= 0 and 0 <= holdout < 1, got {canaries}, {holdout}")
    # Leave-one-out keeps length - 2 items for training, and a user needs 2 to be trained on.
    if canaries and not 4 <= canary_length <= data.num_items:
        raise DataError(f"audit.canary_length={canary_length} must be in [4, {data.num_items}] (items)")
    n = split.num_users
    # Random items in a random order: nothing in the real data predicts them, so only
    # memorisation can lower a canary's loss.
    hist = _rng(seed, 0)
    seqs = [hist.choice(data.num_items, size=canary_length, replace=False).astype(np.int64) for _ in range(canaries)]
    included = _rng(seed, 1).random(canaries) < 0.5
    client_of = _rng(seed, 2).integers(0, len(partitions), size=canaries)
    held = np.sort(_rng(seed, 3).permutation(n)[: int(round(holdout * n))]).astype(np.int64)
    keep = np.setdiff1d(np.arange(n), held)
    new_row = np.full(n, -1, dtype=np.int64)
    new_row[keep] = np.arange(len(keep))

    inc = np.flatnonzero(included)
    rows = np.full(canaries, -1, dtype=np.int64)
    rows[inc] = len(keep) + np.arange(len(inc))
    info = AuditInfo(
        member_rows=np.arange(len(keep), dtype=np.int64),
        canary_train=[s[:-2] for s in seqs],
        included=included,
        canary_rows=rows,
        holdout_users=split.users[held],
        holdout_train=[split.train[r] for r in held],
    )
    first_user = data.num_users
    data = _append_users(data, [seqs[j] for j in inc], [f"__canary_{j}" for j in inc])
    split = LeaveOneOutSplit(
        users=np.concatenate([split.users[keep], np.arange(first_user, data.num_users, dtype=np.int64)]),
        train=[*(split.train[r] for r in keep), *(seqs[j][:-2] for j in inc)],
        valid=np.concatenate([split.valid[keep], np.array([seqs[j][-2] for j in inc], dtype=np.int64)]),
        test=np.concatenate([split.test[keep], np.array([seqs[j][-1] for j in inc], dtype=np.int64)]),
        num_items=split.num_items,
        stats={
            **split.stats,
            "users": len(keep) + len(inc),
            "audit_canaries_included": len(inc),
            "audit_holdout": int(len(held)),
        },
    )
    parts = [new_row[np.setdiff1d(p, held)] for p in partitions]  # setdiff1d sorts; new_row keeps order
    if one_client_per_user:
        parts += [np.array([r]) for r in rows[included]]
    else:
        for c in range(len(parts)):
            parts[c] = np.sort(np.concatenate([parts[c], rows[included & (client_of == c)]]))
    parts = [p.astype(np.int64) for p in parts if len(p)]
    return data, split, parts, info


def _append_users(data: InteractionData, seqs: list[np.ndarray], names: list[str]) -> InteractionData:
    m = len(seqs)
    stamps = [_CANARY_START + 86_400 * np.arange(len(s), dtype=np.int64) for s in seqs]
    attrs = data.user_attributes
    if attrs is not None and m:
        from common.data.assemble import MISSING_ATTRIBUTE

        extra = pd.DataFrame(MISSING_ATTRIBUTE, index=range(data.num_users, data.num_users + m), columns=attrs.columns)
        attrs = pd.concat([attrs.astype(object), extra])
    return dataclasses.replace(
        data,
        user_ids=[*data.user_ids, *names],
        sequences=[*data.sequences, *seqs],
        timestamps=[*data.timestamps, *stamps],
        ratings=None if data.ratings is None else [*data.ratings, *(np.full(len(s), 5.0, np.float32) for s in seqs)],
        user_attributes=attrs,
        stats={**data.stats, "audit_canaries": m},
    )


# --- ε lower bound -------------------------------------------------------------------------


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[≥ v of r guesses correct] allowed by (ε, δ)-DP with m canaries (the paper's main theorem
    for (ε, δ)-DP; theorem numbering not checked against the paper here):
    f(v) + 2mδ · max_{i=1..v} (f(v-i) - f(v)) / i, f(v) = P[Binomial(r, e^ε/(1+e^ε)) ≥ v]."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct {v} <= guesses {r} <= canaries {m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    i = np.arange(1, v + 1)
    gap = stats.binom.sf(v - i - 1, r, q) - tail  # P[v-i <= W < v]
    return min(tail + 2 * m * delta * float(np.max(gap / i)), 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float = 0.0, beta: float = 0.05) -> float:
    """Largest ε whose (ε, δ)-DP claim ``v`` correct of ``r`` guesses rejects at level β; 0
    when even ε = 0 is plausible. The main (ε, δ) theorem of Steinke, Nasr & Jagielski (2023) via
    :func:`p_value`, inverted by bisection as in the paper's code (which, like this, treats
    the p-value as increasing in ε: exactly so for δ = 0)."""
    if r == 0 or p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, 2 * hi
        if hi > 1e3:  # only reached with β ~ 0: no finite bound worth reporting
            return lo
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(m, r, v, mid, delta) < beta else (lo, mid)
    return lo


def default_guess_counts(m: int) -> list[tuple[int, int]]:
    """(k+, k-) pairs tried, fixed before looking at scores: 2.5 %, 5 %, 12.5 %, 25 % of the
    canaries guessed "in" and as many "out" (more guesses: more power, less precision)."""
    ks = sorted({max(1, round(f * m)) for f in (0.025, 0.05, 0.125, 0.25)} if m else set())
    return [(k, k) for k in ks if 2 * k <= m]


def count_correct(scores: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int) -> tuple[int, int]:
    """(guesses, correct): "in" for the k+ highest scores, "out" for the k- lowest."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    inc = np.asarray(included, dtype=bool)[order]
    if k_plus + k_minus > len(order):
        raise ValueError(f"k+ + k- = {k_plus + k_minus} exceeds {len(order)} canaries")
    correct = int(inc[:k_plus].sum()) + int((~inc[len(inc) - k_minus :]).sum() if k_minus else 0)
    return k_plus + k_minus, correct


def audit_canaries(
    scores: np.ndarray,
    included: np.ndarray,
    delta: float,
    beta: float = 0.05,
    guess_counts: list[tuple[int, int]] | None = None,
) -> dict:
    """The best ε lower bound over the (k+, k-) choices, each at level β / (number of choices)
    (Bonferroni), so the reported maximum holds at confidence 1 - β overall."""
    m = len(scores)
    choices = guess_counts if guess_counts is not None else default_guess_counts(m)
    level = beta / max(len(choices), 1)
    tried = []
    for kp, km in choices:
        r, v = count_correct(scores, included, kp, km)
        eps = epsilon_lower_bound(m, r, v, delta, level)
        tried.append({"k_plus": kp, "k_minus": km, "guesses": r, "correct": v, "epsilon_lower_bound": eps})
    # The highest bound; with none above 0, the most guesses (the most telling accuracy).
    best = max(tried, key=lambda t: (t["epsilon_lower_bound"], t["guesses"]), default=None)
    best = best or {"k_plus": 0, "k_minus": 0, "guesses": 0, "correct": 0, "epsilon_lower_bound": 0.0}
    return {
        "m": m,
        "included": int(np.sum(included)),
        **best,
        "confidence": 1 - beta,
        "method": METHOD.format(k=len(choices)),
        "tried": tried,
    }


# --- membership inference ------------------------------------------------------------------


def roc_auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """P[score(member) > score(non-member)] + ½ P[tie] (Mann–Whitney U / (n₁ n₀))."""
    pos, neg = np.asarray(members, np.float64), np.asarray(non_members, np.float64)
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = stats.rankdata(np.concatenate([pos, neg]))  # average ranks: ties count ½
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def roc_curve(members: np.ndarray, non_members: np.ndarray, max_points: int = 200) -> tuple[list, list]:
    """(fpr, tpr) of "member if score ≥ t" over every distinct t, from (0, 0) to (1, 1),
    thinned evenly to at most ``max_points`` points."""
    pos, neg = np.asarray(members, np.float64), np.asarray(non_members, np.float64)
    if not len(pos) or not len(neg):
        return [], []
    t = np.unique(np.concatenate([pos, neg]))[::-1]
    tpr, fpr = np.concatenate([[0.0], _rate(pos, t)]), np.concatenate([[0.0], _rate(neg, t)])
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return [float(x) for x in fpr], [float(x) for x in tpr]


def _rate(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Share of ``scores`` ≥ each threshold."""
    s = np.sort(scores)
    return (len(s) - np.searchsorted(s, thresholds, side="left")) / len(s)
