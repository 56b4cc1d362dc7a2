"""A run's output folder (README, "What the main job does"): config.yaml, metrics.jsonl, summary.json.

``summary.json`` is written once, atomically, and only when the run completed, so a folder
without it is an incomplete run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from common.config import to_yaml


def atomic_write(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one (a power cut included)."""
    replace_durably(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def replace_durably(path: Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: the data is fsynced before the rename and the
    folder after it, and a failed write leaves no temp file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def json_safe(value: Any) -> Any:
    """JSON without NaN/Infinity (not valid JSON): non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return json_safe(value.item())
    return value


class RunFailed(RuntimeError):
    """A run that ended without a result; the one-line reason is kept in ``failed.txt``."""


class RunStore:
    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def summary_path(self) -> Path:
        return self.dir / "summary.json"

    def start(self, cfg: DictConfig) -> None:
        """Begin a run here: the config, and no metrics or summary left from an earlier run
        (a stale summary.json would pass for this run's result)."""
        self.summary_path.unlink(missing_ok=True)
        self.failure_path.unlink(missing_ok=True)
        (self.dir / "metrics.jsonl").unlink(missing_ok=True)
        (self.dir / "privacy_ledger.jsonl").unlink(missing_ok=True)
        # The clients' default ledgers belong to the run this folder held (a chosen
        # privacy.ledger_dir elsewhere persists across runs, as budgets there should).
        shutil.rmtree(self.dir / "ledgers", ignore_errors=True)
        atomic_write(self.dir / "config.yaml", to_yaml(cfg))

    @property
    def failure_path(self) -> Path:
        return self.dir / "failed.txt"

    def fail(self, reason: str) -> RunFailed:
        """Record why the run ended without a result (no summary.json is written) and return
        the exception to raise; the harness prints the reason as its one line."""
        atomic_write(self.failure_path, reason + "\n")
        return RunFailed(reason)

    def read_failure(self) -> str | None:
        return self.failure_path.read_text().strip() if self.failure_path.is_file() else None

    def append_metrics(self, row: dict) -> None:
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(json_safe(row), sort_keys=True) + "\n")

    def append_ledger(self, row: dict) -> None:
        """One client's privacy-ledger row for one round, as the server received it."""
        with open(self.dir / "privacy_ledger.jsonl", "a") as f:
            f.write(json.dumps(json_safe(row), sort_keys=True) + "\n")

    def read_metrics(self) -> list[dict]:
        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_summary(self, summary: dict) -> None:
        atomic_write(self.summary_path, json.dumps(json_safe(summary), indent=2, sort_keys=True))

    def read_summary(self) -> dict:
        return json.loads(self.summary_path.read_text())
