"""Client partitions: every user in exactly one client, deterministic, skew where asked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.data import (
    DataError,
    attribute_values,
    cluster_users,
    leave_one_out,
    make_synthetic,
    partition_users,
)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(num_users=240, num_items=160, mean_interactions=20, seed=2)


@pytest.fixture(scope="module")
def split(data):
    return leave_one_out(data)


def assert_exact_cover(parts, n):
    assert all(len(p) > 0 for p in parts)
    allrows = np.concatenate(parts)
    assert len(allrows) == n and np.array_equal(np.sort(allrows), np.arange(n))


CASES = [
    ("iid", dict(num_clients=7)),
    ("dirichlet", dict(num_clients=6, alpha=0.3, num_clusters=8)),
    ("cross_device", dict()),
]


@pytest.mark.parametrize("scheme, kw", CASES)
def test_cover_and_determinism(split, scheme, kw):
    a = partition_users(split, scheme, seed=4, **kw)
    b = partition_users(split, scheme, seed=4, **kw)
    assert_exact_cover(a, split.num_users)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    if scheme != "cross_device":
        c = partition_users(split, scheme, seed=5, **kw)
        assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_sizes_are_equal_ish(split):
    sizes = [len(p) for p in partition_users(split, "iid", 7, seed=0)]
    assert len(sizes) == 7 and max(sizes) - min(sizes) <= 1


def test_cross_device_is_one_user_per_client(split):
    parts = partition_users(split, "cross_device")
    assert [p.tolist() for p in parts] == [[i] for i in range(split.num_users)]
    assert len(partition_users(5, "cross_device", num_clients=5)) == 5


def test_attribute_groups_by_value(data, split):
    parts = partition_users(split, "attribute", attributes=data.user_attributes, attribute="region")
    names = attribute_values(split, data.user_attributes, "region")
    regions = data.user_attributes["region"].to_numpy()[split.users]
    assert names == sorted(set(regions)) and len(parts) == len(names)
    assert_exact_cover(parts, split.num_users)
    for name, rows in zip(names, parts):
        assert set(regions[rows]) == {name}


def test_attribute_with_a_user_count_and_missing_values():
    attrs = pd.DataFrame({"org": ["x", None, "y", "x"]})
    parts = partition_users(4, "attribute", attributes=attrs, attribute="org")
    assert [p.tolist() for p in parts] == [[1], [0, 3], [2]]  # "unknown" < "x" < "y"


def test_dirichlet_skew_grows_as_alpha_shrinks(split):
    labels = cluster_users(split.train, split.num_items, 8, seed=0)
    overall = np.bincount(labels, minlength=8) / len(labels)

    def mean_tv(alpha):  # mean total-variation distance of each client's cluster mix to overall
        tvs = []
        for seed in range(3):
            for rows in partition_users(split, "dirichlet", 6, seed=seed, alpha=alpha, num_clusters=8):
                mix = np.bincount(labels[rows], minlength=8) / len(rows)
                tvs.append(0.5 * np.abs(mix - overall).sum())
        return np.mean(tvs)

    low, high = mean_tv(0.05), mean_tv(100.0)
    assert low > 0.4 and high < 0.2 and low > 2 * high, (low, high)


def test_dirichlet_with_tiny_alpha_still_fills_every_client(split):
    for seed in range(3):
        assert_exact_cover(partition_users(split, "dirichlet", 20, seed=seed, alpha=0.01), split.num_users)


def test_clusters_follow_taste(data, split):
    labels = cluster_users(split.train, split.num_items, 8, seed=0)
    topic = np.array(data.stats["item_topic"])
    dominant = np.array([np.bincount(topic[t], minlength=8).argmax() for t in split.train])
    purity = sum(np.bincount(dominant[labels == c]).max() for c in np.unique(labels)) / len(labels)
    assert purity > 0.6  # chance would be about 0.2


@pytest.mark.parametrize(
    "args, kw, expected",
    [
        (("roundrobin", 3), {}, "unknown partition scheme 'roundrobin'"),
        (("iid", 10_000), {}, "num_clients"),
        (("iid", None), {}, "num_clients"),
        (("attribute",), dict(attribute="planet"), "unknown user attribute 'planet'"),
        (("attribute", 3), dict(attribute="region"), "has 5 values"),
        (("cross_device", 3), {}, "one client per user"),
        (("dirichlet", 4), dict(alpha=0.0), "alpha"),
    ],
)
def test_bad_requests(data, split, args, kw, expected):
    with pytest.raises(DataError, match=expected):
        partition_users(split, *args, attributes=data.user_attributes, **kw)


def test_dirichlet_from_a_user_count_needs_sequences():
    with pytest.raises(DataError, match="training sequences"):
        partition_users(10, "dirichlet", 2)
    seqs = [np.array([i % 5, (i + 1) % 5]) for i in range(10)]
    assert_exact_cover(partition_users(10, "dirichlet", 2, train_sequences=seqs, num_items=5), 10)
