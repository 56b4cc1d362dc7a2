r"""The Lagrangian relaxation behind :func:`common.fairness.ugf.ugf_solve` and its rounding: the
per-user quality F, the per-user exact subproblems for a given multiplier, the search for the
breakpoint multiplier, the dual bound, each user's menu of options and the greedy repair.

With one multiplier ``lam >= 0`` on ``sigma * gap <= epsilon`` (``sigma`` = sign of the gap
before re-ranking), the problem (see :mod:`common.fairness.ugf`) splits into one independent problem
per user,

.. math:: \max_{|W_i| = K} \sum_j W_{ij} S_{ij} - \lambda \sigma c_i F_i(W_i),
          \qquad c_i = 1/|A| \;(i \in A), \;\; -1/|D| \;(i \in D),

solved exactly: for the linear metrics (``f1``, ``recall``, ``precision``) by taking the K
largest adjusted scores, for ``ndcg`` (position-dependent) by a dynamic program over (candidate,
position) in score order. ``sigma * gap`` of the per-user optima is non-increasing in ``lam``, so
bisection finds the smallest feasible ``lam``; for the linear metrics the dual bound there
equals the LP relaxation's optimum (whose solution has at most one fractional user). Integer
answer: each user gets a menu of options (the original list, the two solutions either side of
the breakpoint, and their own per-user optimum over a grid of multipliers in both directions);
starting from each side of the breakpoint, greedy one-user moves from the menus first enter the
band (the best-scoring move that lands in it, else the move closing the most gap per unit of
score) and then take score-improving moves that stay in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

METRICS = ("ndcg", "f1", "recall", "precision")
_GRID = np.geomspace(2.0**-10, 2.0**30, 81)  # multipliers (times lam_hi) of the per-user menu
_MAX_DOUBLINGS = 200
_MAX_BISECTIONS = 200


# --- per-user quality --------------------------------------------------------------------------


def normaliser(metric: str, n_relevant: Any, n: int, k: int) -> np.ndarray:
    """Per-user Z_i with F_i = sum_j W_ij r_ij g_ij / Z_i (g = position discount for ndcg)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    nr = np.broadcast_to(np.asarray(n_relevant, dtype=np.float64), (n,))
    if not np.isfinite(nr).all() or (nr <= 0).any():
        raise ValueError("n_relevant must be positive (relevant items per user; 1 = leave-one-out)")
    if metric == "ndcg":
        if (nr != np.round(nr)).any():
            raise ValueError("n_relevant must be a whole number for ndcg (it sets the ideal DCG)")
        idcg = np.cumsum(discount(k))
        return idcg[np.minimum(nr.astype(np.int64), k) - 1]
    if metric == "recall":
        return nr.copy()
    if metric == "precision":
        return np.full(n, float(k))
    return (nr + k) / 2.0  # f1 = 2 hits / (n_relevant + K)


def discount(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0)


def _quality(sel: np.ndarray, rel: np.ndarray, z: np.ndarray, metric: str, k: int) -> np.ndarray:
    """F_i of each user's selection (selected candidates listed in candidate order)."""
    if metric == "ndcg":
        pos = np.cumsum(sel, axis=1) - 1
        gain = np.where(sel, rel * discount(k)[np.clip(pos, 0, k - 1)], 0.0)
    else:
        gain = np.where(sel, rel, 0.0)
    return gain.sum(axis=1) / z


