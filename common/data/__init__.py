"""Data: loaders onto one internal form, the leave-one-out split, and client partitions.

``load_dataset`` is what the config's ``dataset=`` group selects; everything else is
re-exported so callers import from ``common.data`` only.
"""

from __future__ import annotations

from pathlib import Path

from common.data.movielens import load_movielens_1m, load_movielens_100k
from common.data.partition import SCHEMES, attribute_values, cluster_users, partition_users
from common.data.split import leave_one_out
from common.data.synthetic import make_synthetic
from common.data.tabular import load_interaction_folder
from common.data.types import DataError, InteractionData, LeaveOneOutSplit

DATASETS = ("synthetic", "movielens_100k", "movielens_1m", "csv")

__all__ = [
    "DATASETS",
    "SCHEMES",
    "DataError",
    "InteractionData",
    "LeaveOneOutSplit",
    "attribute_values",
    "cluster_users",
    "leave_one_out",
    "load_dataset",
    "load_interaction_folder",
    "load_movielens_100k",
    "load_movielens_1m",
    "make_synthetic",
    "partition_users",
]


def load_dataset(name: str, path: str | Path | None = None, **synthetic_kwargs) -> InteractionData:
    """Load the data set a config names (``dataset=…`` with ``dataset.path=…``).

    ``synthetic_kwargs`` (num_users, num_items, num_topics, mean_interactions, seed) go
    to ``make_synthetic``; file-based sets take only a path, and a stray option is an
    error rather than silently ignored, since it usually means a mistyped override.
    """
    if name == "synthetic":
        return make_synthetic(**synthetic_kwargs)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if path is None:
        raise DataError(f"dataset={name} needs dataset.path=DIR (the folder holding its files)")
    extra = sorted(k for k, v in synthetic_kwargs.items() if v is not None)
    if extra:
        raise DataError(f"dataset={name} takes only a path; unexpected option(s): {', '.join(extra)}")
    loader = {
        "movielens_100k": load_movielens_100k,
        "movielens_1m": load_movielens_1m,
        "csv": load_interaction_folder,
    }[name]
    return loader(path)
