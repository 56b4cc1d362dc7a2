"""Privacy accounting for user-level DP-SGD (README, "Privacy model").

Three rules this module enforces:
- δ < 1 / (number of users protected) — :func:`check_delta`;
- the noise multiplier is computed once for the whole training plan (all rounds × local steps
  at one sampling rate), never per round — :func:`noise_multiplier_for_plan`;
- each client's accountant history survives rounds and restarts — :class:`AccountantState`
  serialises to flat lists that fit a Flower ConfigRecord, so ε keeps growing instead of
  being reset every round.

ε is computed with Opacus (RDP or PRV) and can be cross-checked with Google's dp-accounting
(:func:`independent_epsilon`: RDP, or PLD which should agree with Opacus PRV).
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Opacus's default RDP orders; dp-accounting gets the same grid so RDP vs RDP compares like
# with like (its own default grid is coarser and would give a different, larger ε).
RDP_ORDERS: list[float] = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))

ACCOUNTANTS = ("rdp", "prv")

HistoryEntry = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps), as in Opacus


class PrivacyConfigError(ValueError):
    """A privacy setting that cannot give the promised guarantee. The message is one line."""


def check_delta(delta: float, num_users: int) -> None:
    """Refuse δ outside (0, 1/num_users): with δ ≥ 1/n, "leak one user's data outright" fits
    inside the guarantee."""
    if not num_users or num_users < 1:
        raise PrivacyConfigError(f"privacy: cannot check delta={delta} against num_users={num_users}")
    bound = 1.0 / num_users
    if not (isinstance(delta, numbers.Real) and 0 < delta < bound):
        raise PrivacyConfigError(
            f"privacy.delta={delta} must satisfy 0 < delta < 1/num_users = 1/{num_users} "
            f"= {bound:.3g} (users protected: {num_users})"
        )


def _check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise PrivacyConfigError(f"unknown accountant {accountant!r}; known: {', '.join(ACCOUNTANTS)}")
    return accountant


def noise_multiplier_for_plan(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
    prefix: Iterable[HistoryEntry] = (),
) -> float:
    """Noise multiplier σ such that ``steps`` Poisson-sampled Gaussian steps at rate q spend at
    most ``target_epsilon`` (and at least ``target_epsilon - epsilon_tolerance``) at ``delta``.

    ``steps`` is the whole plan of one client: rounds × local steps per round. Calling this per
    round with the per-round step count would let the total ε grow with the number of rounds.
    ``prefix`` holds other mechanisms of the same plan (e.g. the popularity prior's release):
    σ is then chosen so that their composition with the steps spends the target.
    Raises PrivacyConfigError before any training if no σ reaches the target.
    """
    _check_accountant(accountant)
    plan = f"epsilon={target_epsilon}, delta={delta}, sample_rate q={sample_rate}, steps={steps}"
    if not (isinstance(target_epsilon, numbers.Real) and 0 < target_epsilon < math.inf):
        raise PrivacyConfigError(f"privacy: unreachable target ({plan}): epsilon must be a finite number > 0")
    if not (0 < delta < 1):
        raise PrivacyConfigError(f"privacy: bad delta ({plan}): need 0 < delta < 1")
    if not (0 < sample_rate <= 1):
        raise PrivacyConfigError(f"privacy: bad sample rate ({plan}): need 0 < q <= 1")
    if int(steps) != steps or steps < 1:
        raise PrivacyConfigError(f"privacy: bad plan ({plan}): steps must be a positive integer")

    prefix = list(prefix)
    if prefix:
        return _search_with_prefix(
            float(target_epsilon), delta, sample_rate, int(steps), accountant, epsilon_tolerance, prefix, plan
        )
    # Imported here: opacus pulls in torch, and callers that only validate δ should not pay that.
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            # The search tries huge σ, where RDP warns "optimal order is the largest alpha";
            # that is about the trial points, not about the σ returned.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            sigma = get_noise_multiplier(
                target_epsilon=float(target_epsilon),
                target_delta=float(delta),
                sample_rate=float(sample_rate),
                steps=int(steps),
                accountant=accountant,
                epsilon_tolerance=epsilon_tolerance,
            )
    except Exception as e:  # opacus raises ValueError("The privacy budget is too low.") and
        # PRV may fail numerically at huge σ; either way no usable σ exists.
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PrivacyConfigError(
            f"privacy: no noise multiplier reaches {plan} with the {accountant} accountant "
            f"(opacus: {msg}); raise epsilon or delta, or lower q or steps"
        ) from e
    return float(sigma)


def _search_with_prefix(
    target: float,
    delta: float,
    q: float,
    steps: int,
    accountant: str,
    tolerance: float,
    prefix: list[HistoryEntry],
    plan: str,
) -> float:
    """Bisection on σ for ``prefix`` composed with ``steps`` steps of (σ, q), as Opacus'
    own search does for a plan without a prefix."""

    def eps(sigma: float) -> float:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return AccountantState(list(prefix)).add(sigma, q, steps).epsilon(delta, accountant)

    floor = AccountantState(list(prefix)).epsilon(delta, accountant)
    if not floor < target:
        raise PrivacyConfigError(
            f"privacy: no noise multiplier reaches {plan} with the {accountant} accountant: "
            f"the plan's other mechanisms already spend ε={floor:.3f}"
        )
    low, high = 0.0, 10.0
    while eps(high) > target:
        high *= 2
        if high > 1e6:
            raise PrivacyConfigError(f"privacy: no noise multiplier reaches {plan} with the {accountant} accountant")
    while True:  # invariant: eps(high) <= target < eps(low)
        mid = (low + high) / 2
        e = eps(mid)
        if e > target:
            low = mid
        else:
            high = mid
            if e >= target - tolerance:
                return high


def _make_opacus_accountant(kind: str) -> Any:
    from opacus.accountants import PRVAccountant, RDPAccountant

    return {"rdp": RDPAccountant, "prv": PRVAccountant}[_check_accountant(kind)]()


@dataclass
class AccountantState:
    """One client's DP-SGD history: ``(noise_multiplier, sample_rate, steps)`` entries.

    Same format as an Opacus accountant's ``history``, so it can be copied in and out of the
    PrivacyEngine's accountant (:meth:`extend`, :meth:`to_opacus`). Persist ``to_dict()`` with
    the client's state and restore it every round; ε is then the composition over all rounds.
    """

    history: list[HistoryEntry] = field(default_factory=list)

    def add(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> AccountantState:
        """Record ``steps`` steps of one mechanism; merges with the last entry when it is the
        same mechanism (as Opacus's ``step`` does), so the state stays short over many rounds."""
        if int(steps) != steps or steps < 0:
            raise PrivacyConfigError(f"privacy: steps must be a non-negative integer, got {steps}")
        if not (noise_multiplier >= 0 and 0 <= sample_rate <= 1):
            raise PrivacyConfigError(f"privacy: bad accountant entry noise={noise_multiplier}, q={sample_rate}")
        if steps == 0:
            return self
        noise, q = float(noise_multiplier), float(sample_rate)
        if self.history and self.history[-1][:2] == (noise, q):
            self.history[-1] = (noise, q, self.history[-1][2] + int(steps))
        else:
            self.history.append((noise, q, int(steps)))
        return self

    def extend(self, history: Iterable[tuple[float, float, int]]) -> AccountantState:
        """Append another history, e.g. ``privacy_engine.accountant.history`` of this round."""
        for noise, q, steps in history:
            self.add(noise, q, steps)
        return self

    @property
    def steps(self) -> int:
        return sum(s for _, _, s in self.history)

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """Three parallel flat lists (a Flower ConfigRecord holds lists of scalars, not tuples)."""
        return {
            "noise_multiplier": [float(n) for n, _, _ in self.history],
            "sample_rate": [float(q) for _, q, _ in self.history],
            "steps": [int(s) for _, _, s in self.history],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AccountantState:
        try:
            cols = [list(d[k]) for k in ("noise_multiplier", "sample_rate", "steps")]
        except KeyError as e:
            raise PrivacyConfigError(f"privacy: accountant state lacks key {e}") from e
        if len({len(c) for c in cols}) != 1:
            raise PrivacyConfigError(f"privacy: accountant state lists differ in length: {[len(c) for c in cols]}")
        return cls().extend(zip(*cols))

    def to_opacus(self, accountant: str = "rdp") -> Any:
        """A fresh Opacus accountant carrying this history (give it to the PrivacyEngine, or
        read ε from it)."""
        acc = _make_opacus_accountant(accountant)
        acc.history = list(self.history)  # a copy: Opacus mutates history in place on step()
        return acc

    def epsilon(self, delta: float, accountant: str = "rdp", **kwargs: Any) -> float:
        """ε spent so far at ``delta`` by Opacus's RDP or PRV accountant. ``kwargs`` go to
        ``get_epsilon`` (e.g. ``alphas`` for RDP, ``eps_error`` for PRV)."""
        if not (0 < delta < 1):
            raise PrivacyConfigError(f"privacy: bad delta={delta}: need 0 < delta < 1")
        active = [(n, q, s) for n, q, s in self.history if q > 0 and s > 0]
        if not active:
            return 0.0
        if any(n == 0 for n, _, _ in active):
            return math.inf  # a noiseless step on sampled data: no finite guarantee
        return float(AccountantState(active).to_opacus(accountant).get_epsilon(delta, **kwargs))


def independent_epsilon(
    history: AccountantState | Iterable[tuple[float, float, int]],
    delta: float,
    method: str = "rdp",
    orders: list[float] | None = None,
    value_discretization_interval: float = 1e-4,
) -> float:
    """The same composition computed with Google's dp-accounting, to cross-check Opacus.

    Each entry is ``SelfComposed(PoissonSampled(q, Gaussian(σ)), steps)``; entries are composed.
    ``method="rdp"`` uses RdpAccountant on ``orders`` (default: Opacus's grid);
    ``method="pld"`` uses PLDAccountant (pessimistic, comparable to Opacus PRV).

    Known difference: at fractional RDP orders dp-accounting uses a more conservative series
    than Opacus (numerical integration agrees with Opacus), so its RDP ε can be a little larger
    (≈0.3 % at q=0.25, σ=2); at integer orders both are exact and agree to rounding.
    """
    import dp_accounting as dpa

    entries = list(history.history if isinstance(history, AccountantState) else history)
    events = [
        dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(n)), int(s))
        for n, q, s in entries
        if q > 0 and s > 0
    ]
    if not events:
        return 0.0
    if method == "rdp":
        acc = dpa.rdp.RdpAccountant(orders=orders or RDP_ORDERS)
    elif method == "pld":
        acc = dpa.pld.PLDAccountant(value_discretization_interval=value_discretization_interval)
    else:
        raise ValueError(f"unknown method {method!r}; known: rdp, pld")
    # dp-accounting logs one warning per fractional order it drops (series not converging);
    # the result stays a valid upper bound, so keep the logs quiet here.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        acc.compose(dpa.ComposedDpEvent(events))
        return float(acc.get_epsilon(delta))
    finally:
        absl_logger.setLevel(level)
