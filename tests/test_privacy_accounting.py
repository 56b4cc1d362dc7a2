"""Privacy accounting: δ bound, noise for a whole plan, persisted accountant, cross-checks."""

import math
import warnings

import pytest

from common.privacy.accounting import (
    AccountantState,
    PrivacyConfigError,
    check_delta,
    independent_epsilon,
    noise_multiplier_for_plan,
)

# Opacus warns about its insecure RNG on import in some paths; irrelevant for accounting.
warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")

# (σ, q, steps) grid: DESIGN's reference point, a DP-SGD-like plan, a low-noise plan.
GRID = [(1.0, 0.01, 1000), (2.0, 0.25, 160), (0.8, 0.05, 200)]
MULTI = [(1.0, 0.1, 50), (1.5, 0.2, 30), (1.0, 0.1, 20)]
DELTA = 1e-5


def rel(a, b):
    return abs(a - b) / abs(b)


# --- δ -------------------------------------------------------------------------------------


def test_check_delta_accepts_below_one_over_n():
    check_delta(1e-4, 943)
    check_delta(0.009, 100)


@pytest.mark.parametrize("delta", [1 / 943, 0.01, 0.0, -1e-5, float("nan"), 1.0])
def test_check_delta_refuses(delta):
    with pytest.raises(PrivacyConfigError) as e:
        check_delta(delta, 943)
    msg = str(e.value)
    assert "\n" not in msg and str(delta) in msg and "943" in msg and "0.00106" in msg


def test_check_delta_refuses_no_users():
    with pytest.raises(PrivacyConfigError):
        check_delta(1e-5, 0)


# --- noise for the whole plan --------------------------------------------------------------


def test_noise_for_plan_reaches_target_when_fed_back():
    # DESIGN reference: ε = 8, δ = 1e-4, q = 0.25, 160 steps gives σ ≈ 2.0.
    eps, delta, q, steps = 8.0, 1e-4, 0.25, 160
    sigma = noise_multiplier_for_plan(eps, delta, q, steps)
    assert 1.9 < sigma < 2.1
    spent = AccountantState().add(sigma, q, steps).epsilon(delta)
    assert eps - 0.01 <= spent <= eps  # opacus's default epsilon_tolerance is 0.01


def test_noise_for_plan_prv():
    eps, q, steps = 2.0, 0.05, 100
    sigma = noise_multiplier_for_plan(eps, DELTA, q, steps, accountant="prv")
    spent = AccountantState().add(sigma, q, steps).epsilon(DELTA, accountant="prv")
    assert eps - 0.01 <= spent <= eps


def test_noise_for_plan_is_for_all_rounds_not_one():
    # Same budget over 4× the steps needs more noise; using the per-round σ would overspend.
    per_round = noise_multiplier_for_plan(4.0, DELTA, 0.1, 50)
    whole = noise_multiplier_for_plan(4.0, DELTA, 0.1, 200)
    assert whole > per_round
    assert AccountantState().add(per_round, 0.1, 200).epsilon(DELTA) > 4.0


@pytest.mark.parametrize("eps", [0.0, -1.0, float("inf"), float("nan"), 0.01])
def test_unreachable_epsilon_raises_one_line(eps):
    # 0.01 is below the floor any RDP conversion reaches at δ = 1e-5: opacus gives up.
    with pytest.raises(PrivacyConfigError) as e:
        noise_multiplier_for_plan(eps, DELTA, 0.01, 1000)
    msg = str(e.value)
    assert "\n" not in msg
    for part in (f"epsilon={eps}", f"delta={DELTA}", "q=0.01", "steps=1000"):
        assert part in msg


@pytest.mark.parametrize(
    "args", [(1.0, 0.0, 0.01, 10), (1.0, 1e-5, 0.0, 10), (1.0, 1e-5, 1.5, 10), (1.0, 1e-5, 0.1, 0)]
)
def test_bad_plan_raises(args):
    with pytest.raises(PrivacyConfigError):
        noise_multiplier_for_plan(*args)


# --- persisted accountant ------------------------------------------------------------------


def test_state_merges_equal_mechanisms_and_round_trips():
    s = AccountantState().add(1.0, 0.1, 5).add(1.0, 0.1, 7).add(1.2, 0.1, 3).add(1.2, 0.1, 0)
    assert s.history == [(1.0, 0.1, 12), (1.2, 0.1, 3)]
    assert s.steps == 15
    d = s.to_dict()
    assert d == {"noise_multiplier": [1.0, 1.2], "sample_rate": [0.1, 0.1], "steps": [12, 3]}
    assert all(type(v) is float for v in d["noise_multiplier"] + d["sample_rate"])
    assert all(type(v) is int for v in d["steps"])
    assert AccountantState.from_dict(d) == s
    assert AccountantState.from_dict(AccountantState().to_dict()) == AccountantState()


