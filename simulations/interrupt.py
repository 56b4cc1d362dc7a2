"""Ctrl-C during a run: stop within seconds, leave what a resume needs, say how to resume.

Flower's simulation runs the ServerApp in a thread and Ray in other processes; a
KeyboardInterrupt raised in the main thread unwinds only part of it (a long traceback, then a
hang with Ray alive until a second Ctrl-C). So the first SIGINT is handled here: one line,
Ray shut down, exit status 130. Once it is handled, the process's own stdout and stderr go to
/dev/null: what Flower's threads and Ray print while being torn down (dead-actor tracebacks)
is noise about the stop the user asked for. Nothing needs flushing: the server's checkpoint (after every
completed round) and the clients' ledgers are written atomically, so the folder holds the
last completed round, as after ``kill -9``, and ``resume=true`` continues from it.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd command
GRACE_SECONDS = 15.0  # Ray's shutdown is given this long before the process exits anyway


def resume_hint(task_overrides: list[str], out: Path, federated: bool) -> str:
    if not federated:
        return "a baseline has no checkpoint: run it again"
    kept = [o for o in task_overrides if o.split("=", 1)[0] not in ("resume", "hydra.run.dir")]
    return "continue with: " + shlex.join(
        ["python", "-m", "simulations.run", *kept, "resume=true", f"hydra.run.dir={out}"]
    )


def stop_on_interrupt(message: str) -> None:
    """From now on the first SIGINT prints ``message`` (one line) and ends the process with
    status 130 after shutting Ray down; a second SIGINT ends it at once."""
    hit = threading.Event()

    def handler(signum, frame) -> None:  # noqa: ARG001
        if hit.is_set():
            os._exit(EXIT_INTERRUPTED)
        hit.set()
        stderr = _silence_output()
        timer = threading.Timer(GRACE_SECONDS, _exit, (message, stderr))
        timer.daemon = True
        timer.start()
        _shutdown_ray()
        logging.shutdown()
        _exit(message, stderr)

    signal.signal(signal.SIGINT, handler)


def _silence_output() -> int:
    """Point fds 1 and 2 at /dev/null (after flushing what the run printed); return a copy of
    the real stderr for the last line."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    return saved


def _exit(message: str, stderr: int) -> None:
    os.write(stderr, f"fedrec: interrupted: {message}\n".encode())
    os._exit(EXIT_INTERRUPTED)


def _shutdown_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is None:
        return
    try:
        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - exiting anyway; a half-shut Ray is what os._exit leaves
        pass
