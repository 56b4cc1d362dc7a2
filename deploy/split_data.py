"""Deal a data set's users over organisations, one generic data folder each (for trials and demos).

    .venv/bin/python deploy/split_data.py OUT --org a --org b --org c \
        [--dataset movielens_100k --path /data/ml-100k]   (default: the built-in synthetic set)

Writes OUT/<org>/{interactions,items,users}.csv (each organisation's users, the full catalogue)
and OUT/catalogue/items.csv (what the coordinator's ServerApp reads). Real organisations already
hold their own data: they only need to write it in the generic format (README, "Data formats").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from common.data import DATASETS, DataError, load_dataset  # noqa: E402
from common.deployment.export import split_for_deployment  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", metavar="OUT", help="folder to write the organisations' folders to")
    p.add_argument("--org", dest="orgs", action="append", required=True, help="an organisation (repeat)")
    p.add_argument("--dataset", default="synthetic", choices=DATASETS)
    p.add_argument("--path", help="the data set's folder (all but synthetic)")
    p.add_argument("--seed", type=int, default=0, help="which users go where")
    args = p.parse_args(argv)
    try:
        data = load_dataset(args.dataset, args.path)
        folders = split_for_deployment(data, args.orgs, args.out, args.seed)
    except (DataError, ValueError) as err:
        print(f"split_data: {err}", file=sys.stderr)
        return 2
    for name, folder in folders.items():
        print(f"{name}: {folder.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
