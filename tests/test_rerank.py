"""UGF re-ranking (common.fairness.ugf): list guarantees, the constraint, and optimality against brute
force on a hand-worked example and on tiny random instances."""

import itertools
import math
import time

import numpy as np
import pytest
from scipy.optimize import linprog
from scipy.sparse import csr_matrix, kron, vstack

from common.fairness.lagrangian import best_response as _oracle
from common.fairness.ugf import gap_after, ugf_rerank, ugf_solve
from common.metrics.ranking import ndcg

# Hand-worked example: 3 users x 4 candidates, K = 2, NDCG@2 with one relevant item per user.
# User 0 (advantaged) has its relevant item first; users 1 and 2 have theirs at columns 2 and 3,
# outside their top-2. Before: F = [1, 0, 0], gap = 1 - 0 = 1, total score 3 * 7 = 21.
# Moves and their cost (score lost) and effect (1/log2(3) = 0.631 at position 1):
#   user 0 -> {1, 2}: cost 2, F_0 = 0, gap -> 0 - mean(D)
#   user 1 -> {0, 2}: cost 1, F_1 = 0.631, gap -1 minus 0.315
#   user 1 -> {2, 3}: cost 4, F_1 = 1,     gap -1 minus 0.5
#   user 2 -> {0, 3}: cost 2, F_2 = 0.631, gap -1 minus 0.315
# eps = 0.7: cheapest is user 1 -> {0, 2} (gap 0.685, cost 1). The Lagrangian alone would move
#   user 0 first (2 per unit of gap beats 3.17), costing 2; the repair's first step (the best
#   single move that lands in the band) finds the move costing 1.
# eps = 0.4: user 1 -> {0, 2} plus user 2 -> {0, 3} reaches 0.369 for 3; user 0 -> {1, 2}
#   reaches 0 for 2, the optimum (levelling down).
HAND_S = np.array([[4.0, 3.0, 2.0, 1.0]] * 3)
HAND_C = np.array([[0, 1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23]])
HAND_R = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
HAND_ADV = np.array([True, False, False])


def _ndcg_lists(cols, rel, k):
    """Independent NDCG@k (one relevant item per user) via common.metrics.ranking.ndcg."""
    out = []
    for row, c in zip(rel, cols):
        hits = [p for p, j in enumerate(c) if row[j] > 0]
        out.append(sum(row[c[p]] * ndcg(np.array([p]), k)[0] for p in hits))
    return np.array(out)


def _brute_force(s, rel, adv, k, eps, metric):
    """Best total score over all feasible choices (each user: any k of their candidates)."""
    users, n = s.shape
    combos = list(itertools.combinations(range(n), k))
    per_user_f, per_user_s = [], []
    for i in range(users):
        cols = [list(c) for c in combos]
        if metric == "ndcg":
            f = _ndcg_lists(cols, np.repeat(rel[i : i + 1], len(cols), axis=0), k)
        else:  # f1 with one relevant item: 2 * hits / (1 + k)
            f = np.array([2 * rel[i, list(c)].sum() / (1 + k) for c in combos])
        per_user_f.append(f)
        per_user_s.append(np.array([s[i, list(c)].sum() for c in combos]))
    best, best_choice = -np.inf, None
    for choice in itertools.product(range(len(combos)), repeat=users):
        f = np.array([per_user_f[i][c] for i, c in enumerate(choice)])
        gap = f[adv].mean() - f[~adv].mean()
        if abs(gap) <= eps + 1e-12:
            total = sum(per_user_s[i][c] for i, c in enumerate(choice))
            if total > best + 1e-12:
                best, best_choice = total, choice
    return best, [combos[c] for c in best_choice]


def _random_instance(rng, users, n, n_adv, graded=True):
    s = np.sort(rng.normal(size=(users, n)), axis=1)[:, ::-1].copy()
    cand = np.stack([rng.permutation(10 * n)[:n] for _ in range(users)])
    adv = np.zeros(users, dtype=bool)
    adv[rng.choice(users, n_adv, replace=False)] = True
    if graded:
        rel = rng.random((users, n)) * (rng.random((users, n)) < 0.5)
    else:
        rel = np.zeros((users, n))
        hit = rng.random(users) < np.where(adv, 0.8, 0.4)
        rel[hit, rng.integers(0, n, hit.sum())] = 1.0
    return s, cand, rel, adv


# --- the hand-worked example ---------------------------------------------------------------


