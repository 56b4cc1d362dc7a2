"""The privacy audit report of one run, signed (``fedrec audit report|verify|keygen``).

For a privacy officer: what was protected (unit of privacy), against whom (threat model), how
much ε each client spent and whether a budget was ever exceeded, and the empirical audit
(canary ε lower bound, membership-inference AUC). Written into ``RUN_DIR/audit/``:

- ``report.json`` — the machine-readable record, ``{"payload": ..., "signature": ...}``,
  signed with Ed25519 when ``--key`` is given (format: :mod:`simulations.audit.signing`); unsigned
  reports carry ``"signature": null`` and say UNSIGNED in the Markdown/HTML;
- ``report.md``, ``report.html`` — renderings of the payload (``verify`` re-renders them and
  checks they match), ``plots/epsilon_per_round.png`` and ``plots/mia_roc.png``.

The payload also holds the sha256 of every run file it was built from and of the plots, so a
signed report pins the evidence: ``verify`` reports any of them changed since.

This module builds the payload and its findings, writes, signs and verifies it, and is the
command line; the facts come from :mod:`simulations.audit.identity` (run identity, threat
model) and :mod:`simulations.audit.facts` (unit of privacy, secure aggregation, budget, known
limits, empirical audit); :mod:`simulations.audit.render` renders them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.privacy.ledger import AGREEMENT, RESOLUTION
from common.tracking.store import atomic_write
from simulations.audit.facts import audit_block, budget_block, known_limits, privacy_block, secagg_block, spent_note
from simulations.audit.identity import (
    ReportInputError,
    code_version,
    config_sha256,
    data_fingerprint,
    input_hashes,
    lookup,
    read_json,
    read_jsonl,
    read_yaml,
    sha256_file,
    threat_model_summary,
)
from simulations.audit.signing import (
    KeyFileError,
    SignatureError,
    generate_keypair,
    load_private_key,
    payload_sha256,
    sign_json,
    verify_json,
)

__all__ = [
    "ReportInputError",
    "SignatureError",
    "add_arguments",
    "build_payload",
    "config_sha256",
    "data_fingerprint",
    "main",
    "verify_report",
    "write_report",
]

FORMAT = "fedrec-privacy-audit/1"
KEY_NAME = "fedrec_audit_ed25519"


def _jsonable(value: Any) -> Any:
    """Plain JSON for the signed payload: ∞ and NaN (not JSON) become the strings "inf"/"nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def findings(payload: dict) -> list[dict]:
    """The verdict lines at the top: red = the guarantee is broken or unproven, warn = the
    record is incomplete, ok = checked and fine."""
    out: list[dict] = []

    def add(level: str, text: str) -> None:
        out.append({"level": level, "text": text})

    pv, bud, aud, run = payload["privacy"], payload["budget"], payload["audit"], payload["run"]
    if not pv["enabled"]:
        add("red", "This run is NOT differentially private (privacy.enabled=false).")
    if pv["seeded_noise"]:
        add("red", "privacy.seeded_noise=true: the noise follows from the config seed; this run is NOT private.")
    if pv["delta_ok"] is False:
        add("red", f"δ = {pv['delta']:g} is not below 1/{pv['units_protected']}.")
    if pv["enabled"]:
        if bud["exceeded"]:
            bad = [
                f"client {c} (round {', '.join(map(str, v['exceeded_rounds']))})"
                for c, v in bud["clients"].items()
                if v["exceeded_rounds"]
            ]
            add("red", f"Budget EXCEEDED: {', '.join(bad)}.")
        elif bud["clients"]:
            add("ok", f"No client's ε ever exceeded its budget ({bud['source']}).")
        if bud["accountants_disagree"]:
            who = ", ".join(bud["accountants_disagree"])
            add("red", f"Accountants DISAGREE by more than {AGREEMENT:.0%} (and {RESOLUTION:g}) for client(s) {who}.")
        elif any(v["agree"] for v in bud["clients"].values()):
            add("ok", f"Both accountants agree within {AGREEMENT:.0%} (or {RESOLUTION:g}) for every client checked.")
        if bud["refused_rounds"]:
            add("warn", f"{bud['refused_rounds']} round(s) refused by clients whose budget was exhausted.")
        if bud["source"].startswith("no ledger"):
            add("warn", "No privacy ledger: ε is taken from summary.json and metrics.jsonl; refusals are unknown.")
        mism = [c for c, v in bud["clients"].items() if v["summary_matches_ledger"] is False]
        if mism:
            add("warn", f"summary.json and the ledger give different ε for client(s) {', '.join(mism)}.")
    for problem in bud["problems"]:
        add("red", problem)
    if not aud["run"]:
        add("warn", "The empirical audit was not run (no audit/audit.json).")
    elif aud["violation"]:
        add("red", "The empirical audit found MORE leakage than the theoretical ε allows.")
    else:
        add("ok", "The empirical audit is consistent with the theoretical ε.")
    if aud.get("control") and aud["control"].get("private"):
        add("warn", "The positive control run is itself private: it cannot show the audit's power.")
    if run["code"]["commit"] == "unknown":
        add("warn", "Code version unknown (not a git checkout).")
    elif run["code"]["dirty"]:
        add("warn", "The code that wrote this report has uncommitted changes.")
    if run["data"].get("sha256") is None:
        add("warn", f"No data fingerprint: {run['data'].get('note', 'unknown data')}.")
    return out


