"""Leave-one-out by time, the evaluation protocol (README)."""

from __future__ import annotations

import numpy as np

from common.data.types import InteractionData, LeaveOneOutSplit

MIN_INTERACTIONS = 3  # one training item at least, plus validation and test


def leave_one_out(data: InteractionData) -> LeaveOneOutSplit:
    """Per user: last interaction = test, second to last = validation, the rest = training.

    Sequences are taken as they are: loaders already put them in time order with a stable
    sort, so re-sorting here could only break the file-order tie rule. Users with fewer than
    3 interactions are dropped and counted (``stats["users_dropped"]``), as the run log
    must report. ``stats["test_timestamp_tied_share"]`` is the share of kept users whose
    test item has the same timestamp as another of their items: with day-level logs the
    "last" item is then partly an accident of file order, which readers of a result need
    to know.
    """
    kept: list[int] = []
    train: list[np.ndarray] = []
    valid: list[int] = []
    test: list[int] = []
    tied = 0
    for u, seq in enumerate(data.sequences):
        if len(seq) < MIN_INTERACTIONS:
            continue
        kept.append(u)
        train.append(np.asarray(seq[:-2], dtype=np.int64))
        valid.append(int(seq[-2]))
        test.append(int(seq[-1]))
        ts = data.timestamps[u]
        tied += bool(np.any(ts[:-1] == ts[-1]))

    n = len(kept)
    stats = {
        "users": n,
        "users_dropped": data.num_users - n,
        "items": data.num_items,
        "interactions": int(sum(len(t) for t in train) + 2 * n),
        "train_interactions": int(sum(len(t) for t in train)),
        "test_timestamp_tied_share": tied / n if n else 0.0,
    }
    return LeaveOneOutSplit(
        users=np.asarray(kept, dtype=np.int64),
        train=train,
        valid=np.asarray(valid, dtype=np.int64),
        test=np.asarray(test, dtype=np.int64),
        num_items=data.num_items,
        stats=stats,
    )
