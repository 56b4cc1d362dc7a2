"""What the privacy audit report (:mod:`simulations.audit.report`) is about and built from:
the run's identity (config hash, code version, data fingerprint, sha256 of the run files) and
the docs/threat-model.md statements it quotes, pinned by their sha256; plus the small readers
of a run folder the report's other parts share. A file the report cannot use is a
:class:`ReportInputError` with a one-line message naming it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parents[2]
# The run files a report is built from; their sha256 go into the signed payload.
THREAT_MODEL = PROJECT / "docs" / "threat-model.md"
INPUTS = ("config.yaml", "summary.json", "metrics.jsonl", "privacy_ledger.jsonl", "audit/audit.json")


class ReportInputError(ValueError):
    """A run folder or file the report cannot use. The message is one line and names the file."""


# ---------------------------------------------------------------- reading the run folder


def read_json(path: Path, required: bool = True) -> Any:
    if not path.is_file():
        if required:
            raise ReportInputError(f"{path}: not found")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ReportInputError(f"{path}: not readable JSON ({str(e).splitlines()[0]})") from None


def read_jsonl(path: Path) -> tuple[list[dict], list[int]] | None:
    """Rows and the numbers of lines that are not JSON objects; None when the file is absent."""
    if not path.is_file():
        return None
    rows, bad = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        (rows.append(row) if isinstance(row, dict) else bad.append(n))
    return rows, bad


def read_yaml(path: Path, required: bool = True) -> dict | None:
    if not path.is_file():
        if required:
            raise ReportInputError(f"{path}: not found (not a run folder?)")
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ReportInputError(f"{path}: not readable YAML ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: a mapping of settings expected")
    return data


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lookup(tree: Any, dotted: str, default: Any = None) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"`` (a value or a whole sub-tree); ``default`` when any
    step is missing or not a mapping."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


def number(value: Any) -> float | None:
    """A JSON number as float; None for anything else (booleans included)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ---------------------------------------------------------------- what identifies the run


def config_sha256(config: dict) -> str:
    """sha256 of the config as canonical JSON (sorted keys, no spaces): the same settings hash
    alike however the YAML was laid out."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def input_hashes(run_dir: Path) -> dict[str, str | None]:
    """sha256 of each of :data:`INPUTS` in ``run_dir`` (None = absent)."""
    return {n: sha256_file(run_dir / n) if (run_dir / n).is_file() else None for n in INPUTS}


def code_version(root: Path = PROJECT) -> dict:
    """The fedrec checkout writing the report: commit and whether it has uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    try:
        from importlib.metadata import version

        fedrec = version("fedrec")
    except Exception:  # not installed (running from a plain checkout)
        fedrec = "unknown"
    return {
        "commit": commit.strip() if commit else "unknown",
        "dirty": bool(status.strip()) if status is not None else None,
        "fedrec_version": fedrec,
        # The run folder does not record the code that trained it; say what this is.
        "scope": "the fedrec checkout that wrote this report",
    }


def data_fingerprint(config: dict, run_dir: Path) -> dict:
    """sha256 over the data the config points at: for a folder, ``sha256sum``-style lines
    "<sha256>  <relative path>" of every file, sorted by path; for generated data, its
    generator parameters (the whole ``dataset`` block but ``path``) as canonical JSON."""
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    name, path = dataset.get("name"), dataset.get("path")
    if path:
        folder = Path(str(path)).expanduser()
        candidates = [folder] if folder.is_absolute() else [Path.cwd() / folder, PROJECT / folder, run_dir / folder]
        found = next((c for c in candidates if c.is_dir()), None)
        if found is None:
            return {
                "dataset": name,
                "method": "files",
                "path": str(path),
                "sha256": None,
                "note": f"dataset.path {path} not found when the report was written",
            }
        files = sorted(p for p in found.rglob("*") if p.is_file())
        listing = [
            {"name": p.relative_to(found).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in files
        ]
        lines = "".join(f"{f['sha256']}  {f['name']}\n" for f in listing)
        return {
            "dataset": name,
            "method": "files",
            "path": str(found.resolve()),
            "sha256": hashlib.sha256(lines.encode("utf-8")).hexdigest(),
            "files": listing,
        }
    if name == "synthetic":
        params = {k: v for k, v in dataset.items() if k != "path"}
        return {
            "dataset": name,
            "method": "generator parameters",
            "parameters": params,
            "sha256": config_sha256(params),
        }
    return {"dataset": name, "method": "none", "sha256": None, "note": "dataset.path is not set"}


# ---------------------------------------------------------------- the threat model document


def _sections(text: str) -> dict[str, list[str]]:
    """Lines under each heading ("" = before the first ## heading)."""
    out: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            out[current] = []
        elif not line.startswith("# "):
            out[current].append(line)
    return out


def _paragraphs(lines: list[str]) -> list[str]:
    paras, buf = [], []
    for line in [*lines, ""]:
        if line.strip():
            buf.append(line.strip())
        elif buf:
            paras.append(" ".join(buf))
            buf = []
    return paras


def _bullets(lines: list[str]) -> list[str]:
    """Top-level bullets, each with its continuation lines and sub-bullets joined into one."""
    items: list[str] = []
    open_ = False
    for line in lines:
        if line.startswith("- "):
            items.append(line[2:].strip())
            open_ = True
        elif open_ and line.startswith(" ") and line.strip():
            sub = line.strip()
            items[-1] += (" — " + sub[2:]) if sub.startswith("- ") else (" " + sub)
        else:  # a blank line or a paragraph ends the bullet
            open_ = False
    return items


def threat_model_summary(config: dict, path: Path = THREAT_MODEL) -> dict:
    """The key statements of docs/threat-model.md for this run's settings, quoted at report
    time (never a copy kept here), with the document's sha256 so a signed report pins them."""
    rel = path.relative_to(PROJECT).as_posix() if path.is_relative_to(PROJECT) else str(path)
    if not path.is_file():
        return {"path": rel, "sha256": None, "quotes": [], "note": f"{rel} not found"}
    text = path.read_text(encoding="utf-8")
    sec = _sections(text)
    quotes: list[str] = []
    intro = _paragraphs(sec.get("", []))
    quotes += intro[:1]
    secagg = bool(lookup(config, "secagg.enabled"))
    table = [ln for ln in sec.get("What each party sees", []) if ln.startswith("| server")]
    if table:
        cells = [c.strip() for c in table[0].strip().strip("|").split("|")]
        if len(cells) >= 3:
            quotes.append(
                f"What the server sees ({'secagg=secaggplus' if secagg else 'secagg=none'}): "
                f"{cells[2 if secagg else 1]}"
            )
    if secagg:
        quotes += [p for p in _paragraphs(sec.get("What each party sees", [])) if p.startswith("**Collusion")]
    noise = lookup(config, "privacy.noise")
    dp_lines = sec.get("What DP adds", [])
    if lookup(config, "privacy.enabled"):
        quotes += [b for b in _bullets(dp_lines) if f"privacy.noise={noise}" in b.split(":")[0]]
    else:
        quotes += _paragraphs(dp_lines)[:1]
    return {"path": rel, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "quotes": quotes}