@pytest.mark.parametrize(
    "eps, lists, loss",
    [
        (0.7, [[0, 1], [10, 12], [20, 21]], 1.0),
        (0.4, [[1, 2], [10, 11], [20, 21]], 2.0),
    ],
)
def test_hand_worked_example_is_the_brute_force_optimum(eps, lists, loss):
    best, choice = _brute_force(HAND_S, HAND_R, HAND_ADV, 2, eps, "ndcg")
    assert 21.0 - best == pytest.approx(loss)
    assert [[HAND_C[i, j] for j in c] for i, c in enumerate(choice)] == lists  # unique optimum
    r = ugf_solve(HAND_S, HAND_C, HAND_R, HAND_ADV, k=2, epsilon=eps)
    assert r.items.tolist() == lists
    assert r.feasible and abs(r.gap) <= eps
    assert r.score_before - r.score == pytest.approx(loss)
    assert r.upper_bound >= best - 1e-9


def test_hand_worked_example_gap_after():
    before = gap_after(HAND_S, HAND_C, HAND_R, HAND_ADV, HAND_C[:, :2])
    assert before["advantaged"] == 1.0 and before["disadvantaged"] == 0.0 and before["gap"] == 1.0
    assert before["score"] == before["score_before"] == 21.0 and before["score_loss"] == 0.0
    lists = ugf_rerank(HAND_S, HAND_C, HAND_R, HAND_ADV, 2, 0.7)
    after = gap_after(HAND_S, HAND_C, HAND_R, HAND_ADV, lists)
    assert after["disadvantaged"] == pytest.approx(0.5 / math.log2(3))
    assert after["gap"] == pytest.approx(1 - 0.5 / math.log2(3))
    assert after["score"] == 20.0 and after["score_loss"] == 1.0
    # F1 with one relevant item: 2 hits / (1 + K)
    f1 = gap_after(HAND_S, HAND_C, HAND_R, HAND_ADV, HAND_C[:, :2], metric="f1")
    assert f1["advantaged"] == pytest.approx(2 / 3) and f1["gap"] == pytest.approx(2 / 3)


# --- guarantees on random instances ----------------------------------------------------------


@pytest.mark.parametrize("metric", ["ndcg", "f1", "recall", "precision"])
def test_large_epsilon_keeps_the_original_top_k(metric):
    s, cand, rel, adv = _random_instance(np.random.default_rng(1), 40, 12, 6)
    r = ugf_solve(s, cand, rel, adv, k=4, epsilon=1.0, metric=metric)
    assert np.array_equal(r.items, cand[:, :4])
    assert r.changed_users == 0 and r.score == r.score_before and r.gap == r.gap_before


@pytest.mark.parametrize("metric", ["ndcg", "f1"])
@pytest.mark.parametrize("graded", [True, False])
def test_binding_epsilon_lists_and_gap(metric, graded):
    rng = np.random.default_rng(2)
    s, cand, rel, adv = _random_instance(rng, 80, 15, 10, graded)
    before = gap_after(s, cand, rel, adv, cand[:, :5], metric)
    eps = before["abs_gap"] / 3
    r = ugf_solve(s, cand, rel, adv, k=5, epsilon=eps, metric=metric)
    # K distinct items per user, all among that user's candidates (never a history item)
    assert r.items.shape == (80, 5)
    assert all(len(set(row)) == 5 and set(row) <= set(c) for row, c in zip(r.items, cand))
    after = gap_after(s, cand, rel, adv, r.items, metric)
    assert r.feasible and after["abs_gap"] <= eps + 1e-12 < before["abs_gap"]
    assert after["gap"] == pytest.approx(r.gap) and r.gap_before == pytest.approx(before["gap"])
    assert after["score"] == pytest.approx(r.score) and r.score <= r.score_before
    assert r.score <= r.upper_bound + 1e-9


@pytest.mark.parametrize("metric", ["ndcg", "f1"])
@pytest.mark.parametrize("seed", range(6))
def test_tiny_random_instances_against_brute_force(metric, seed):
    rng = np.random.default_rng(100 + seed)
    gap0 = 0.0
    while gap0 == 0:  # binary labels can leave both groups at the same quality
        s, cand, rel, adv = _random_instance(rng, 4, 5, 1, graded=seed % 2 == 0)
        gap0 = gap_after(s, cand, rel, adv, cand[:, :2], metric)["abs_gap"]
    eps = gap0 / 2
    best, _ = _brute_force(s, rel, adv, 2, eps, metric)
    r = ugf_solve(s, cand, rel, adv, k=2, epsilon=eps, metric=metric)
    assert r.feasible and abs(r.gap) <= eps + 1e-12
    # feasible, so never better than the optimum; the certificate bounds the optimum
    assert r.score <= best + 1e-9 <= r.upper_bound + 2e-9


