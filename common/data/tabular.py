"""The generic interaction folder (README, "Data formats"): any domain, CSV or Parquet.

Errors point where a user would look: CSV problems name the file and the line as an editor
shows it (header = line 1, quoted multi-line texts counted correctly); Parquet has no lines,
so its problems name the row (first data row = row 1).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.assemble import MISSING_ATTRIBUTE, assemble
from common.data.types import DataError, InteractionData

_EPOCH = pd.Timestamp(0, tz="UTC")
# What spreadsheets, pandas and databases write for "no value": never a real user or item id.
MISSING_TOKENS = frozenset({"nan", "null", "none", "na", "n/a", "<na>", "#n/a", "nil", "undefined"})
_FLOAT_INTEGER = re.compile(r"([+-]?\d+)\.0+")
_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "pipes"}


@dataclass
class _Table:
    path: Path
    columns: dict[str, list]  # column name -> values (str for CSV, Python objects for Parquet)
    lines: list[int] | None  # CSV line of each row; None for Parquet

    def loc(self, i: int) -> str:
        return f"line {self.lines[i]}" if self.lines is not None else f"row {i + 1}"

    def where(self, i: int) -> str:
        return f"{self.path}, {self.loc(i)}"

    def require(self, *names: str) -> None:
        for name in names:
            if name not in self.columns:
                raise DataError(
                    f"{self.path}: missing required column {name!r} (found: {', '.join(self.columns) or 'none'})"
                )

    def strings(self, name: str) -> list[str]:
        """A column as stripped strings; an empty value is a malformed row."""
        out = []
        for i, v in enumerate(self.columns[name]):
            s = "" if v is None else str(v).strip()
            if not s:
                raise DataError(f"{self.where(i)}: empty {name}")
            out.append(s)
        return out

    def ids(self, name: str) -> list[str]:
        """An id column: stripped strings, an integer written as a float ("244.0", as a
        spreadsheet or a float column writes it) read as that integer ("244"), so the same id
        matches across files; a missing-value token ("nan", "NULL", …) is refused."""
        out = self.strings(name)
        for i, s in enumerate(out):
            if s.lower() in MISSING_TOKENS:
                raise DataError(f"{self.where(i)}: {name} {s!r} is a missing-value marker, not an id")
            m = _FLOAT_INTEGER.fullmatch(s)
            if m:
                out[i] = m.group(1)
        return out


def load_interaction_folder(path: str | Path) -> InteractionData:
    """Load ``interactions``, ``items`` and optional ``users`` tables from one folder.

    Ids stay strings (so "007" and "7" remain different items), except that an integer written
    as a float ("244.0") is read as the integer ("244"); timestamps may be integer
    seconds or ISO-8601 (naive times are read as UTC). Every item in the items file is in
    the catalogue, with or without interactions.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    items = read_table(find_table(folder, "items", required=True))
    items.require("item_id", "text")
    item_ids = items.ids("item_id")
    item_text = items.strings("text")
    index = pd.Index(item_ids)
    if not index.is_unique:
        dup = int(np.flatnonzero(index.duplicated())[0])
        first = item_ids.index(item_ids[dup])
        raise DataError(f"{items.where(dup)}: duplicate item_id {item_ids[dup]!r} (first at {items.loc(first)})")

    inter = read_table(find_table(folder, "interactions", required=True))
    inter.require("user_id", "item_id", "timestamp")
    if not inter.columns["user_id"]:
        raise DataError(f"{inter.path}: no interactions")
    users = inter.ids("user_id")
    row_items = index.get_indexer(inter.ids("item_id"))
    if (row_items < 0).any():
        bad = int(np.flatnonzero(row_items < 0)[0])
        raise DataError(
            f"{inter.where(bad)}: item_id {str(inter.columns['item_id'][bad]).strip()!r} is not in {items.path.name}"
        )
    timestamps = _timestamps(inter)
    ratings = _ratings(inter) if "rating" in inter.columns else None

    attrs = None
    users_path = find_table(folder, "users", required=False)
    if users_path is not None:
        attrs = _user_attributes(read_table(users_path))
        if len(attrs) and not attrs.index.isin(users).any():
            raise DataError(
                f"{users_path}: none of its user_ids appear in {inter.path.name} (e.g. {attrs.index[0]!r} "
                f"in {users_path.name}, {users[0]!r} in {inter.path.name}): every user would lose its attributes"
            )
    return assemble(
        f"csv:{folder.name}",
        item_ids,
        item_text,
        np.array(users, dtype=object),
        row_items,
        timestamps,
        ratings,
        attrs,
    )