@dataclass(frozen=True)
class Instance:
    """A validated instance: ``s`` scores and ``rel`` relevance [users, N], ``z`` the per-user
    normaliser of F, ``c`` the group weights (gap = c @ F), ``metric`` and ``k``."""

    s: np.ndarray
    rel: np.ndarray
    z: np.ndarray
    c: np.ndarray
    metric: str
    k: int

    def evaluate(self, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """F per user, kept score per user and the gap of a selection [users, N]."""
        f = _quality(sel, self.rel, self.z, self.metric, self.k)
        return f, np.where(sel, self.s, 0.0).sum(axis=1), float(self.c @ f)


# --- the per-user Lagrangian oracle ------------------------------------------------------------


def best_response(s: np.ndarray, rel: np.ndarray, mu: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Per user, the K candidates maximising sum_j (S_ij + mu_i r_ij g_ij), exactly.

    Ties go to the earlier candidate, so ``mu = 0`` gives the first K columns.
    """
    users, n = s.shape
    if metric != "ndcg":
        top = np.argsort(-(s + mu[:, None] * rel), axis=1, kind="stable")[:, :k]
        sel = np.zeros((users, n), dtype=bool)
        np.put_along_axis(sel, top, True, axis=1)
        return sel
    # DP over candidates in score order: best[:, p] = best value with p candidates taken so far.
    # Taking candidate j as the (p+1)-th item earns S_j + mu r_j / log2(p + 2).
    disc = discount(k)
    best = np.full((users, k + 1), -np.inf)
    best[:, 0] = 0.0
    took = np.zeros((n, users, k + 1), dtype=bool)
    for j in range(n):
        take = best[:, :k] + s[:, j, None] + (mu * rel[:, j])[:, None] * disc
        better = take >= best[:, 1:]  # ties: take the earlier candidate
        took[j, :, 1:] = better
        best[:, 1:] = np.where(better, take, best[:, 1:])
    sel = np.zeros((users, n), dtype=bool)
    p = np.full(users, k)
    rows = np.arange(users)
    for j in range(n - 1, -1, -1):
        t = took[j, rows, p] & (p > 0)
        sel[:, j] = t
        p = p - t
    return sel


# --- the multiplier: breakpoint, dual bound, menus ---------------------------------------------


@dataclass(frozen=True)
class Menus:
    """Each user's options, stacked over options M: ``sel`` [M, users, N], ``f`` (F_i) and ``u``
    (kept score) [M, users]. Option 0 is the original list, 1 and 2 the per-user optima just
    below and at the breakpoint multiplier ``lam`` (outside and inside the band), the rest the
    grid. ``upper`` is the smallest Lagrangian dual value evaluated. ``reached`` False: no
    multiplier brought the gap into the band, and the one option is the gap-minimising lists
    found (at multiplier ``lam``)."""

    sel: np.ndarray
    f: np.ndarray
    u: np.ndarray
    lam: float
    upper: float
    reached: bool


def lagrangian_menus(inst: Instance, eps: float, start: tuple) -> Menus:
    """Bisect to the breakpoint multiplier and build the menus, from ``start`` = (selection,
    F, kept score, gap) of the original lists, whose |gap| exceeds ``eps``."""
    sel0, f0, u0, gap0 = start
    sigma = 1.0 if gap0 > 0 else -1.0
    weight = -sigma * inst.c / inst.z  # mu_i = lam * weight_i

    def solve(lam: float):
        sel = best_response(inst.s, inst.rel, lam * weight, inst.metric, inst.k)
        f, u, gap = inst.evaluate(sel)
        return sel, f, u, gap

    # Weak duality: any lam >= 0 bounds every feasible answer's score.
    upper = float(u0.sum())  # lam = 0
    lo = (0.0, sel0, f0, u0, gap0)

    def bound(lam: float, u: np.ndarray, gap: float) -> float:
        return float(u.sum()) - lam * (sigma * gap - eps)

    # Find lam_hi with sigma * gap <= eps by doubling from a scale where the two terms compare.
    spread = float(np.median(np.ptp(inst.s, axis=1)))
    lam = max(spread, 1e-12) / float(np.abs(weight).max()) * 1e-3
    hi = None
    for _ in range(_MAX_DOUBLINGS):
        sel, f, u, gap = solve(lam)
        upper = min(upper, bound(lam, u, gap))
        if sigma * gap <= eps:
            hi = (lam, sel, f, u, gap)
            break
        lo = (lam, sel, f, u, gap)
        lam *= 2.0
    if hi is None:  # even the gap-minimising lists do not reach epsilon
        lam_, sel, f, u, gap = lo
        return Menus(sel[None], f[None], u[None], lam_, upper, False)

    # Bisect to the breakpoint: below it infeasible, above it feasible.
    for _ in range(_MAX_BISECTIONS):
        if (lo[1] != hi[1]).any(axis=1).sum() <= 1:
            break
        mid = 0.5 * (lo[0] + hi[0])
        if mid <= lo[0] or mid >= hi[0]:
            break
        sel, f, u, gap = solve(mid)
        upper = min(upper, bound(mid, u, gap))
        if sigma * gap <= eps:
            hi = (mid, sel, f, u, gap)
        else:
            lo = (mid, sel, f, u, gap)

    lam_lo, sel_lo, f_lo, u_lo, gap_lo = lo
    lam_hi, sel_hi, f_hi, u_hi, gap_hi = hi
    # The dual is smallest where the lower and upper solutions' Lagrangians cross; for the
    # linear metrics the bound there equals the LP relaxation's optimum.
    if sigma * (gap_lo - gap_hi) > 0:
        cross = float(u_lo.sum() - u_hi.sum()) / (sigma * (gap_lo - gap_hi))
        if lam_lo <= cross <= lam_hi:
            _, _, u_x, gap_x = solve(cross)
            upper = min(upper, bound(cross, u_x, gap_x))
    # Menu of per-user options: the original list, the two breakpoint solutions, and each
    # user's per-user optimum over a grid of multipliers in both directions (the negative ones
    # raise the gap back when a move overshoots the band).
    menu_sel, menu_f, menu_u = [sel0, sel_lo, sel_hi], [f0, f_lo, f_hi], [u0, u_lo, u_hi]
    for g in lam_hi * np.concatenate([_GRID, -_GRID]):
        sel_g, f_g, u_g, gap_g = solve(g)
        if g > 0:
            upper = min(upper, bound(g, u_g, gap_g))
        else:  # weak duality for the other side, sigma * gap >= -epsilon
            upper = min(upper, float(u_g.sum()) - g * (sigma * gap_g + eps))
        menu_sel.append(sel_g)
        menu_f.append(f_g)
        menu_u.append(u_g)
    return Menus(np.stack(menu_sel), np.stack(menu_f), np.stack(menu_u), lam_hi, upper, True)


# --- the integer answer ------------------------------------------------------------------------


def repair(idx: np.ndarray, menus: Menus, c: np.ndarray, eps: float) -> np.ndarray:
    """Greedy one-user moves from the menu: into the band at the best score if one move
    can; else the move closing the most violation per unit of score; then, once feasible,
    score-improving moves that stay feasible. ``idx`` [users] is each user's menu option."""
    f_m, u_m = menus.f, menus.u
    users = f_m.shape[1]
    rows = np.arange(users)
    tol = 1e-12 * max(1.0, float(np.abs(u_m).max()))
    for _ in range(4 * users + 4):
        f, u = f_m[idx, rows], u_m[idx, rows]
        gap = float(c @ f)
        new_gap = gap + c * (f_m - f)  # [M, users]
        gain = u_m - u
        fits = np.abs(new_gap) <= eps
        viol = abs(gap) - eps
        if viol > 0:
            if fits.any():
                m, i = np.unravel_index(np.argmax(np.where(fits, gain, -np.inf)), fits.shape)
            else:
                closed = viol - (np.abs(new_gap) - eps)
                rate = np.where(closed > 1e-15, closed / np.maximum(-gain, tol), -np.inf)
                m, i = np.unravel_index(np.argmax(rate), rate.shape)
                if not np.isfinite(rate[m, i]):
                    return idx  # stuck: no move reduces the violation
        else:
            better = np.where(fits & (gain > tol), gain, -np.inf)
            m, i = np.unravel_index(np.argmax(better), better.shape)
            if not np.isfinite(better[m, i]):
                return idx
        idx = idx.copy()
        idx[i] = m
    return idx
