"""Which users each client (organisation or device) holds.

A partition is a list, one entry per client, of split-row indices (0..split.num_users-1).
flwr-datasets partitioners do the assignment where their semantics fit (IID shards,
natural ids, Dirichlet over labels); users are wrapped as a small ``datasets.Dataset`` of
rows for them. Clustering users by taste, which they do not offer, is plain numpy.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

from common.data.assemble import MISSING_ATTRIBUTE
from common.data.types import DataError, LeaveOneOutSplit

SCHEMES = ("iid", "attribute", "dirichlet", "cross_device")


def partition_users(
    split: LeaveOneOutSplit | int,
    scheme: str,
    num_clients: int | None = None,
    seed: int = 0,
    attributes: pd.DataFrame | None = None,
    attribute: str | None = None,
    alpha: float = 0.5,
    num_clusters: int = 10,
    train_sequences: Sequence[np.ndarray] | None = None,
    num_items: int | None = None,
) -> list[np.ndarray]:
    """Assign every split row to exactly one client; deterministic given ``seed``.

    ``split`` is a ``LeaveOneOutSplit`` (then ``attributes`` is ``data.user_attributes``,
    indexed by ``InteractionData`` user, and is restricted to ``split.users`` here) or a
    user count ``n`` (then ``attributes`` rows are the split rows, and ``dirichlet`` needs
    ``train_sequences`` and ``num_items``). Schemes:

    - ``iid``: a random permutation cut into ``num_clients`` near-equal shards.
    - ``attribute``: one client per distinct value of ``attribute`` (sorted; see
      ``attribute_values``); ``num_clients`` must be None or that count.
    - ``dirichlet``: users clustered by taste, each cluster spread over clients with
      Dirichlet(``alpha``) shares — small alpha, skewed silos; every client non-empty.
    - ``cross_device``: one client per user (client i holds row i).
    """
    n = split.num_users if isinstance(split, LeaveOneOutSplit) else int(split)
    if scheme not in SCHEMES:
        raise DataError(f"unknown partition scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if n < 1:
        raise DataError("no users to partition")
    if scheme == "attribute":
        values = _attribute_column(split, n, attributes, attribute)
        uniques = sorted(set(values))
        if num_clients is not None and num_clients != len(uniques):
            raise DataError(
                f"attribute {attribute!r} has {len(uniques)} values, so it makes "
                f"{len(uniques)} clients, not num_clients={num_clients} (set it to null)"
            )
        return _natural_id(values)
    if scheme == "cross_device":
        if num_clients is not None and num_clients != n:
            raise DataError(f"cross_device makes one client per user ({n}), not {num_clients}")
        return [np.array([i], dtype=np.int64) for i in range(n)]
    if num_clients is None or not 1 <= num_clients <= n:
        raise DataError(f"{scheme} needs 1 <= num_clients <= number of users ({n}), got {num_clients}")
    if scheme == "iid":
        return _iid(n, num_clients, seed)

    if isinstance(split, LeaveOneOutSplit):
        train_sequences, num_items = split.train, split.num_items
    if train_sequences is None or num_items is None:
        raise DataError("dirichlet partition needs users' training sequences and num_items")
    if alpha <= 0:
        raise DataError(f"dirichlet alpha must be > 0, got {alpha}")
    labels = cluster_users(train_sequences, num_items, min(num_clusters, n), seed)
    return _dirichlet(labels, num_clients, alpha, seed)


def attribute_values(split: LeaveOneOutSplit | int, attributes: pd.DataFrame, attribute: str) -> list[str]:
    """The attribute value each ``attribute``-scheme client holds, in client order."""
    n = split.num_users if isinstance(split, LeaveOneOutSplit) else int(split)
    return sorted(set(_attribute_column(split, n, attributes, attribute)))


def cluster_users(train_sequences: Sequence[np.ndarray], num_items: int, num_clusters: int, seed: int) -> np.ndarray:
    """Taste clusters: k-means on a truncated SVD of users' training item histograms.

    Works from the interaction lists directly (no dense user×item matrix), so it scales
    to large catalogues. Rows are normalised by history length so heavy users do not
    dominate; the result is deterministic given ``seed``.
    """
    n = len(train_sequences)
    lengths = np.array([len(s) for s in train_sequences])
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in train_sequences])
    owner = np.repeat(np.arange(n), lengths)
    weight = 1.0 / np.sqrt(np.maximum(lengths, 1))[owner]

    def x_times(m: np.ndarray) -> np.ndarray:  # (n_items, r) -> (n_users, r)
        out = np.zeros((n, m.shape[1]))
        np.add.at(out, owner, m[items] * weight[:, None])
        return out

    def xt_times(m: np.ndarray) -> np.ndarray:  # (n_users, r) -> (n_items, r)
        out = np.zeros((num_items, m.shape[1]))
        np.add.at(out, items, m[owner] * weight[:, None])
        return out

    rng = np.random.default_rng(seed)
    rank = max(1, min(16, n, num_items))
    q, _ = np.linalg.qr(x_times(rng.standard_normal((num_items, rank + 8))))
    for _ in range(2):  # power iterations sharpen the leading subspace
        q, _ = np.linalg.qr(x_times(xt_times(q)))
    u, s, _ = np.linalg.svd(xt_times(q).T, full_matrices=False)
    emb = (q @ u)[:, :rank] * s[:rank]
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return _kmeans(emb, num_clusters, rng)


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 50) -> np.ndarray:
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):  # k-means++ seeding: spread-out starts, fewer bad local optima
        d = np.min(((x[:, None] - np.array(centers)[None]) ** 2).sum(-1), axis=1)
        p = d / d.sum() if d.sum() > 0 else np.full(len(x), 1 / len(x))
        centers.append(x[rng.choice(len(x), p=p)])
    centers = np.array(centers)
    labels = np.full(len(x), -1)
    for _ in range(iters):
        dist = ((x[:, None] - centers[None]) ** 2).sum(-1)
        new = dist.argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = x[labels == c]
            # An emptied cluster restarts at the worst-served point rather than vanishing.
            centers[c] = members.mean(0) if len(members) else x[dist.min(1).argmax()]
    return labels


def _attribute_column(split, n, attributes, attribute) -> list[str]:
    if attributes is None or attribute is None:
        raise DataError("attribute partition needs user attributes and an attribute name")
    if attribute not in attributes.columns:
        raise DataError(
            f"unknown user attribute {attribute!r}; this data set has: "
            f"{', '.join(map(str, attributes.columns)) or 'none'}"
        )
    col = attributes[attribute]
    if isinstance(split, LeaveOneOutSplit):
        col = col.loc[split.users]
    if len(col) != n:
        raise DataError(f"attributes have {len(col)} rows for {n} users")
    # Strings, so silos are named alike whatever the source dtype, and no value is missing.
    return [MISSING_ATTRIBUTE if pd.isna(v) else str(v) for v in col]


def _rows_dataset(**columns):
    from datasets import Dataset  # heavy import, only when partitioning

    return Dataset.from_dict(columns)


def _iid(n: int, num_clients: int, seed: int) -> list[np.ndarray]:
    from flwr_datasets.partitioner import IidPartitioner

    # IidPartitioner cuts contiguous shards; the seeded permutation makes them random.
    perm = np.random.default_rng(seed).permutation(n)
    part = IidPartitioner(num_partitions=num_clients)
    part.dataset = _rows_dataset(row=perm)
    return [np.sort(np.asarray(part.load_partition(c)["row"], dtype=np.int64)) for c in range(num_clients)]


def _natural_id(values: list[str]) -> list[np.ndarray]:
    from flwr_datasets.partitioner import NaturalIdPartitioner

    part = NaturalIdPartitioner(partition_by="value")
    part.dataset = _rows_dataset(row=np.arange(len(values)), value=values)
    # It draws a tqdm progress bar on stderr; in a run log that is noise, so swallow it.
    with contextlib.redirect_stderr(io.StringIO()):
        return [np.asarray(part.load_partition(c)["row"], dtype=np.int64) for c in range(part.num_partitions)]


def _dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    from flwr_datasets.partitioner import DirichletPartitioner

    # min_partition_size=0 and self-balancing off: one draw, no retry loop that could give up
    # after ten tries; empty clients are repaired below instead.
    part = DirichletPartitioner(
        num_partitions=num_clients,
        partition_by="cluster",
        alpha=float(alpha),
        min_partition_size=0,
        self_balancing=False,
        shuffle=False,
        seed=seed,
    )
    part.dataset = _rows_dataset(row=np.arange(len(labels)), cluster=labels.astype(np.int64))
    clients = [list(part.load_partition(c)["row"]) for c in range(num_clients)]
    for c in range(num_clients):
        if not clients[c]:  # every client must hold someone: take one user from the largest
            donor = max(range(num_clients), key=lambda j: (len(clients[j]), -j))
            clients[c].append(clients[donor].pop())
    return [np.sort(np.asarray(c, dtype=np.int64)) for c in clients]
