"""Launching the Flower apps on Flower's simulation engine with a run config.

``flwr.simulation.run_simulation`` is deprecated and passes an empty run_config, and
``flwr run`` leaves a background SuperLink behind; so the harness calls the engine the way
``flwr run`` does for a local simulation: the apps are loaded by their module path from this
project (``is_app=True``), and the run's ``override_config`` carries our Hydra overrides, which
Flower fuses with ``[tool.flwr.app.config]`` from pyproject.toml for every node.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVER_APP = "server.app:app"
CLIENT_APP = "client.app:app"


def run_flower_simulation(
    overrides: str,
    num_clients: int,
    num_cpus_per_client: float = 1,
    num_gpus_per_client: float = 0.0,
    backend: str = "ray",
    ray_address: str | None = None,
    poll_interval: float | None = None,
) -> None:
    """Run the ServerApp and ``num_clients`` ClientApps on the Ray simulation engine.

    ``ray_address`` (default: ``simulation.ray_address`` in the composed config, then the
    RAY_ADDRESS environment variable) attaches to a running Ray
    cluster ("HOST:PORT", or "auto") instead of starting a local one; Ray then schedules the
    clients over every node of that cluster. ``poll_interval`` (default
    ``simulation.poll_interval``): see simulations/engine_polling.py.
    """
    if ray_address is None or poll_interval is None:
        from common.config import compose

        sim = compose(overrides).simulation
        ray_address = ray_address or sim.get("ray_address")
        poll_interval = float(sim.get("poll_interval", 0.1) if poll_interval is None else poll_interval)
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Ray workers import the apps by module path: make this project importable there too.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network calls from a run
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    # As _run_simulation does for a Run it creates itself, plus our override_config.
    run_config_override = {"overrides": overrides}
    run_id = generate_rand_int_from_bytes(RUN_ID_NUM_BYTES)
    run = Run.create_empty(run_id=run_id)
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    run.override_config = run_config_override
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    fused = get_fused_config_from_dir(PROJECT_ROOT, run_config_override)
    server_context = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=fused)
    init_args: dict = {"include_dashboard": False}
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        # Flower's Ray backend passes init_args to ray.init; with an address it connects
        # (and, at the end, kills only its own actors, leaving the cluster up).
        init_args = {"address": address}
    backend_config = {
        "client_resources": {"num_cpus": num_cpus_per_client, "num_gpus": num_gpus_per_client},
        "init_args": init_args,
    }
    from simulations.engine_polling import fast_polling

    with fast_polling(poll_interval):
        _run_flower(num_clients, server_context, run, backend, backend_config)


def _run_flower(num_clients: int, server_context, run, backend: str, backend_config: dict) -> None:
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    _run_simulation(
        num_supernodes=num_clients,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app_attr=CLIENT_APP,
        server_app_attr=SERVER_APP,
        server_app_context=server_context,
        app_dir=str(PROJECT_ROOT),
        run=run,
        backend_name=backend,
        backend_config=backend_config,
        is_app=True,
    )
