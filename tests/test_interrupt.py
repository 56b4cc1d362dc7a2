"""Ctrl-C: the first SIGINT ends a run within seconds with one line and status 130, leaves no
Ray process behind, and the printed command resumes it to a complete result."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulations.interrupt import EXIT_INTERRUPTED

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "dataset.num_users=120",
    "dataset.num_items=80",
    "dataset.mean_interactions=15",
    "partition.num_clients=3",
    "strategy.num_rounds=12",
    "model.num_negatives=16",
]


def _session_processes(sid: int) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "sid,pid,cmd"], capture_output=True, text=True).stdout.splitlines()[1:]
    return [line for line in ps if line.split()[0] == str(sid)]


@pytest.mark.slow
def test_ctrl_c_stops_the_run_in_seconds_and_the_printed_command_resumes_it(tmp_path):
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONPATH": str(ROOT), "FEDREC_CACHE": str(tmp_path / "c")}
    run = tmp_path / "run"
    # Its own session, as a terminal's foreground job: Ctrl-C signals the whole process group.
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.run", *TINY, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no round completed in 10 minutes"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    sent = time.time()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED
    assert time.time() - sent < 30
    last = err.strip().splitlines()[-1]
    assert last.startswith("fedrec: interrupted: stopped;") and "resume=true" in last, err[-3000:]
    assert "Traceback" not in err and "ActorDiedError" not in err, err[-3000:]  # the teardown is silent
    time.sleep(2)
    assert _session_processes(proc.pid) == []  # Ray's processes are gone with it
    assert not (run / "summary.json").exists()
    assert (run / "checkpoint").is_dir() and (run / "ledgers").is_dir()  # what a resume needs
    command = [sys.executable if a == "python" else a for a in shlex.split(last.split("continue with: ")[1])]
    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["timing"]["resumed_from_round"] >= 1
    rounds = [json.loads(line)["round"] for line in metrics.read_text().splitlines()]
    assert rounds == list(range(1, 13))
    assert summary["privacy"]["epsilon_max"] <= 8.0 + 1e-6
