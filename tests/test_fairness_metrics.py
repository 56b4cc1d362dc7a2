"""Fairness metrics across users, clients and items, each against a hand-worked example."""

import math

import numpy as np
import pytest

from common.fairness.metrics import (
    AGE_BUCKETS,
    MISSING,
    activity_groups,
    age_bucket,
    attribute_groups,
    client_distribution,
    coverage_at_k,
    exposure_gini,
    get_item_metric,
    gini,
    group_gap,
    groups_summary,
    long_tail_share,
)
from common.metrics.ranking import hit_rate, ndcg

# Three users' top-2 lists over a 5-item catalogue; recommended counts per item: [2, 3, 1, 0, 0].
TOP_K = np.array([[0, 1], [1, 2], [0, 1]])
# Training interactions per item: item 0 is the clear head; items 1 and 2 tie.
ITEM_COUNTS = np.array([50, 10, 10, 3, 0])


# --- users ---------------------------------------------------------------------------------


def test_activity_groups_top_share_and_ties():
    counts = np.array([3, 10, 5, 10, 1])
    # ceil(0.2 * 5) = 1 advantaged user; users 1 and 3 tie at 10 -> the lower index wins.
    assert activity_groups(counts, top_share=0.2).tolist() == [False, True, False, False, False]
    # ceil(0.4 * 5) = 2: both tied users.
    assert activity_groups(counts, top_share=0.4).tolist() == [False, True, False, True, False]
    # Default 5 %: ceil(0.05 * 20) = 1, ceil(0.05 * 21) = 2; all tied -> the first users.
    assert activity_groups(np.ones(20)).sum() == 1
    assert np.flatnonzero(activity_groups(np.ones(21))).tolist() == [0, 1]
    # No float round-up: 0.07 * 100 = 7.000000000000001 must still mean 7 users.
    assert activity_groups(np.arange(100), top_share=0.07).sum() == 7


def test_activity_groups_partition_users():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 30, size=997)  # many ties
    adv = activity_groups(counts)
    assert adv.dtype == bool and adv.shape == counts.shape  # each user in exactly one group
    assert adv.sum() == math.ceil(0.05 * 997) == 50
    assert counts[adv].min() >= counts[~adv].max()  # nobody outside is more active


def test_age_bucket_matches_loader_labels():
    from common.data.assemble import MISSING_ATTRIBUTE
    from common.data.movielens import ML1M_AGE_LABELS

    assert AGE_BUCKETS == ML1M_AGE_LABELS and MISSING == MISSING_ATTRIBUTE
    # ML-100K exact ages
    assert [age_bucket(a) for a in (7, 17, 18, 24, 25, 44.5, 49, 50, 55, 56, 73)] == [
        "Under 18",
        "Under 18",
        "18-24",
        "18-24",
        "25-34",
        "35-44",
        "45-49",
        "50-55",
        "50-55",
        "56+",
        "56+",
    ]
    # ML-1M codes are bucket lower bounds and map onto their own label
    assert all(age_bucket(code) == label for code, label in ML1M_AGE_LABELS.items())
    assert age_bucket(0) == "Under 18"


def test_attribute_groups_cover_all_users():
    values = ["M", "F", "M", None, float("nan"), "", 25, "25"]
    g = attribute_groups(values)
    assert list(g) == ["25", "F", "M", "unknown"]  # sorted; int 25 and "25" are one value
    assert g["M"].tolist() == [0, 2] and g["F"].tolist() == [1]
    assert g["unknown"].tolist() == [3, 4, 5] and g["25"].tolist() == [6, 7]
    assert sorted(np.concatenate(list(g.values())).tolist()) == list(range(len(values)))


def test_group_gap_by_hand():
    per_user = np.array([1.0, 0.0, 0.5, 0.25])
    adv = np.array([True, False, False, True])
    # advantaged (1 + 0.25) / 2 = 0.625, disadvantaged (0 + 0.5) / 2 = 0.25
    out = group_gap(per_user, adv)
    assert out["advantaged"] == 0.625 and out["disadvantaged"] == 0.25
    assert out["gap"] == 0.375 and out["abs_gap"] == 0.375
    assert out["n_advantaged"] == 2 and out["n_disadvantaged"] == 2
    # Signed: disadvantaged better -> negative gap, UGF stays positive.
    flipped = group_gap(per_user, ~adv)
    assert flipped["gap"] == -0.375 and flipped["abs_gap"] == 0.375
    # An empty group is reported, not hidden: NaN mean and gap, count 0.
    empty = group_gap(per_user, np.ones(4, dtype=bool))
    assert empty["n_disadvantaged"] == 0 and math.isnan(empty["gap"])


