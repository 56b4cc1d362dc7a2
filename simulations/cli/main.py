"""The ``fedrec`` console script. Subcommands grow with the issues; each has --help."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from simulations.report import main as report
from simulations.table import format_table


def _table(args: argparse.Namespace) -> int:
    rows = []
    for d in args.run_dirs:
        path = Path(d) / "summary.json"
        if not path.is_file():
            print(f"fedrec table: {path} not found (the run did not complete?)", file=sys.stderr)
            return 2
        rows.append((Path(d).name, json.loads(path.read_text())))
    print(format_table(rows))
    return 0


def _run(args: argparse.Namespace) -> int:
    from simulations import run

    sys.argv = ["simulations.run", *(["--multirun"] if args.multirun else []), *args.overrides]
    run.main()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["audit", "run"]:
        return _audit_run(argv[2:])
    parser = argparse.ArgumentParser(prog="fedrec", description="Federated, private recommendation.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="one simulation or baseline: fedrec run [hydra overrides]")
    p.add_argument("-m", "--multirun", action="store_true", help="a sweep: privacy.epsilon=1,4,8,inf runs four")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. privacy.epsilon=4")
    p.set_defaults(func=_run)
    p = sub.add_parser("table", help="result table of one or more run folders")
    p.add_argument("run_dirs", nargs="+")
    p.set_defaults(func=_table)
    p = sub.add_parser("report", help="comparison report (Markdown, HTML, CSV, plots) of every run under a folder")
    report.add_arguments(p)
    p.set_defaults(func=report.run_from_args)
    from simulations.cli import certs as certs_cli
    from simulations.cli import flower as flower_cli
    from simulations.cli import recommend as recommend_cli

    p = sub.add_parser("certs", help="CA, SuperLink TLS certificate and SuperNode auth keys for a deployment")
    certs_cli.add_arguments(p)
    p.set_defaults(func=certs_cli.run_from_args)

    p = sub.add_parser("flower", help="the same simulation through Flower's CLI (flwr run .) on its local SuperLink")
    flower_cli.add_arguments(p)
    p.set_defaults(func=flower_cli.run_from_args)

    p = sub.add_parser("recommend", help="top-K unseen items for a user from a trained run")
    recommend_cli.add_arguments(p)
    p.set_defaults(func=recommend_cli.run_from_args)
    p = sub.add_parser("audit", help="empirical privacy audit of a run, and its signed report")
    audit_sub = p.add_subparsers(dest="audit_command", required=True)
    _add_audit_commands(audit_sub)
    args = parser.parse_args(argv)
    return args.func(args)


def _add_audit_commands(audit_sub) -> None:
    from simulations.audit import report as audit_report

    # Listed here for `fedrec audit -h`; main() hands `audit run ...` to its own parser.
    audit_sub.add_parser("run", help="canaries + membership inference on a re-run of RUN_DIR's config")
    audit_report.add_arguments(audit_sub)


def _audit_run(argv: list[str]) -> int:
    # Imported here: the audit pulls in torch and the whole harness, which other commands skip.
    from simulations.audit import run as audit

    parser = argparse.ArgumentParser(prog="fedrec audit run")
    audit.add_run_arguments(parser)
    return audit.run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
