"""The simulation engine attaches to an existing Ray cluster (simulation.ray_address).

A real head node is started with ``ray start --head --block`` in its own process group on
127.0.0.1; a small federated run is pointed at it; the cluster's own actor table must then list
the run's ClientApp actors, and the run must not have started a Ray instance of its own. The
cluster is stopped by killing the process group this test started.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
SMALL = [
    "dataset.num_users=60",
    "dataset.num_items=50",
    "dataset.mean_interactions=10",
    "model.num_negatives=16",
    "partition.num_clients=3",
    "strategy.num_rounds=2",
    "privacy=none",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(address: str, env: dict, head: subprocess.Popen, timeout: float = 90) -> None:
    probe = f"import ray; ray.init(address={address!r}, logging_level='ERROR'); print(ray.cluster_resources())"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}")
        if subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=60).returncode == 0:
            return
        time.sleep(1)
    raise TimeoutError(f"no Ray cluster at {address} after {timeout} s")


def _actor_classes(address: str, env: dict) -> list[str]:
    """Class names of every actor the cluster's control store knows, dead ones included."""
    code = (
        "import json, ray; from ray._private.state import actors; ray.init(address=%r, logging_level='ERROR'); "
        "print(json.dumps([a['ActorClassName'] for a in actors().values()]))"
    ) % address
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_simulation_runs_on_an_existing_ray_cluster(tmp_path):
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)  # the run must get its address from the override
    head = subprocess.Popen(
        [
            str(RAY),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(address, env, head)
        assert "ClientAppActor" not in _actor_classes(address, env)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "simulations.run",
                *SMALL,
                f"simulation.ray_address={address}",
                f"hydra.run.dir={tmp_path / 'run'}",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-3000:]
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["metrics"]["full"]["hr@10"] > 0
        # The run's clients were actors of this cluster, and no local Ray was started.
        assert _actor_classes(address, env).count("ClientAppActor") >= 1
        assert "Started a local Ray instance" not in log
        assert head.poll() is None  # the run leaves the cluster up
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)  # the head and every process it spawned
            try:
                head.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait(timeout=30)
        _kill_leftovers(head.pid)
        shutil.rmtree(temp, ignore_errors=True)


def _kill_leftovers(pgid: int) -> None:
    """Ray processes of this group still alive a moment after the head stopped."""
    time.sleep(1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