def test_group_gap_composes_with_ranking_metrics():
    ranks = np.array([0, 12, 3, 1])  # 0-based, as ranking.full_ranks returns
    adv = np.array([True, False, False, False])
    # NDCG@10: 1, 0, 1/log2(5), 1/log2(3); HR@10: 1, 0, 1, 1
    out = group_gap(ndcg(ranks, 10), adv)
    assert out["gap"] == pytest.approx(1 - (1 / math.log2(5) + 1 / math.log2(3)) / 3)
    assert group_gap(hit_rate(ranks, 10), adv)["disadvantaged"] == pytest.approx(2 / 3)


def test_groups_summary_by_hand():
    per_user = np.array([1.0, 0.0, 0.5, 0.25])
    g = attribute_groups(["M", "F", "M", None])
    out = groups_summary(per_user, g)
    # F: 0 (1 user), M: (1 + 0.5) / 2 = 0.75 (2 users), unknown: 0.25 (1 user)
    assert out["groups"] == {
        "F": {"mean": 0.0, "count": 1},
        "M": {"mean": 0.75, "count": 2},
        "unknown": {"mean": 0.25, "count": 1},
    }
    assert out["gap"] == 0.75 and out["best"] == "M" and out["worst"] == "F"
    with_empty = groups_summary(per_user, {**g, "X": []})  # a plain [] is float to numpy
    assert with_empty["gap"] == 0.75 and math.isnan(with_empty["groups"]["X"]["mean"])
    assert with_empty["groups"]["X"]["count"] == 0
    assert math.isnan(groups_summary(per_user, {"X": []})["gap"])


# --- clients -------------------------------------------------------------------------------


def test_gini_by_hand():
    assert gini([3, 3, 3, 3]) == 0.0
    assert gini([0, 0, 0]) == 0.0  # defined as 0
    for n in (1, 2, 5, 100):
        assert gini([0] * (n - 1) + [1]) == pytest.approx((n - 1) / n)
    # [1, 2, 3, 4]: sum over ordered pairs |xi - xj| = 2 * (1+2+3+1+2+1) = 20; 2 n^2 mu = 80
    assert gini([4, 1, 3, 2]) == pytest.approx(0.25)
    x = np.random.default_rng(1).random(50)  # closed form equals the double-sum definition
    assert gini(x) == pytest.approx(np.abs(x[:, None] - x).sum() / (2 * 50**2 * x.mean()))


def test_client_distribution_by_hand():
    out = client_distribution([4.0, 1.0, 3.0, 2.0])
    # mean 2.5, population var (2.25+0.25+0.25+2.25)/4 = 1.25, worst ceil(0.4)=1 client -> 1
    assert out == pytest.approx(
        {"n": 4, "mean": 2.5, "std": math.sqrt(1.25), "min": 1.0, "max": 4.0, "worst10_mean": 1.0, "gini": 0.25}
    )
    w = client_distribution([1.0, 2.0, 3.0, 4.0], weights=[1, 1, 1, 5])
    # weighted mean 26/8 = 3.25; var (2.25^2 + 1.25^2 + 0.25^2 + 5 * 0.75^2)/8 = 9.5/8
    assert w["mean"] == 3.25 and w["std"] == pytest.approx(math.sqrt(9.5 / 8))
    assert w["gini"] == pytest.approx(0.25) and w["worst10_mean"] == 1.0  # unweighted
    # 11 clients: ceil(1.1) = 2 worst -> (0 + 1) / 2
    assert client_distribution(np.arange(11.0))["worst10_mean"] == 0.5
    assert math.isnan(client_distribution([-1.0, 1.0])["gini"])


# --- items ---------------------------------------------------------------------------------


def test_coverage_by_hand():
    assert coverage_at_k(TOP_K, 5) == 3 / 5  # items {0, 1, 2}
    assert coverage_at_k(TOP_K, 5, k=1) == 2 / 5  # first column: {0, 1}