def test_upper_bound_is_the_lp_relaxation_optimum():
    """For a linear metric the dual bound equals the LP relaxation (HiGHS) of UGF's program."""
    users, n, k = 60, 10, 3
    s, cand, rel, adv = _random_instance(np.random.default_rng(3), users, n, 8, graded=False)
    c = np.where(adv, 1 / adv.sum(), -1 / (~adv).sum())[:, None] * 2 * rel / (1 + k)  # f1
    eps = abs(c[:, :k].sum()) / 4
    rows = kron(csr_matrix(np.eye(users)), np.ones((1, n)))
    gap_row = csr_matrix(c.reshape(1, -1))
    lp = linprog(
        -s.ravel(),
        A_ub=vstack([gap_row, -gap_row]),
        b_ub=[eps, eps],
        A_eq=rows,
        b_eq=np.full(users, k),
        bounds=(0, 1),
        method="highs",
    )
    assert lp.status == 0
    r = ugf_solve(s, cand, rel, adv, k=k, epsilon=eps, metric="f1")
    assert r.upper_bound == pytest.approx(-lp.fun, rel=1e-9, abs=1e-9)
    assert r.feasible and r.score <= -lp.fun + 1e-9


@pytest.mark.parametrize("metric", ["ndcg", "f1"])
def test_per_user_oracle_is_exact(metric):
    rng = np.random.default_rng(4)
    n, k = 7, 3
    s = np.sort(rng.normal(size=(30, n)), axis=1)[:, ::-1].copy()
    rel = rng.random((30, n))
    mu = rng.normal(size=30) * 3
    sel = _oracle(s, rel, mu, metric, k)
    disc = 1 / np.log2(np.arange(k) + 2) if metric == "ndcg" else np.ones(k)

    def value(i, cols):
        return sum(s[i, j] + mu[i] * rel[i, j] * disc[p] for p, j in enumerate(cols))

    for i in range(30):
        best = max(value(i, c) for c in itertools.combinations(range(n), k))
        assert sel[i].sum() == k and value(i, np.flatnonzero(sel[i])) == pytest.approx(best)


def test_epsilon_zero_misses_by_at_most_one_users_share():
    s, cand, rel, adv = _random_instance(np.random.default_rng(5), 100, 12, 10, graded=True)
    r = ugf_solve(s, cand, rel, adv, k=4, epsilon=0.0)
    assert abs(r.gap) < abs(r.gap_before)
    assert r.feasible or abs(r.gap) <= 1 / min(adv.sum(), (~adv).sum())


def test_ml100k_size_runs_in_seconds():
    """943 users x 50 candidates, K = 10, 5 % advantaged (ML-100K's shape), oracle-style labels."""
    s, cand, rel, adv = _random_instance(np.random.default_rng(6), 943, 50, 48, graded=False)
    for metric in ("ndcg", "f1"):
        gap0 = gap_after(s, cand, rel, adv, cand[:, :10], metric)["abs_gap"]
        start = time.perf_counter()
        r = ugf_solve(s, cand, rel, adv, k=10, epsilon=gap0 / 4, metric=metric)
        assert time.perf_counter() - start < 5.0
        assert r.feasible and abs(r.gap) <= gap0 / 4
        assert all(len(set(row)) == 10 for row in r.items)


# --- input checks ------------------------------------------------------------------------------


def test_rejects_bad_input():
    ok = (HAND_S, HAND_C, HAND_R, HAND_ADV, 2, 0.5)
    with pytest.raises(ValueError, match="sorted descending"):
        ugf_rerank(HAND_S[:, ::-1], *ok[1:])
    with pytest.raises(ValueError, match="same item twice"):
        ugf_rerank(HAND_S, np.array([[0, 0, 1, 2]] * 3), *ok[2:])
    with pytest.raises(ValueError, match="bool mask"):
        ugf_rerank(*ok[:3], np.array([1, 0, 0]), 2, 0.5)
    with pytest.raises(ValueError, match="both user groups"):
        ugf_rerank(*ok[:3], np.array([True] * 3), 2, 0.5)
    with pytest.raises(ValueError, match="k=5"):
        ugf_rerank(*ok[:4], 5, 0.5)
    with pytest.raises(ValueError, match="epsilon"):
        ugf_rerank(*ok[:5], -0.1)
    with pytest.raises(ValueError, match="non-negative"):
        ugf_rerank(HAND_S, HAND_C, -HAND_R, *ok[3:])
    with pytest.raises(ValueError, match="unknown metric"):
        ugf_rerank(*ok, metric="mrr")
    with pytest.raises(ValueError, match="not among"):
        gap_after(*ok[:4], np.array([[0, 1], [10, 99], [20, 21]]))