def build_payload(run_dir: Path, control: Path | None = None) -> tuple[dict, dict]:
    """The report's facts (unsigned, without plots) and what the plots need."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportInputError(f"{run_dir}: no such folder")
    config = read_yaml(run_dir / "config.yaml")
    summary = read_json(run_dir / "summary.json", required=False)
    if summary is None:
        raise ReportInputError(f"{run_dir / 'summary.json'}: not found (the run did not complete)")
    if not isinstance(summary, dict):
        raise ReportInputError(f"{run_dir / 'summary.json'}: a JSON object expected")
    metrics = (read_jsonl(run_dir / "metrics.jsonl") or ([], []))[0]
    ledger = read_jsonl(run_dir / "privacy_ledger.jsonl")
    privacy = privacy_block(config, summary)
    code = summary.get("code") if isinstance(summary.get("code"), dict) else code_version()
    payload = {
        "format": FORMAT,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": {
            "dir": str(run_dir.resolve()),
            "kind": summary.get("kind"),
            "config_sha256": config_sha256(config),
            "code": code,
            "data": data_fingerprint(config, run_dir),
            "seed": config.get("seed"),
            "partition": lookup(config, "partition.scheme"),
            "clients": lookup(summary, "data.clients"),
            "users": lookup(summary, "data.users"),
            "rounds": lookup(summary, "timing.rounds"),
            "inputs": input_hashes(run_dir),
        },
        "privacy": privacy,
        "threat_model": threat_model_summary(config),
        "secure_aggregation": secagg_block(config, summary),
        "budget": budget_block(config, summary, ledger, metrics),
    }
    payload["audit"], rocs = audit_block(run_dir, control)
    payload["audit"]["interpretation"] += spent_note(payload["audit"], privacy)
    payload["known_limits"] = known_limits(config, privacy)
    payload["findings"] = findings(payload)
    return payload, rocs


def write_report(run_dir: str | Path, key: str | Path | None = None, control: str | Path | None = None) -> list[Path]:
    """Write RUN_DIR/audit/report.{json,md,html} and the plots; returns the paths written."""
    from simulations.audit import render

    run_dir = Path(run_dir)
    if key:
        load_private_key(key)  # a bad key fails before anything is drawn or written
    payload, rocs = build_payload(run_dir, Path(control) if control else None)
    out = run_dir / "audit"
    (out / "plots").mkdir(parents=True, exist_ok=True)
    written = []
    payload["plots"] = {}
    for name, draw in (
        ("epsilon_per_round", lambda p: render.epsilon_plot(payload["budget"], p)),
        ("mia_roc", lambda p: render.roc_plot(rocs, payload["audit"], p)),
    ):
        path = out / "plots" / f"{name}.png"
        skipped = draw(path)
        if skipped is None:
            payload["plots"][name] = {"file": f"plots/{name}.png", "sha256": sha256_file(path)}
            written.append(path)
        else:  # a plot left from an earlier report would pass for this one
            path.unlink(missing_ok=True)
            payload["plots"][name] = {"file": None, "not_drawn": skipped}
    # Through JSON and back: the renderings must come from exactly what report.json holds
    # (key order included), or verify's re-rendering would differ.
    payload = json.loads(json.dumps(_jsonable(payload), sort_keys=True, allow_nan=False))
    document = sign_json(payload, key) if key else {"payload": payload, "signature": None}
    as_json = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    # report.json last: a reader that finds it finds the renderings of the same payload.
    for name, text in (
        ("report.md", render.render_markdown(document)),
        ("report.html", render.render_html(document)),
        ("report.json", as_json),
    ):
        atomic_write(out / name, text)
        written.append(out / name)
    return written


def verify_report(report: str | Path, public_key: str | Path) -> tuple[dict, list[str]]:
    """Check the signature (SignatureError when it fails), then what the signed payload pins:
    the Markdown/HTML next to it and the run files and plots. Returns the payload and the list
    of files that no longer match (empty = everything matches)."""
    from simulations.audit import render

    report = Path(report)
    document = read_json(report)
    verify_json(document, public_key)
    payload, here, changed = document["payload"], report.parent, []
    for name, text in (("report.md", render.render_markdown(document)), ("report.html", render.render_html(document))):
        if (here / name).is_file() and (here / name).read_text(encoding="utf-8") != text:
            changed.append(f"{here / name} does not match the signed report.json (edited, or another fedrec version)")
    # The report sits in RUN_DIR/audit/; the recorded path is only a fallback (a moved folder).
    run_dir = here.parent if (here.parent / "config.yaml").is_file() else Path(lookup(payload, "run.dir", here.parent))
    for name, digest in (lookup(payload, "run.inputs") or {}).items():
        path = run_dir / name
        now = sha256_file(path) if path.is_file() else None
        if now != digest:
            what = "changed" if now and digest else "appeared" if now else "is gone"
            changed.append(f"{path} {what} since the report")
    for plot in (payload.get("plots") or {}).values():
        if isinstance(plot, dict) and plot.get("file"):
            path = here / plot["file"]
            if not path.is_file() or sha256_file(path) != plot.get("sha256"):
                changed.append(f"{path} does not match the signed report")
    return payload, changed


# ---------------------------------------------------------------- command line


def _cmd_report(args: argparse.Namespace) -> int:
    written = write_report(args.run_dir, args.key, args.control)
    for path in written:
        print(f"wrote {path}")
    doc = json.loads((Path(args.run_dir) / "audit" / "report.json").read_text(encoding="utf-8"))
    reds = [f["text"] for f in doc["payload"]["findings"] if f["level"] == "red"]
    print(
        ("signed" if doc["signature"] else "UNSIGNED (no --key)")
        + "; "
        + (f"{len(reds)} red flag(s): {reds[0]}" if reds else "no red flags")
    )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    payload, changed = verify_report(args.report, args.public_key)
    run = lookup(payload, "run.dir")
    print(f"OK: {args.report} signature valid (payload sha256 {payload_sha256(payload)}, run {run})")
    for line in changed:
        print(f"{args.audit_prog}: CHANGED: {line}", file=sys.stderr)
    return 1 if changed else 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    private, public = generate_keypair(folder / f"{KEY_NAME}.pem", folder / f"{KEY_NAME}.pub.pem", overwrite=args.force)
    print(f"wrote {private} (private, mode 0600: keep it secret)\nwrote {public} (public: give it to verifiers)")
    return 0


def _guarded(func):
    """Run a subcommand; bad input or a failed verification is one line on stderr and exit 1/2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except SignatureError as e:
            print(f"{args.audit_prog}: verification FAILED: {e}", file=sys.stderr)
            return 1
        except (ReportInputError, KeyFileError) as e:
            print(f"{args.audit_prog}: {e}", file=sys.stderr)
            return 2

    return run