def test_state_fits_a_flower_config_record():
    flwr_common = pytest.importorskip("flwr.common")
    s = AccountantState().add(1.0, 0.1, 5).add(1.2, 0.2, 3)
    record = flwr_common.ConfigRecord(s.to_dict())
    assert AccountantState.from_dict(record) == s


def test_bad_state_raises():
    with pytest.raises(PrivacyConfigError):
        AccountantState.from_dict({"noise_multiplier": [1.0], "sample_rate": [0.1], "steps": []})
    with pytest.raises(PrivacyConfigError):
        AccountantState.from_dict({"noise_multiplier": [1.0], "steps": [1]})
    with pytest.raises(PrivacyConfigError):
        AccountantState().add(1.0, 0.1, -1)


def test_epsilon_over_rounds_is_not_reset():
    sigma, q, steps_per_round = 1.1, 0.1, 40
    # Round 1 on a client, persisted as a plain dict (what the client's state store keeps).
    stored = AccountantState().add(sigma, q, steps_per_round).to_dict()
    eps_round1 = AccountantState.from_dict(stored).epsilon(DELTA)
    # Round 2 restores it and trains again.
    state = AccountantState.from_dict(stored).add(sigma, q, steps_per_round)
    combined = AccountantState().add(sigma, q, 2 * steps_per_round)
    for acc in ("rdp", "prv"):
        assert state.epsilon(DELTA, acc) == pytest.approx(combined.epsilon(DELTA, acc), rel=1e-12)
    assert state.epsilon(DELTA) > eps_round1 * 1.2


def test_state_exchanges_history_with_opacus():
    state = AccountantState().add(1.0, 0.1, 10)
    acc = state.to_opacus("rdp")
    for _ in range(5):  # what the PrivacyEngine's optimizer does each step
        acc.step(noise_multiplier=1.0, sample_rate=0.1)
    assert state.history == [(1.0, 0.1, 10)]  # the state itself was not mutated
    assert AccountantState(list(acc.history)).epsilon(DELTA) == pytest.approx(
        AccountantState().add(1.0, 0.1, 15).epsilon(DELTA)
    )
    assert AccountantState().extend(acc.history).history == [(1.0, 0.1, 15)]


def test_degenerate_histories():
    assert AccountantState().epsilon(DELTA) == 0.0
    assert math.isinf(AccountantState().add(0.0, 0.1, 1).epsilon(DELTA))
    assert independent_epsilon([], DELTA) == 0.0


# --- cross-check with Google's dp-accounting -----------------------------------------------


@pytest.mark.parametrize("history", [[g] for g in GRID] + [MULTI], ids=str)
def test_opacus_rdp_matches_dp_accounting_rdp(history):
    state = AccountantState().extend(history)
    ours, theirs = state.epsilon(DELTA, "rdp"), independent_epsilon(state, DELTA, "rdp")
    assert rel(ours, theirs) < 0.01
    # dp-accounting is more conservative at fractional orders, never less.
    assert theirs >= ours * (1 - 1e-9)
    # On integer orders both compute the RDP exactly: they must agree to rounding.
    ints = list(range(2, 64))
    assert state.epsilon(DELTA, "rdp", alphas=ints) == pytest.approx(
        independent_epsilon(state, DELTA, "rdp", orders=ints), rel=1e-9
    )


@pytest.mark.parametrize("history", [[g] for g in GRID] + [MULTI], ids=str)
def test_opacus_prv_matches_dp_accounting_pld(history):
    state = AccountantState().extend(history)
    assert rel(state.epsilon(DELTA, "prv"), independent_epsilon(state, DELTA, "pld")) < 0.01


def test_design_reference_figures():
    # DESIGN "Stack facts": σ 1.0, q 0.01, 1000 steps, δ 1e-5 -> RDP 2.101, PRV/PLD ≈ 1.83.
    state = AccountantState().add(1.0, 0.01, 1000)
    assert state.epsilon(DELTA, "rdp") == pytest.approx(2.101, abs=1e-3)
    assert state.epsilon(DELTA, "prv") == pytest.approx(1.838, abs=5e-3)
    assert independent_epsilon(state, DELTA, "pld") == pytest.approx(1.828, abs=5e-3)
