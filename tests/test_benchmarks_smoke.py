"""Smoke tests for the scripts in benchmarks/: they run end to end on a tiny setting."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--users", "40", "--repeats", "1", "--dataset-overrides", "dataset.num_users=60", "dataset.num_items=50"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dp_overhead.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_dp_overhead_prints_a_positive_ratio():
    proc = _run(*TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("projection"))
    ratio = float(row.split()[-1])
    assert ratio > 0 and re.search(r"torch threads: \d+", proc.stdout)


def test_dp_overhead_json():
    proc = _run(*TINY, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    (row,) = out["results"]
    assert row["model"] == "projection" and row["ratio"] > 0 and row["users"] == 40
    assert row["examples_non_dp"] == 40 and row["examples_dp"] > 0
