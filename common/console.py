"""What the console shows: fedrec's own lines first, third-party INFO chatter held back.

Flower logs every round's protocol steps at INFO (and SecAgg+'s stages at DEBUG in every
client), Ray adds its own; around fedrec's one line per round they made `make run` ~200 lines.
By default those loggers show WARNING and above; ``FEDREC_VERBOSE=1`` shows everything again
(set it before the run: the simulated clients inherit it).
"""

from __future__ import annotations

import logging
import os

VERBOSE_ENV = "FEDREC_VERBOSE"
THIRD_PARTY = ("flwr", "ray", "opacus", "transformers", "datasets", "filelock", "urllib3", "alembic")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") not in ("", "0", "false", "no")


def quiet_third_party() -> None:
    """Third-party loggers at WARNING unless FEDREC_VERBOSE=1."""
    if verbose():
        return
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.WARNING)
