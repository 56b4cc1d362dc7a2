"""Writing data in the generic folder format: one folder per organisation, and the shared catalogue."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from common.data import InteractionData
from common.tracking.store import atomic_write


def _csv_text(header: list[str], rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_items(data: InteractionData, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "items.csv", _csv_text(["item_id", "text"], zip(data.item_ids, data.item_text)))


def write_interaction_folder(data: InteractionData, users: np.ndarray, folder: str | Path) -> Path:
    """Users ``users`` (data user indices) of ``data`` as a generic folder: interactions.csv,
    the full catalogue as items.csv, and users.csv when the data has attributes."""
    folder = Path(folder)
    write_items(data, folder)
    rows = []
    for u in users:
        ratings = data.ratings[u] if data.ratings is not None else None
        for j, (item, ts) in enumerate(zip(data.sequences[u], data.timestamps[u])):
            row = [data.user_ids[u], data.item_ids[item], int(ts)]
            if ratings is not None:
                row.append(float(ratings[j]))
            rows.append(row)
    header = ["user_id", "item_id", "timestamp"] + (["rating"] if data.ratings is not None else [])
    atomic_write(folder / "interactions.csv", _csv_text(header, rows))
    if data.user_attributes is not None:
        attrs = data.user_attributes
        cols = [str(c) for c in attrs.columns]
        atomic_write(
            folder / "users.csv",
            _csv_text(["user_id", *cols], ([data.user_ids[u], *attrs.iloc[int(u)].tolist()] for u in users)),
        )
    return folder


def split_for_deployment(data: InteractionData, orgs: list[str], out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Deal ``data``'s users at random over ``orgs`` (one generic folder each, under ``out``) and
    write the shared catalogue to ``out/catalogue/items.csv``; returns {org or "catalogue": folder}."""
    if not orgs or len(set(orgs)) != len(orgs):
        raise ValueError(f"organisations must be unique and at least one: {orgs}")
    out = Path(out)
    order = np.random.default_rng(seed).permutation(data.num_users)
    folders = {
        org: write_interaction_folder(data, np.sort(part), out / org)
        for org, part in zip(orgs, np.array_split(order, len(orgs)))
    }
    write_items(data, out / "catalogue")
    folders["catalogue"] = out / "catalogue"
    return folders
