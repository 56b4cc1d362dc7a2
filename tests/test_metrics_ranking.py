"""Ranking metrics, ranks under both protocols, negative sampling and metric aggregation."""

import math

import numpy as np
import pytest

from common.metrics.ranking import (
    DEFAULT_METRICS,
    MetricSums,
    full_ranks,
    get_metric,
    hit_rate,
    mrr,
    ndcg,
    sample_negatives,
    sampled_ranks,
)

# One user, five items, worked by hand. Item 1 and item 3 tie at the top.
#   item:   0    1    2    3    4
SCORES = [0.1, 0.9, 0.5, 0.9, 0.3]


def ranks_of(target, exclude=None, scores=SCORES):
    return int(full_ranks(np.array([scores]), [target], None if exclude is None else [exclude])[0])


# --- metric functions ----------------------------------------------------------------------


def test_metric_values_by_hand():
    r = np.array([0, 1, 2, 4, 5, 9, 20])  # rank 4 is the last inside k=5, rank 5 the first out
    assert hit_rate(r, 5).tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert hit_rate(r, 1).tolist() == [1, 0, 0, 0, 0, 0, 0]
    # 1/log2(r+2): r=0 -> 1, r=1 -> 1/log2(3), r=2 -> 1/2, r=4 -> 1/log2(6); 0 from r=k on
    expected = [1.0, 1 / math.log2(3), 0.5, 1 / math.log2(6), 0.0, 0.0, 0.0]
    np.testing.assert_allclose(ndcg(r, 5), expected)
    np.testing.assert_allclose(ndcg(r, 10)[5], 1 / math.log2(11))
    np.testing.assert_allclose(mrr(r), [1, 1 / 2, 1 / 3, 1 / 5, 1 / 6, 1 / 10, 1 / 21])


def test_get_metric_by_name():
    r = np.array([0, 3, 7, 12])
    np.testing.assert_array_equal(get_metric("hr@10")(r), hit_rate(r, 10))
    np.testing.assert_array_equal(get_metric("NDCG@5")(r), ndcg(r, 5))
    np.testing.assert_array_equal(get_metric("mrr")(r), mrr(r))
    for name in DEFAULT_METRICS:
        assert get_metric(name)(r).shape == (4,)


@pytest.mark.parametrize("name", ["recall@10", "ndcg", "mrr@10", "hr@0", "hr@", ""])
def test_get_metric_unknown_names_the_name_and_the_known_ones(name):
    with pytest.raises(ValueError) as e:
        get_metric(name)
    assert repr(name) in str(e.value) and "ndcg@K" in str(e.value) and "mrr" in str(e.value)


def test_metrics_reject_bad_ranks():
    with pytest.raises(ValueError):
        mrr(np.array([0, -1]))
    with pytest.raises(ValueError):
        mrr(np.array([0.5]))


# --- full ranking --------------------------------------------------------------------------


def test_full_ranks_by_hand():
    assert ranks_of(2) == 2  # items 1 and 3 score higher
    assert ranks_of(0) == 4  # everything else is higher
    assert ranks_of(2, exclude=[1]) == 1  # excluded item 1 no longer competes
    assert ranks_of(2, exclude=[0, 4]) == 2  # excluding lower items changes nothing
    assert ranks_of(2, exclude=[1, 1, 3]) == 0  # duplicates count once


def test_ties_count_against_the_target():
    assert ranks_of(1) == 1  # item 3 ties with item 1: pessimistic
    assert ranks_of(3) == 1
    assert ranks_of(1, exclude=[3]) == 0
    # A constant scorer ranks every target last among its candidates.
    assert ranks_of(2, scores=[0.0] * 5) == 4
    assert ranks_of(2, exclude=[0], scores=[0.0] * 5) == 3


def test_target_is_never_excluded():
    assert ranks_of(2, exclude=[2]) == 2
    assert ranks_of(2, exclude=[1, 2]) == 1


def test_full_ranks_batch_torch_and_nan():
    torch = pytest.importorskip("torch")
    scores = np.array([SCORES, [0.5, 0.4, 0.3, 0.2, 0.1], [np.nan, 1.0, 2.0, 3.0, 4.0]])
    targets = [2, 4, 0]
    exclude = [np.array([1]), np.array([], dtype=np.int64), [4]]
    want = [1, 4, 3]  # NaN counts as the lowest score: target 0 is last among 4 candidates
    assert full_ranks(scores, targets, exclude).tolist() == want
    assert full_ranks(torch.tensor(scores), torch.tensor(targets), exclude).tolist() == want
    assert full_ranks(scores, targets).tolist() == [2, 4, 4]


def test_full_ranks_shape_errors():
    with pytest.raises(ValueError):
        full_ranks(np.zeros((2, 5)), [0])
    with pytest.raises(ValueError):
        full_ranks(np.zeros((1, 5)), [5])
    with pytest.raises(ValueError):
        full_ranks(np.zeros((1, 5)), [0], [[7]])


# --- sampled ranking -----------------------------------------------------------------------


