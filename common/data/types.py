"""The internal form every data source maps onto, and the leave-one-out split of it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


class DataError(ValueError):
    """Bad input data. The message is one line and names the file, line, field or value."""


@dataclass
class InteractionData:
    """A loaded data set in internal form.

    Items and users are numbered 0..n-1 in order of first appearance in the source files;
    ``item_ids`` / ``user_ids`` keep the original ids (as strings) for output.
    ``sequences[u]`` holds user u's item indices in time order; equal timestamps keep the
    order of the input file (stable sort), never re-sorted by item id.
    """

    name: str
    item_ids: list[str]
    item_text: list[str]
    user_ids: list[str]
    sequences: list[np.ndarray]  # int64 item indices per user, time order
    timestamps: list[np.ndarray]  # int64 seconds per user, aligned with sequences
    ratings: list[np.ndarray] | None = None  # float32 per user, aligned, when the source has them
    user_attributes: pd.DataFrame | None = None  # index = user index 0..n-1, attribute columns
    stats: dict = field(default_factory=dict)  # counts worth logging (rows read, users dropped…)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


@dataclass
class LeaveOneOutSplit:
    """Per user: training prefix, validation item (second to last), test item (last).

    Only users with at least 3 interactions are kept; ``users`` maps split rows back to
    ``InteractionData`` user indices.
    """

    users: np.ndarray  # int64 user indices kept, shape [n]
    train: list[np.ndarray]  # item indices per kept user, time order
    valid: np.ndarray  # int64 [n]
    test: np.ndarray  # int64 [n]
    num_items: int
    stats: dict = field(default_factory=dict)  # users_dropped, test_timestamp_tied_share, …

    @property
    def num_users(self) -> int:
        return len(self.users)
