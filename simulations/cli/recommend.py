"""fedrec recommend: top-K unseen items for one user from a trained run's adapter.

    fedrec recommend --adapter RUN_DIR --user ID [--data DIR] [-k 10] [--json]

``--adapter`` is the run folder or its ``adapter/`` subfolder. ``--data`` overrides the run's
``dataset.path`` (for movielens_* / csv runs whose data moved); it is optional when the run's
own path still holds, and must be left out for ``dataset=synthetic``, which is regenerated from
the run's config and has no files. Errors are one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

TEXT_WIDTH = 70


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--adapter",
        required=True,
        metavar="DIR",
        help="the run folder (with config.yaml and adapter/) or its adapter/ subfolder",
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="data folder, overriding the run's dataset.path; leave out for dataset=synthetic "
        "or when the run's own path is still valid",
    )
    parser.add_argument("--user", required=True, metavar="ID", help="the user id as in the data (e.g. u00042)")
    parser.add_argument("-k", type=int, default=10, help="number of items (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _truncate(text: str, width: int = TEXT_WIDTH) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_recommendations(items: list[dict]) -> str:
    id_w = max([len("item"), *(len(r["item_id"]) for r in items)])
    lines = [f"{'rank':>4}  {'item':<{id_w}}  {'score':>8}  text", "-" * (4 + 2 + id_w + 2 + 8 + 2 + TEXT_WIDTH)]
    for r in items:
        lines.append(f"{r['rank']:>4}  {r['item_id']:<{id_w}}  {r['score']:>8.4f}  {_truncate(r['text'])}")
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace, prog: str = "fedrec recommend") -> int:
    from common.data import DataError
    from common.model.item_encoder import ModelPathError
    from common.recommend import Recommender, RecommendError

    try:
        items = Recommender(args.adapter, args.data).recommend(args.user, args.k)
    except (RecommendError, DataError, ModelPathError, FileNotFoundError) as e:
        print(f"{prog}: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"user_id": args.user, "k": args.k, "items": items}, indent=2, ensure_ascii=False))
    else:
        print(f"top {args.k} for user {args.user} (items the user has interacted with are left out)")
        print(format_recommendations(items))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.cli.recommend", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), prog="simulations.cli.recommend")


if __name__ == "__main__":
    sys.exit(main())
