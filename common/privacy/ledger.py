"""Each client's append-only privacy ledger: one row per round it was asked to train.

The ledger is the client's source of truth for the ε it has spent: its accountant is rebuilt
from the rows, so a client that restarts continues from its ledger, never from zero. Rows
are only ever added. The ledger lives in the client's Flower state (simulation) or, when a
state directory is given, in ``<dir>/privacy_ledger.jsonl``, rewritten atomically, so a crash
leaves either the old ledger or the new one.

Every row carries ε from the run's accountant (Opacus RDP or PRV) and from an independent
one (Google's dp-accounting: RDP for rdp, PLD for prv); ``agree`` says whether they are
within 1 % (or 0.02, the PRV accountant's resolution) of each other. Known disagreement: at
large ε (≳ 15, many steps at a high sampling rate) dp-accounting's RDP bound at fractional
orders is more conservative than Opacus' and the rows are flagged.

A round can appear twice: when the server is killed after a client recorded a round but before
the server's checkpoint of it, the resumed run (``resume=true``) asks for that round again. The
client trains it again and appends a second row: both spent ε, and no row is ever replaced.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from common.privacy.accounting import AccountantState, PrivacyConfigError, independent_epsilon
from common.tracking.store import atomic_write

log = logging.getLogger("fedrec")
AGREEMENT = 0.01  # relative difference two accountants may show for the same mechanism
# Below this absolute difference the two do not disagree: Opacus' PRV reports the upper end
# of an interval ±0.01 (its eps_error) around its estimate, which is more than 1 % of a small ε.
RESOLUTION = 0.02
CHECKS = {"rdp": "rdp", "prv": "pld"}
TRAINED, REFUSED = "trained", "refused_budget"
PRIOR = "popularity_prior"  # the prior's one release (see common/privacy/popularity_prior.py)
SPENT = (TRAINED, PRIOR)  # statuses whose mechanism the accountant counts


@dataclass(frozen=True)
class LedgerRow:
    round: int
    status: str  # trained | refused_budget | popularity_prior
    steps: int  # DP-SGD steps taken this round
    steps_total: int
    sample_rate: float
    noise_multiplier: float
    epsilon: float  # spent so far, by ``accountant``
    epsilon_check: float  # the same, by ``check_accountant``
    accountant: str
    check_accountant: str
    agree: bool
    delta: float
    budget_epsilon: float | None


class PrivacyLedger:
    def __init__(self, rows: list[dict] | None = None, path: Path | None = None) -> None:
        self.rows = list(rows or [])
        self.path = path

    @classmethod
    def open(cls, path: str | Path | None, stored: str | None = None) -> PrivacyLedger:
        """The ledger at ``path`` (a file that may not exist yet), else the JSON ``stored``
        in the client's Flower state. With both, the file must hold at least the rows the state
        remembers: a file replaced, truncated or on a volume not mounted must not pass for a
        fresh budget."""
        remembered = json.loads(stored) if stored else []
        if path is None:
            return cls(remembered)
        path = Path(path)
        rows = _read_rows(path)
        if rows[: len(remembered)] != remembered:
            raise PrivacyConfigError(
                f"{path}: holds {len(rows)} ledger rows but this client has recorded {len(remembered)} that it "
                "does not match; refusing to train rather than reset the privacy budget"
            )
        if not rows:
            log.warning("starting a new privacy ledger at %s", path)
        return cls(rows, path)

    def to_json(self) -> str:
        return json.dumps(self.rows)

    def accountant(self) -> AccountantState:
        """Every mechanism the rows record (DP-SGD steps, the prior), as one accountant history."""
        state = AccountantState()
        for r in self.rows:
            if r["status"] in SPENT and r["steps"]:
                state.add(r["noise_multiplier"], r["sample_rate"], r["steps"])
        return state

    def append(self, row: LedgerRow) -> dict:
        entry = asdict(row)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                # Another process writing the same ledger would lose its rows or ours: refuse.
                if _read_rows(self.path) != self.rows:
                    raise PrivacyConfigError(
                        f"{self.path}: changed by another process while this client trained "
                        "(two clients or runs share one ledger); not overwriting it"
                    )
                atomic_write(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in [*self.rows, entry]))
        self.rows.append(entry)
        return entry


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise PrivacyConfigError(
                f"{path}, line {n}: not a ledger row (the ledger is damaged; "
                "refusing to train rather than reset the budget)"
            ) from None
    return rows


def cross_checked(state: AccountantState, delta: float, accountant: str) -> tuple[float, float, str, bool]:
    """(ε by ``accountant``, ε by dp-accounting, the check's name, whether they agree)."""
    eps = state.epsilon(delta, accountant)
    method = CHECKS[accountant]
    check = independent_epsilon(state, delta, method)
    return eps, check, f"dp-accounting {method}", accountants_agree(eps, check)


def accountants_agree(eps: float, check: float) -> bool:
    """Whether two accountants' ε for the same mechanism agree: within ``AGREEMENT`` (1 %)
    relative, or ``RESOLUTION`` (0.02) absolute."""
    if eps == check:
        return True
    if not (math.isfinite(eps) and math.isfinite(check)):
        return False  # one says "no guarantee", the other gives one
    return abs(eps - check) <= max(AGREEMENT * max(eps, check), RESOLUTION)


def central_row(rounds: int, noise: float, q: float, delta: float, accountant: str) -> LedgerRow:
    """The server's ledger row for DP-FedAvg (privacy.noise=central) after ``rounds`` rounds:
    one sampled Gaussian step per round, every round that started counts."""
    state = AccountantState().add(noise, q, rounds)
    eps, check, check_name, agree = cross_checked(state, delta, accountant)
    return LedgerRow(rounds, TRAINED, 1, rounds, q, noise, eps, check, accountant, check_name, agree, delta, None)


def epsilon_after(state: AccountantState, noise: float, q: float, steps: int, delta: float, accountant: str) -> float:
    """ε the client would have spent after ``steps`` more steps of (σ, q)."""
    after = AccountantState(list(state.history)).add(noise, q, steps)
    return after.epsilon(delta, accountant)


DEFAULT_LEDGER_DIR = "ledgers"  # under a simulation's run folder


def ledger_path(cfg, node_config: dict, client_id: int) -> Path | None:
    """Where a client's ledger lives on disk: the SuperNode's ``state-dir`` (node config) in a
    deployment, ``privacy.ledger_dir/client_<id>/`` when set, else in a simulation
    ``RUN_DIR/ledgers/client_<id>/`` (so any killed run can resume), else None (the Flower state)."""
    if node_config.get("state-dir"):
        return Path(str(node_config["state-dir"])) / "privacy_ledger.jsonl"
    root = cfg.privacy.get("ledger_dir")
    deployed = bool((cfg.get("deployment") or {}).get("catalogue"))
    if not root and not deployed and cfg.get("output_dir"):
        root = Path(cfg.output_dir) / DEFAULT_LEDGER_DIR
    if root:
        return Path(root) / f"client_{client_id}" / "privacy_ledger.jsonl"
    return None


def check_server_record(ledger: PrivacyLedger, config, client_id: int) -> None:
    """Refuse to train when this client's ledger holds fewer DP steps than the server recorded
    from it (fit config ``ledger_steps``, JSON {client_id: steps_total}): the ledger was lost or
    reset (a wiped state-dir, a resumed run without on-disk ledgers) and would restart ε at 0."""
    recorded = json.loads(str(config.get("ledger_steps") or "{}")).get(str(client_id))
    held = ledger.accountant().steps
    if recorded is not None and held < int(recorded):
        raise PrivacyConfigError(
            f"client {client_id}: privacy ledger lost or reset: holds {held} steps, the server "
            f"recorded {int(recorded)}; refusing to train from a reset ε budget"
        )


def budget_of(privacy_cfg) -> float:
    """``privacy.budget_epsilon``; null means the run's own target ``privacy.epsilon``."""
    budget = privacy_cfg.get("budget_epsilon")
    return float(budget if budget is not None else privacy_cfg.epsilon)


def within_budget(epsilon: float, budget: float) -> bool:
    # The plan's search lands just under its target; a hair over is rounding, not overspending.
    return epsilon <= budget * (1 + 1e-9)