def add_arguments(subparsers: argparse._SubParsersAction, prog: str = "fedrec audit") -> None:
    """Add ``report``, ``verify`` and ``keygen`` to ``subparsers`` (e.g. those of ``fedrec
    audit``); each sets ``func(args) -> exit code``."""
    p = subparsers.add_parser("report", help="signed privacy audit report of one run (RUN_DIR/audit/report.*)")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a completed run folder")
    p.add_argument("--key", type=Path, metavar="PRIVATE_KEY_PEM", help="sign report.json with this Ed25519 key")
    p.add_argument(
        "--control",
        type=Path,
        metavar="RUN_DIR2",
        help="a non-private run audited the same way, shown beside as the positive control",
    )
    p.set_defaults(func=_guarded(_cmd_report), audit_prog=f"{prog} report")
    p = subparsers.add_parser("verify", help="check a report's signature and that the files it pins are unchanged")
    p.add_argument("report", type=Path, metavar="REPORT_JSON")
    p.add_argument("public_key", type=Path, metavar="PUBLIC_KEY_PEM")
    p.set_defaults(func=_guarded(_cmd_verify), audit_prog=f"{prog} verify")
    p = subparsers.add_parser("keygen", help=f"new Ed25519 signing key: DIR/{KEY_NAME}.pem and .pub.pem")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--force", action="store_true", help="replace existing key files")
    p.set_defaults(func=_guarded(_cmd_keygen), audit_prog=f"{prog} keygen")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.audit.report", description=__doc__.splitlines()[0])
    add_arguments(parser.add_subparsers(dest="command", required=True), prog="simulations.audit.report")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
