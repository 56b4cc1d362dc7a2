"""`fedrec flower`: the run through Flower's own CLI (`flwr run .`) works from a fresh shell
(no venv activated, Flower's defaults), on as many simulated SuperNodes as clients."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_simulation import SMALL  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FEDREC = str(Path(sys.executable).with_name("fedrec"))


def _env(tmp_path: Path) -> dict:
    # What a fresh shell has: the venv not on PATH, no FLWR_* settings of ours.
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_DISABLE")}
    return {**env, "PATH": path, "FLWR_TELEMETRY_ENABLED": "0", "HOME": str(tmp_path / "home")}


def test_a_bad_override_is_one_line_before_flower_starts(tmp_path):
    proc = subprocess.run(
        [FEDREC, "flower", "strategy.num_round=3"], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fedrec flower: error: strategy.num_round=3: fedrec's config has no such key (did you mean strategy.num_rounds?)"
    ]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_flower_cli_runs_the_simulation_and_prints_its_table(tmp_path):
    cache = tmp_path / "cache"
    try:
        proc = subprocess.run(
            [FEDREC, "flower", *SMALL, f"cache_dir={cache}"],
            cwd=tmp_path,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        # Flower leaves its managed SuperLink running for later runs; this one is ours.
        subprocess.run(["pkill", "-f", str(cache / "flwr-home")], check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "num-supernodes=3" in proc.stderr  # as many simulated SuperNodes as clients
    lines = proc.stdout.strip().splitlines()[-5:]  # Flower's own lines come first
    assert lines[0].split()[:2] == ["run", "NDCG@10"] and lines[2].startswith("federated DP"), proc.stdout
    run = Path(lines[-1].removeprefix("run folder: "))
    assert run.parent == tmp_path / "runs"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["secure_aggregation"]["rounds_completed"] == 2
    assert summary["privacy"]["noise_placement"] == "distributed"
    ndcg = float(lines[2].split()[2])
    assert ndcg == pytest.approx(summary["metrics"]["full"]["ndcg@10"], abs=1e-4)
