"""Progress of a run on a terminal: a rich bar (round k/N, clients done, ε so far, ETA).

Without a terminal (CI, log files, a SuperLink's ServerApp process) there is no bar: the run
logs one line per round instead, which the callers do anyway. ``FEDREC_PROGRESS=0`` turns
the bar off on a terminal too, ``=1`` forces it on.
"""

from __future__ import annotations

import logging
import os
import sys


def progress_wanted() -> bool:
    forced = os.environ.get("FEDREC_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty() and not os.environ.get("CI")


class RunProgress:
    """One bar for one run; every call is a no-op when there is no terminal."""

    def __init__(self, total: int, unit: str = "round", description: str = "") -> None:
        self._bar = None
        self._redirected: list[tuple[logging.StreamHandler, object]] = []
        if not progress_wanted() or total <= 0:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(f"{unit}s"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task(description or "run", total=total, status="")
        self._bar.start()
        self._route_log_lines()

    def _route_log_lines(self) -> None:
        """Log lines written straight to the terminal would tear the bar; while it is live,
        console handlers write through the bar's redirected streams instead (printed above it)."""
        for name in ("", "flwr"):
            for h in logging.getLogger(name).handlers:
                if type(h) is not logging.FileHandler and isinstance(h, logging.StreamHandler):
                    target = (
                        sys.stderr if h.stream is sys.__stderr__ else sys.stdout if h.stream is sys.__stdout__ else None
                    )
                    if target is not None:
                        self._redirected.append((h, h.setStream(target)))

    def update(self, completed: int, status: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, status=status)

    def close(self) -> None:
        if self._bar is None:
            return
        for handler, stream in self._redirected:
            handler.setStream(stream)
        self._redirected.clear()
        self._bar.stop()
        self._bar = None


def round_status(clients_ok: int | None, clients: int | None, epsilon: float | None, ndcg: float | None) -> str:
    """The status text after a round: ``clients 10/10  ε 4.72  ndcg@10 0.1043``."""
    parts = []
    if clients is not None:
        parts.append(f"clients {clients_ok if clients_ok is not None else '?'}/{clients}")
    parts.append(f"ε {epsilon:.2f}" if epsilon is not None else "ε inf")
    if ndcg is not None:
        parts.append(f"ndcg@10 {ndcg:.4f}")
    return "  ".join(parts)