def find_table(folder: Path, stem: str, required: bool) -> Path | None:
    found = [p for p in (folder / f"{stem}.csv", folder / f"{stem}.parquet") if p.is_file()]
    if len(found) > 1:
        raise DataError(f"{folder}: both {stem}.csv and {stem}.parquet exist; keep one")
    if not found and required:
        raise DataError(f"{folder}: missing {stem}.csv (or {stem}.parquet)")
    return found[0] if found else None


def read_table(path: Path) -> _Table:
    return _read_parquet(path) if path.suffix == ".parquet" else _read_csv(path)


def _read_csv(path: Path) -> _Table:
    # The csv module rather than pandas: it reports the line where each record starts,
    # including after quoted texts that span lines, which pandas' row index cannot.
    start = 1
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty file (expected a header line)")
            header = [h.strip() for h in header]
            _check_header(path, header)
            rows, lines = [], []
            start = reader.line_num + 1
            for row in reader:
                if any(field.strip() for field in row):  # blank lines are not rows
                    if len(row) != len(header):
                        raise DataError(
                            f"{path}, line {start}: expected {len(header)} fields ({','.join(header)}), got {len(row)}"
                        )
                    rows.append(row)
                    lines.append(start)
                start = reader.line_num + 1
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}, line {start}: {e}") from None
    columns = {h: [r[j] for r in rows] for j, h in enumerate(header)}
    return _Table(path, columns, lines)


def _check_header(path: Path, header: list[str]) -> None:
    """A header read with the wrong delimiter is one long column; a repeated name would make
    one column silently shadow the other."""
    if len(header) == 1:
        for sep, name in _DELIMITERS.items():
            if sep in header[0]:
                raise DataError(
                    f"{path}, line 1: the header {header[0]!r} is one column: the file is separated by "
                    f"{name}; fedrec reads comma-separated files"
                )
    seen: dict[str, int] = {}
    for j, name in enumerate(header, start=1):
        if name in seen:
            raise DataError(f"{path}, line 1: column {name!r} appears twice (columns {seen[name]} and {j})")
        seen[name] = j


def _read_parquet(path: Path) -> _Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({e})".replace("\n", " ")) from None
    names = table.column_names
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: column {dup!r} appears {names.count(dup)} times")
    columns = {}
    for name in names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
            # Native time columns become epoch seconds here, so later code sees one form.
            secs = (pd.to_datetime(col.to_pandas(), utc=True) - _EPOCH) // pd.Timedelta(seconds=1)
            columns[name] = [None if pd.isna(x) else int(x) for x in secs]
        else:
            columns[name] = col.to_pylist()
    return _Table(path, columns, None)


def _timestamps(t: _Table) -> np.ndarray:
    """Integer seconds or ISO-8601 (decided per value, so one file may mix both) → int64."""
    text = pd.Series([_as_text(v) for v in t.columns["timestamp"]], dtype=object)
    is_int = text.str.fullmatch(r"[+-]?\d{1,18}").to_numpy(dtype=bool)
    out = np.zeros(len(text), dtype=np.int64)
    out[is_int] = text[is_int].astype(np.int64).to_numpy()
    rest = np.flatnonzero(~is_int)
    if len(rest):
        parsed = pd.to_datetime(text.iloc[rest], format="ISO8601", utc=True, errors="coerce")
        bad = np.flatnonzero(parsed.isna().to_numpy())
        if len(bad):
            i = int(rest[bad[0]])
            raise DataError(f"{t.where(i)}: unparsable timestamp {text[i]!r} (expected integer seconds or ISO-8601)")
        out[rest] = ((parsed - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    return out


def _as_text(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():  # Parquet written from a float column
        return str(int(v))
    return str(v).strip()


def _ratings(t: _Table) -> np.ndarray:
    values = pd.to_numeric(pd.Series(t.columns["rating"], dtype=object), errors="coerce")
    if values.isna().any():
        bad = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataError(f"{t.where(bad)}: rating is not a number: {t.columns['rating'][bad]!r}")
    return values.to_numpy(dtype=np.float32)


def _user_attributes(t: _Table) -> pd.DataFrame:
    """Attributes as strings: they name groups (fairness, silos), never quantities."""
    t.require("user_id")
    ids = t.ids("user_id")
    seen: dict[str, int] = {}
    for i, u in enumerate(ids):
        if u in seen:
            raise DataError(f"{t.where(i)}: duplicate user_id {u!r}")
        seen[u] = i
    cols = {
        name: [MISSING_ATTRIBUTE if v is None or str(v).strip() == "" else str(v).strip() for v in vals]
        for name, vals in t.columns.items()
        if name != "user_id"
    }
    return pd.DataFrame(cols, index=pd.Index(ids, dtype=object))
