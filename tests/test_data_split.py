"""Leave-one-out by time: reconstruction, drops, and the tied-test-timestamp share."""

from __future__ import annotations

import numpy as np

from common.data import InteractionData, leave_one_out, make_synthetic


def hand_made() -> InteractionData:
    seqs = [[4, 1, 3, 0], [2, 5], [1, 2, 3], [0], [5, 4, 3, 2, 1]]
    times = [[1, 2, 3, 3], [5, 6], [7, 8, 9], [1], [1, 1, 2, 3, 4]]
    return InteractionData(
        name="hand",
        item_ids=[str(i) for i in range(6)],
        item_text=[f"item {i}" for i in range(6)],
        user_ids=["a", "b", "c", "d", "e"],
        sequences=[np.array(s, dtype=np.int64) for s in seqs],
        timestamps=[np.array(t, dtype=np.int64) for t in times],
    )


def test_hand_made_split():
    s = leave_one_out(hand_made())
    assert s.users.tolist() == [0, 2, 4]  # b and d have fewer than 3 interactions
    assert [t.tolist() for t in s.train] == [[4, 1], [1], [5, 4, 3]]
    assert s.valid.tolist() == [3, 2, 2]
    assert s.test.tolist() == [0, 3, 1]
    assert s.num_items == 6
    # only user a's test item (t=3) shares its timestamp; e's ties are earlier in the history
    assert s.stats["test_timestamp_tied_share"] == 1 / 3
    assert s.stats["users_dropped"] == 2
    assert (s.stats["users"], s.stats["items"], s.stats["interactions"]) == (3, 6, 12)


def test_split_reconstructs_every_kept_sequence():
    d = make_synthetic(num_users=120, num_items=80, mean_interactions=8, seed=3)
    s = leave_one_out(d)
    kept = set(s.users.tolist())
    assert len(kept) + s.stats["users_dropped"] == d.num_users
    for row, u in enumerate(s.users):
        rebuilt = np.concatenate([s.train[row], [s.valid[row], s.test[row]]])
        assert np.array_equal(rebuilt, d.sequences[u])
    assert all(len(d.sequences[u]) < 3 for u in range(d.num_users) if u not in kept)
    assert s.stats["interactions"] == sum(len(d.sequences[u]) for u in kept)
    tied = np.mean([np.any(d.timestamps[u][:-1] == d.timestamps[u][-1]) for u in s.users])
    assert s.stats["test_timestamp_tied_share"] == tied
