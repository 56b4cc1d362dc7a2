"""Turn ML-1M's interaction pairs (no ratings, no timestamps) into the generic CSV format.

    .venv/bin/python benchmarks/ml1m_pairs.py ../shared/data/ml-1m /tmp/ml1m-pairs [--seed 0]
    .venv/bin/python -m simulations.run dataset=csv dataset.path=/tmp/ml1m-pairs ...

The pairs file ``ratings-ids-only.parquet`` (columns userID, movieID) holds all 1,000,209
user-movie pairs of ML-1M in ratings.dat's row order, which is not chronological within a user.
So each user's pairs get a seeded random order, written as timestamps 0, 1, 2, ...: the
leave-one-out split on the result is a **random** leave-one-out, not the temporal protocol,
and every pair counts as a positive. Say so next to every figure from it. Item text is the
MovieLens loader's ("Title (Year). Genres: A, B"); users.csv carries gender, age group,
occupation and region as in ``dataset=movielens_1m``. Nothing is written unless the whole
input reads cleanly; each file is written to a temp file and renamed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data.movielens import ML1M_AGE_LABELS, ML1M_OCCUPATIONS, _item_text, _region, _rows  # noqa: E402


def convert(src: Path, out: Path, seed: int = 0) -> dict:
    pairs = pd.read_parquet(src / "ratings-ids-only.parquet")
    missing = {"userID", "movieID"} - set(pairs.columns)
    if missing:
        raise SystemExit(f"{src / 'ratings-ids-only.parquet'}: missing column(s) {sorted(missing)}")
    items = [(f[0], _item_text(f[1], [g for g in f[2].split("|") if g])) for _, f in _rows(src / "movies.dat", "::", 3)]
    users = []
    for _, f in _rows(src / "users.dat", "::", 5):
        age = int(f[2])
        users.append(
            {
                "user_id": f[0],
                "gender": f[1],
                "age_group": ML1M_AGE_LABELS.get(age, str(age)),
                "occupation": ML1M_OCCUPATIONS[int(f[3])],
                "region": _region(f[4]),
            }
        )
    known = {i for i, _ in items}
    unknown = sorted(set(pairs["movieID"].astype(str)) - known)
    if unknown:
        raise SystemExit(f"{src / 'ratings-ids-only.parquet'}: movie ids not in movies.dat, e.g. {unknown[:3]}")
    rng = np.random.default_rng(seed)
    inter = pairs.rename(columns={"userID": "user_id", "movieID": "item_id"})[["user_id", "item_id"]].astype(str)
    inter["timestamp"] = 0
    for _, idx in inter.groupby("user_id", sort=False).indices.items():
        inter.iloc[idx, 2] = rng.permutation(len(idx))  # a random order within each user
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "interactions.csv", inter)
    _write(out / "items.csv", pd.DataFrame(items, columns=["item_id", "text"]))
    _write(out / "users.csv", pd.DataFrame(users))
    return {"pairs": len(inter), "users": inter["user_id"].nunique(), "items": len(items)}


def _write(path: Path, frame: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="folder with ratings-ids-only.parquet, movies.dat, users.dat")
    ap.add_argument("out", type=Path, help="folder to write interactions.csv, items.csv, users.csv")
    ap.add_argument("--seed", type=int, default=0, help="seed of the within-user random order")
    args = ap.parse_args()
    stats = convert(args.src, args.out, args.seed)
    print(
        f"{args.out}: {stats['pairs']:,} pairs, {stats['users']:,} users, {stats['items']:,} items "
        "(random order within each user: random leave-one-out)"
    )


if __name__ == "__main__":
    main()
