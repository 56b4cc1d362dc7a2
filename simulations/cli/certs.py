"""``fedrec certs DIR --org NAME [--org NAME ...]``: TLS + SuperNode authentication keys.

See common/deployment/certs.py for what is written; ``python -m simulations.cli.certs`` works too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.deployment import certs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="folder to write the key material to")
    parser.add_argument(
        "--org",
        dest="orgs",
        action="append",
        required=True,
        metavar="NAME",
        help="an organisation running a SuperNode (repeat for each); letters, digits, . _ -",
    )
    parser.add_argument(
        "--server-name",
        dest="server_names",
        action="append",
        metavar="HOST",
        help="DNS name or IP address the SuperNodes use to reach the SuperLink (repeat for each; "
        "default: localhost and 127.0.0.1; 127.0.0.1 is always added)",
    )
    parser.add_argument("--days", type=int, default=365, help="validity of the certificates (default 365)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace existing keys and certificates (makes a NEW CA: every organisation needs its new folder)",
    )


def run_from_args(args: argparse.Namespace, prog: str = "fedrec certs") -> int:
    server_names = args.server_names or list(certs.DEFAULT_SERVER_NAMES)
    try:
        written = certs.generate(
            args.directory, args.orgs, server_names=server_names, days=args.days, overwrite=args.force
        )
    except (certs.CertsError, FileExistsError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    root = Path(args.directory).expanduser().resolve()
    print(f"{prog}: wrote {len(written)} files to {root}")
    for rel in written:
        mode = " (private, 0600)" if rel.endswith(".key") else ""
        print(f"  {rel}{mode}")
    names = list(dict.fromkeys([*server_names, certs.LOOPBACK]))
    print("\nNext (Flower 1.41; also in README.txt there):\n")
    print(certs.commands(root, args.orgs, names), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.cli.certs",
        description="CA, SuperLink TLS certificate and SuperNode authentication keys for Flower 1.41.",
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), prog="simulations.cli.certs")


if __name__ == "__main__":
    sys.exit(main())
