"""Synthetic data: deterministic, well-formed, and carrying signal a text model can use."""

from __future__ import annotations

import numpy as np
import pytest

from common.data import DataError, leave_one_out, load_dataset, make_synthetic


@pytest.fixture(scope="module")
def default_data():
    return make_synthetic()


def test_same_seed_same_data_other_seed_differs():
    a, b = make_synthetic(200, 120, seed=5), make_synthetic(200, 120, seed=5)
    c = make_synthetic(200, 120, seed=6)
    assert a.item_text == b.item_text and a.stats == b.stats
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    assert all(np.array_equal(x, y) for x, y in zip(a.timestamps, b.timestamps))
    assert a.user_attributes.equals(b.user_attributes)
    assert a.item_text != c.item_text
    assert [len(s) for s in a.sequences] != [len(s) for s in c.sequences]


def test_shape_and_invariants(default_data):
    d = default_data
    assert (d.num_users, d.num_items) == (600, 400)
    lengths = np.array([len(s) for s in d.sequences])
    assert lengths.min() >= 5 and 20 < lengths.mean() < 40
    assert lengths.max() > 3 * np.median(lengths)  # long tail
    for s, t, r in zip(d.sequences, d.timestamps, d.ratings):
        assert len(np.unique(s)) == len(s)  # no repeated (user, item)
        assert np.all(np.diff(t) >= 0) and len(t) == len(s) == len(r)
        assert s.min() >= 0 and s.max() < d.num_items
    assert set(d.user_attributes.columns) >= {"gender", "age", "region"}
    assert set(d.user_attributes["gender"]) == {"F", "M"}
    assert len(set(d.item_text)) > 0.95 * d.num_items


def test_text_carries_topic_words(default_data):
    d = default_data
    names, topic = d.stats["topic_names"], d.stats["item_topic"]
    from common.data.synthetic import TOPICS

    own = [sum(w.strip(".,").lower() in TOPICS[names[t]] for w in text.split()) for text, t in zip(d.item_text, topic)]
    assert np.mean(own) >= 4  # most of the five content words are the topic's own


def test_popularity_is_skewed(default_data):
    counts = np.sort(np.bincount(np.concatenate(default_data.sequences), minlength=400))[::-1]
    # uniform popularity would give each tenth of the catalogue 10 % of the interactions
    assert counts[:40].sum() > 0.25 * counts.sum() and counts[-40:].sum() < 0.05 * counts.sum()


def test_order_is_informative(default_data):
    topic = np.array(default_data.stats["item_topic"])
    same_next = np.mean([np.mean(topic[s[1:]] == topic[s[:-1]]) for s in default_data.sequences])
    share = np.bincount(topic[np.concatenate(default_data.sequences)]) / sum(map(len, default_data.sequences))
    assert same_next > 2 * np.sum(share**2)  # far above what shuffled histories would give


def _hr_at_10(split, scores_for_row) -> float:
    hits = 0
    for row in range(split.num_users):
        scores = np.asarray(scores_for_row(row), dtype=float).copy()
        scores[split.train[row]] = -np.inf  # full ranking excludes the user's training items
        hits += int((scores > scores[split.test[row]]).sum() < 10)
    return hits / split.num_users


def test_topic_oracle_and_bag_of_words_beat_popularity(default_data):
    d = default_data
    s = leave_one_out(d)
    topic = np.array(d.stats["item_topic"])
    pop = np.bincount(np.concatenate(s.train), minlength=d.num_items).astype(float)
    tie_break = 0.5 * pop / pop.max()
    hr_pop = _hr_at_10(s, lambda r: pop)
    hr_oracle = _hr_at_10(s, lambda r: np.bincount(topic[s.train[r]], minlength=topic.max() + 1)[topic] + tie_break)

    # No hidden topics here: only the words, as a text encoder would see them.
    vocab: dict[str, int] = {}
    words = [[vocab.setdefault(w.strip(".,").lower(), len(vocab)) for w in t.split()] for t in d.item_text]
    x = np.zeros((d.num_items, len(vocab)))
    for i, w in enumerate(words):
        x[i, w] = 1.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    hr_words = _hr_at_10(s, lambda r: x @ x[s.train[r]].sum(0))

    assert hr_oracle > 2 * hr_pop and hr_oracle - hr_pop > 0.1, (hr_oracle, hr_pop)
    assert hr_words > 1.5 * hr_pop, (hr_words, hr_pop)


def test_load_dataset_synthetic_and_bad_topics():
    assert load_dataset("synthetic", num_users=30, num_items=40, seed=1).num_users == 30
    with pytest.raises(DataError, match="num_topics"):
        make_synthetic(num_topics=99)
