"""Turn per-row interaction columns into ``InteractionData``.

Every loader (MovieLens, generic folder) ends here, so the ordering contract (stable by timestamp, ties in file order)
("equal timestamps keep the order of the input file") is implemented exactly once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.data.types import InteractionData

MISSING_ATTRIBUTE = "unknown"


def assemble(
    name: str,
    item_ids: list[str],
    item_text: list[str],
    row_users: np.ndarray,
    row_items: np.ndarray,
    row_timestamps: np.ndarray,
    row_ratings: np.ndarray | None = None,
    user_attributes: pd.DataFrame | None = None,
    stats: dict | None = None,
) -> InteractionData:
    """Group rows (in input-file order) into per-user, time-ordered sequences.

    ``row_users`` holds original user ids as strings; users are numbered in order of first
    appearance in the rows. ``row_items`` are item indices into ``item_ids``.
    ``user_attributes`` is indexed by original user id; users it lacks get
    ``"unknown"`` in every column (counted in ``stats["users_without_attributes"]``) so that
    fairness groups and attribute partitions never meet a missing value.
    """
    n = len(row_items)
    codes, uniques = pd.factorize(np.asarray(row_users, dtype=object), sort=False)
    row_items = np.asarray(row_items, dtype=np.int64)
    row_timestamps = np.asarray(row_timestamps, dtype=np.int64)
    # The row number as the last tie-breaker makes the sort stable by construction, whatever
    # lexsort's algorithm: ties in (user, timestamp) keep file order, never item-id order.
    order = np.lexsort((np.arange(n), row_timestamps, codes))
    bounds = np.cumsum(np.bincount(codes, minlength=len(uniques)))[:-1]

    def per_user(values: np.ndarray) -> list[np.ndarray]:
        # np.split of an empty array yields one empty piece; zero users must mean zero pieces.
        return np.split(values[order], bounds) if len(uniques) else []

    sequences = per_user(row_items)
    timestamps = per_user(row_timestamps)
    ratings = None
    if row_ratings is not None:
        ratings = per_user(np.asarray(row_ratings, dtype=np.float32))

    user_ids = [str(u) for u in uniques]
    pairs = codes.astype(np.int64) * len(item_ids) + row_items
    stats = dict(stats or {})
    stats.update(
        interactions=int(n),
        users=len(user_ids),
        items=len(item_ids),
        items_without_interactions=int(len(item_ids) - len(np.unique(row_items))),
        # Repeated (user, item) pairs are kept (re-purchases are real); logged because a
        # repeated test item is also a training item and full ranking excludes those.
        repeat_interactions=int(n - len(np.unique(pairs))),
    )

    attrs = None
    if user_attributes is not None:
        missing = ~pd.Index(user_ids, dtype=object).isin(user_attributes.index)
        stats["users_without_attributes"] = int(missing.sum())
        attrs = user_attributes.reindex(pd.Index(user_ids, dtype=object))
        if missing.any():
            attrs = attrs.astype(object).where(attrs.notna(), MISSING_ATTRIBUTE)
        attrs = attrs.reset_index(drop=True)

    return InteractionData(
        name=name,
        item_ids=list(item_ids),
        item_text=list(item_text),
        user_ids=user_ids,
        sequences=sequences,
        timestamps=timestamps,
        ratings=ratings,
        user_attributes=attrs,
        stats=stats,
    )