def test_long_tail_share_by_hand_and_ties():
    # head = ceil(0.2 * 5) = 1 item: {0}; slots 0,1,1,2,0,1 -> 4 of 6 in the tail
    assert long_tail_share(TOP_K, ITEM_COUNTS) == pytest.approx(4 / 6)
    # head = 2 items: item 0, then items 1 and 2 tie at 10 -> item 1 (lower index).
    # Tail slots: only the one item-2 slot -> 1 / 6
    assert long_tail_share(TOP_K, ITEM_COUNTS, head_share=0.4) == pytest.approx(1 / 6)
    assert long_tail_share(TOP_K, ITEM_COUNTS, head_share=0.4, k=1) == 0.0  # items 0, 1, 0


def test_exposure_gini_by_hand():
    # counts [2, 3, 1, 0, 0]: sorted 0,0,1,2,3 weighted by 2i-n-1 = -4,-2,0,2,4 -> 16 / (5*6)
    assert exposure_gini(TOP_K, 5) == pytest.approx(16 / 30)
    assert exposure_gini(np.array([[0, 1], [2, 3]]), 4) == 0.0  # each item exactly once


def test_item_metric_registry():
    assert get_item_metric("coverage@1")(TOP_K, ITEM_COUNTS) == 2 / 5
    assert get_item_metric("Long_Tail_Share@2")(TOP_K, ITEM_COUNTS) == pytest.approx(4 / 6)
    assert get_item_metric("exposure_gini@2")(TOP_K, ITEM_COUNTS) == pytest.approx(16 / 30)
    for bad in ("coverage", "coverage@0", "ndcg@10", "gini@x"):
        with pytest.raises(ValueError, match="unknown item metric"):
            get_item_metric(bad)
    with pytest.raises(ValueError, match="k=5"):  # K mismatch: asks for more than the lists hold
        get_item_metric("coverage@5")(TOP_K, ITEM_COUNTS)


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: activity_groups([]), "non-empty"),
        (lambda: activity_groups([3, -1]), "non-negative"),
        (lambda: activity_groups([3, 1], top_share=0), "share"),
        (lambda: activity_groups([3, 1], top_share=1.0), "share"),
        (lambda: attribute_groups([]), "non-empty"),
        (lambda: age_bucket(-1), "non-negative"),
        (lambda: age_bucket("old"), "number"),
        (lambda: group_gap([], np.array([], dtype=bool)), "non-empty"),
        (lambda: group_gap([1.0, 0.0], np.array([1, 0])), "bool mask"),
        (lambda: group_gap([1.0, 0.0], np.array([True])), "bool mask"),
        (lambda: group_gap([1.0, float("nan")], np.array([True, False])), "finite"),
        (lambda: groups_summary([1.0, 0.0], {"a": [0, 2]}), "user indices"),
        (lambda: groups_summary([1.0, 0.0], {"a": [0, 0]}), "twice"),
        (lambda: gini([]), "non-empty"),
        (lambda: gini([1, -1]), "non-negative"),
        (lambda: client_distribution([]), "non-empty"),
        (lambda: client_distribution([1.0, 2.0], weights=[1.0]), "weights"),
        (lambda: client_distribution([1.0, 2.0], weights=[0, 0]), "weights"),
        (lambda: coverage_at_k(np.zeros((0, 2), dtype=int), 5), "non-empty"),
        (lambda: coverage_at_k(np.array([0, 1]), 5), r"\[n_users, K\]"),
        (lambda: coverage_at_k(TOP_K, 5, k=3), "k=3"),
        (lambda: coverage_at_k(TOP_K, 2), r"\[0, 2\)"),
        (lambda: coverage_at_k(TOP_K, 0), "num_items"),
        (lambda: coverage_at_k(TOP_K.astype(float), 5), "integer"),
        (lambda: coverage_at_k(np.array([[1, 1]]), 5), "twice"),
        (lambda: long_tail_share(TOP_K, [5, 1, -2, 0, 0]), "non-negative"),
        (lambda: long_tail_share(TOP_K, [5, 1]), r"\[0, 2\)"),
        (lambda: exposure_gini(np.array([[-1, 0]]), 5), r"\[0, 5\)"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
