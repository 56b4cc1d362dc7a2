"""MovieLens 100K and 1M from folders of the original GroupLens files.

The files are never shipped with fedrec (the GroupLens terms forbid redistribution), so
every "file not found" error says where to get them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.assemble import assemble
from common.data.types import DataError, InteractionData

GROUPLENS_URL = "https://grouplens.org/datasets/movielens/"

# Used when u.genre is absent; the order matches the 19 flag columns of u.item.
ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
# ML-1M stores codes; the labels come from its README so fairness tables read naturally.
ML1M_AGE_LABELS = {
    1: "Under 18",
    18: "18-24",
    25: "25-34",
    35: "35-44",
    45: "45-49",
    50: "50-55",
    56: "56+",
}
ML1M_OCCUPATIONS = [
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
]


def load_movielens_100k(path: str | Path) -> InteractionData:
    """Load ML-100K (``u.data``, ``u.item``, ``u.user``; ``u.genre`` optional).

    Item text is "Title (Year). Genres: A, B" so the language model sees what a viewer
    sees; users carry gender, age, age_group, occupation, zip and region.
    """
    folder = _require(path, "MovieLens 100K", "ml-100k.zip", ["u.data", "u.item", "u.user"])
    genres = ML100K_GENRES
    if (folder / "u.genre").is_file():
        genres = [f[0] for _, f in _rows(folder / "u.genre", "|", 2)]

    item_ids, item_text = [], []
    for ln, f in _rows(folder / "u.item", "|", 5 + len(genres)):
        flags = f[5:]
        if any(x not in ("0", "1") for x in flags):
            raise DataError(f"{folder / 'u.item'}, line {ln}: genre flags must be 0 or 1")
        item_ids.append(_id(f[0], folder / "u.item", ln))
        item_text.append(_item_text(f[1], [g for g, x in zip(genres, flags) if x == "1"]))

    users = {}
    for ln, f in _rows(folder / "u.user", "|", 5):
        age = _int(f[1], folder / "u.user", ln, "age")
        users[_id(f[0], folder / "u.user", ln)] = {
            "gender": f[2],
            "age": age,
            "age_group": _age_group(age),
            "occupation": f[3],
            "zip": f[4],
            "region": _region(f[4]),
        }
    return _build("movielens_100k", folder / "u.data", "\t", item_ids, item_text, users)


def load_movielens_1m(path: str | Path) -> InteractionData:
    """Load ML-1M (``ratings.dat``, ``movies.dat``, ``users.dat``; ``::``-separated).

    Same internal form as ML-100K: text "Title (Year). Genres: A, B"; ML-1M's age and
    occupation codes become labels, and ``age`` keeps the code (the bucket's lower bound).
    """
    folder = _require(path, "MovieLens 1M", "ml-1m.zip", ["ratings.dat", "movies.dat", "users.dat"])
    item_ids, item_text = [], []
    for ln, f in _rows(folder / "movies.dat", "::", 3):
        item_ids.append(_id(f[0], folder / "movies.dat", ln))
        item_text.append(_item_text(f[1], [g for g in f[2].split("|") if g]))

    users = {}
    for ln, f in _rows(folder / "users.dat", "::", 5):
        age = _int(f[2], folder / "users.dat", ln, "age")
        occ = _int(f[3], folder / "users.dat", ln, "occupation")
        users[_id(f[0], folder / "users.dat", ln)] = {
            "gender": f[1],
            "age": age,
            "age_group": ML1M_AGE_LABELS.get(age, str(age)),
            "occupation": ML1M_OCCUPATIONS[occ] if 0 <= occ < len(ML1M_OCCUPATIONS) else str(occ),
            "zip": f[4],
            "region": _region(f[4]),
        }
    return _build("movielens_1m", folder / "ratings.dat", "::", item_ids, item_text, users)


def _build(name, ratings_path, sep, item_ids, item_text, users) -> InteractionData:
    """Read the ratings file and check every row against the catalogue and user list."""
    item_index = {iid: i for i, iid in enumerate(item_ids)}
    row_users, row_items, row_ts, row_r = [], [], [], []
    for ln, f in _rows(ratings_path, sep, 4):
        user, item = _id(f[0], ratings_path, ln), _id(f[1], ratings_path, ln)
        if item not in item_index:
            raise DataError(f"{ratings_path}, line {ln}: unknown item id {item}")
        if user not in users:
            raise DataError(f"{ratings_path}, line {ln}: unknown user id {user}")
        row_users.append(user)
        row_items.append(item_index[item])
        row_r.append(_float(f[2], ratings_path, ln, "rating"))
        row_ts.append(_int(f[3], ratings_path, ln, "timestamp"))
    if not row_items:
        raise DataError(f"{ratings_path}: no ratings")
    attrs = pd.DataFrame.from_dict(users, orient="index")
    return assemble(
        name,
        item_ids,
        item_text,
        np.array(row_users, dtype=object),
        np.array(row_items),
        np.array(row_ts),
        np.array(row_r, dtype=np.float32),
        attrs,
    )


def _require(path: str | Path, what: str, archive: str, files: list[str]) -> Path:
    """Fail early, in one line, naming every missing path and how to obtain the data."""
    folder = Path(path)
    hint = (
        f"download {archive} from {GROUPLENS_URL} yourself (its terms forbid redistribution, "
        f"so fedrec cannot ship it), unzip it and pass dataset.path=<that folder>"
    )
    if not folder.is_dir():
        raise DataError(f"{what} folder not found: {folder} — {hint}")
    missing = [str(folder / f) for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{what} file not found: {', '.join(missing)} — {hint}")
    return folder


def _rows(path: Path, sep: str, nfields: int) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields), skipping blank lines, rejecting wrong field counts."""
    with open(path, encoding="latin-1", newline="") as fh:
        for ln, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split(sep)
            if len(fields) != nfields:
                raise DataError(
                    f"{path}, line {ln}: expected {nfields} {sep!r}-separated fields, got {len(fields)}: {line[:80]!r}"
                )
            yield ln, fields


def _id(value: str, path: Path, ln: int) -> str:
    value = value.strip()
    if not value:
        raise DataError(f"{path}, line {ln}: empty id")
    return value


def _int(value: str, path: Path, ln: int, field: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}, line {ln}: {field} is not an integer: {value!r}") from None


def _float(value: str, path: Path, ln: int, field: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{path}, line {ln}: {field} is not a number: {value!r}") from None


def _item_text(title: str, genres: list[str]) -> str:
    title = title.strip()
    return f"{title}. Genres: {', '.join(genres)}" if genres else f"{title}."


def _age_group(age: int) -> str:
    """ML-1M's buckets, applied to ML-100K's exact ages so both sets share fairness groups."""
    label = "Under 18"
    for lower, name in ML1M_AGE_LABELS.items():
        if age >= lower:
            label = name
    return label


def _region(zip_code: str) -> str:
    """The first digit of a US ZIP code is its national area (0 = north-east … 9 = west).

    Gives MovieLens a handful of natural silos for ``partition=attribute`` (whose default
    attribute is ``region``); non-US codes (letters) become "other".
    """
    z = zip_code.strip()
    return f"zip{z[0]}" if z[:1].isdigit() else "other"