def test_sampled_ranks_by_hand():
    s = np.array([SCORES, SCORES])
    neg = np.array([[0, 1, 4], [3, 4, -1]])  # -1 is padding and is skipped
    assert sampled_ranks(s, [2, 1], neg).tolist() == [1, 1]  # user 2: item 3 ties -> counts
    with pytest.raises(ValueError, match="target"):
        sampled_ranks(s, [0, 1], neg)  # user 0's negatives contain its target 0


def test_negatives_never_seen_distinct_and_deterministic():
    rng = np.random.default_rng(1)
    num_items = 300
    seen = [rng.choice(num_items, size=n, replace=False) for n in (1, 20, 150, 250, 299, 300)]
    neg = sample_negatives(num_items, seen, num=99, seed=7)
    assert neg.shape == (6, 99) and neg.dtype == np.int64
    for s, row in zip(seen, neg):
        real = row[row >= 0]
        assert len(real) == min(99, num_items - len(s))  # dense users: what is left, padded
        assert (row[len(real) :] == -1).all()
        assert not np.isin(real, s).any() and len(np.unique(real)) == len(real)
    np.testing.assert_array_equal(neg, sample_negatives(num_items, seen, num=99, seed=7))
    assert not np.array_equal(neg, sample_negatives(num_items, seen, num=99, seed=8))
    # A user who has seen every item is ranked against nothing: rank 0.
    scores = np.zeros((1, num_items))
    assert sampled_ranks(scores, [0], neg[5:6]).tolist() == [0]


def test_negatives_do_not_depend_on_which_client_holds_the_user():
    seen = [[0, 1], [2, 3], [4, 5]]
    everyone = sample_negatives(50, seen, num=10, seed=3, user_keys=[100, 101, 102])
    one = sample_negatives(50, seen[1:2], num=10, seed=3, user_keys=[101])
    np.testing.assert_array_equal(everyone[1], one[0])


def test_negatives_are_uniform_over_unseen_items():
    n_users, num_items, num = 2000, 50, 5
    seen = [np.arange(10)] * n_users
    counts = np.bincount(sample_negatives(num_items, seen, num=num, seed=0).ravel(), minlength=50)
    assert counts[:10].sum() == 0
    expected = n_users * num / 40  # 250 per unseen item; sd ~15
    assert np.all(np.abs(counts[10:] - expected) < 6 * math.sqrt(expected))


# --- aggregation ---------------------------------------------------------------------------


def test_metric_sums_means_by_hand():
    m = MetricSums(["hr@1", "ndcg@5", "mrr"]).add([0, 2, 9])
    means = m.means()
    assert means["hr@1"] == pytest.approx(1 / 3)
    assert means["ndcg@5"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert means["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 10) / 3)
    assert m.to_dict()["count"] == 3


def test_merge_of_halves_equals_whole_and_federated_mean_is_exact():
    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 500, size=1001)
    sampled = rng.integers(0, 100, size=1001)
    whole = MetricSums().add(ranks).add(sampled, prefix="sampled_")

    a = MetricSums().add(ranks[:300]).add(sampled[:300], prefix="sampled_")
    b = MetricSums().add(ranks[300:]).add(sampled[300:], prefix="sampled_")
    assert (a + b).to_dict() == pytest.approx(whole.to_dict())
    assert a.merge(b).means() == pytest.approx(whole.means())

    # Clients of very different sizes send flat dicts; sum/count is the user-weighted mean.
    cuts = [0, 3, 10, 700, 1001]
    records = [
        MetricSums().add(ranks[i:j]).add(sampled[i:j], prefix="sampled_").to_dict() for i, j in zip(cuts, cuts[1:])
    ]
    for rec in records:
        assert all(isinstance(v, (int, float)) for v in rec.values())
    agg = MetricSums.aggregate(records)
    assert sum(MetricSums.from_dict(r) for r in records).means() == pytest.approx(agg.means())
    means = agg.means()
    for name in DEFAULT_METRICS:
        assert means[name] == pytest.approx(get_metric(name)(ranks).mean(), rel=1e-12)
        want = get_metric(name)(sampled).mean()
        assert means["sampled_" + name] == pytest.approx(want, rel=1e-12)
    assert agg.to_dict()["count"] == 1001 and agg.to_dict()["sampled_count"] == 1001


def test_metric_sums_round_trip_and_foreign_keys():
    m = MetricSums().add([0, 5, 30]).add([1, 2], prefix="sampled_")
    d = m.to_dict()
    assert MetricSums.from_dict(d) == m
    noisy = {**d, "train_loss": 0.7, "num_examples": 12, "discount": 3}
    assert MetricSums.from_dict(noisy) == m


def test_merge_refuses_different_metric_sets():
    with pytest.raises(ValueError):
        MetricSums(["hr@10"]).add([1]).merge(MetricSums(["mrr"]).add([1]))
    with pytest.raises(ValueError):
        MetricSums(["hr@10"]).add([1]).merge(MetricSums(["hr@10"]).add([1], prefix="sampled_"))
    with pytest.raises(ValueError):
        MetricSums(["hr@10", "bogus"])
