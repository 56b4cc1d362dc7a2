"""``fedrec flower [OVERRIDES…]``: the same run through Flower's own CLI (``flwr run .``).

Flower 1.41 runs ``flwr run .`` on a managed local SuperLink that it starts itself, and that
needs what a fresh clone does not have: ``flower-superlink`` on PATH (the venv's ``bin/``),
no runtime-environment build (``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``; the venv
already holds every dependency), and as many simulated SuperNodes as the config has clients
(Flower's default is 2, and a run asking for 10 then waits at round 1 for ever). This command
checks the overrides, sets those three things for one ``flwr run`` call, names the run folder,
and prints the result table from it. Flower keeps its local SuperLink running afterwards for
the next run (``pkill -f flower-superlink`` stops it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOWER_CONFIG = """[superlink]
default = "local"

[superlink.local]
address = ":local:"
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/, as for `fedrec run`")


def flower_home(cfg) -> Path:
    """A Flower home of fedrec's own (the user's ~/.flwr is left alone), with a local connection."""
    home = Path(cfg.get("cache_dir") or Path.home() / ".cache" / "fedrec") / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.toml"
    if not config.is_file():
        tmp = config.with_suffix(".tmp")
        tmp.write_text(FLOWER_CONFIG)
        tmp.replace(config)
    return home


def flower_command(overrides: list[str], num_clients: int) -> list[str]:
    flwr = str(Path(sys.executable).with_name("flwr"))
    run_config = "overrides=" + json.dumps(" ".join(overrides))  # a TOML string
    return [
        flwr,
        "run",
        str(ROOT),
        "--stream",
        "--federation-config",
        f"num-supernodes={num_clients}",
        "--run-config",
        run_config,
    ]


def run_from_args(args: argparse.Namespace) -> int:
    from common.config import ConfigError, compose

    overrides = list(args.overrides)
    try:
        cfg = compose(overrides)
    except (ConfigError, ValueError) as exc:
        print(f"fedrec flower: error: {exc}", file=sys.stderr)
        return 2
    if cfg.get("baseline") is not None or (cfg.get("deployment") or {}).get("catalogue"):
        print(
            "fedrec flower: error: runs a federated simulation only; baselines run with `fedrec run`, "
            "a deployment against its own SuperLink (docs/deployment.md)",
            file=sys.stderr,
        )
        return 2
    if cfg.partition.scheme == "cross_device":
        from common.data.run import load_run_data

        num_clients = load_run_data(cfg).num_clients  # one per user: known after the data
    else:
        num_clients = int(cfg.partition.num_clients)
    if not cfg.get("output_dir"):  # the SuperLink's working folder is not the caller's
        out = Path("runs") / time.strftime("flower-%Y%m%d-%H%M%S")
        overrides.append(f"output_dir={out.resolve()}")
    out = Path(compose(overrides).output_dir)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(flower_home(cfg)),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    command = flower_command(overrides, num_clients)
    print("fedrec flower: " + shlex.join(command[1:]), file=sys.stderr)
    code = subprocess.run(command, env=env, cwd=ROOT).returncode
    summary = out / "summary.json"
    if code != 0 or not summary.is_file():
        print(f"fedrec flower: the run did not complete (flwr exit {code}); see {out}", file=sys.stderr)
        return code or 1
    from simulations.table import format_table, protection_line

    done = json.loads(summary.read_text())
    print(format_table([("federated DP" if cfg.privacy.enabled else "federated", done)]))
    print(protection_line(done))
    print(f"run folder: {out}")
    return 0
