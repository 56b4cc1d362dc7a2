"""q-FFL aggregation (common/fairness/qffl.py): FedAvg at q = 0, Flower's aggregate_qffl, fairness."""

import numpy as np
import pytest
from flwr.server.strategy.aggregate import aggregate_qffl

from common.fairness.qffl import LOSS_EPSILON, qffl_step


def _model(rng, dtype=np.float64):
    return [rng.normal(size=(4, 3)).astype(dtype), rng.normal(size=(5,)).astype(dtype)]


def _clients(rng, w, k, dtype=np.float64):
    return [[(layer + 0.1 * rng.normal(size=layer.shape)).astype(dtype) for layer in w] for _ in range(k)]


def _flower_qffl(w, clients, losses, q, lipschitz):
    """Flower's QFedAvg.aggregate_fit, with client k's own loss in place of the server's."""
    lr = 1.0 / lipschitz
    deltas, hs = [], []
    for client, loss in zip(clients, losses):
        grads = [np.multiply((u - v), 1.0 / lr) for u, v in zip(w, client)]
        deltas.append([np.float_power(loss + 1e-10, q) * g for g in grads])
        norm = float(np.sum(np.square(np.concatenate([g.ravel() for g in grads]))))
        hs.append(q * np.float_power(loss + 1e-10, q - 1) * norm + (1.0 / lr) * np.float_power(loss + 1e-10, q))
    return aggregate_qffl(w, deltas, hs)


@pytest.mark.parametrize("lipschitz", [1.0, 100.0])
def test_q0_is_the_plain_mean_of_client_weights(lipschitz):
    rng = np.random.default_rng(0)
    w = _model(rng)
    clients = _clients(rng, w, 3)
    new = qffl_step(w, clients, [0.3, 2.0, 0.0], q=0.0, lipschitz=lipschitz)
    for i, layer in enumerate(new):
        np.testing.assert_allclose(layer, np.mean([c[i] for c in clients], axis=0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("lipschitz", [1.0, 20.0])
def test_agrees_with_flower_aggregate_qffl(q, lipschitz):
    rng = np.random.default_rng(1)
    w = _model(rng)
    clients = _clients(rng, w, 4)
    losses = [0.7, 1.3, 0.05, 2.4]
    ours = qffl_step(w, clients, losses, q=q, lipschitz=lipschitz)
    flower = _flower_qffl(w, clients, losses, q, lipschitz)
    for a, b in zip(ours, flower):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_zero_loss_with_q_below_one_is_finite():
    # F = 0 and q < 1: F^(q−1) would divide by zero without LOSS_EPSILON (as in Flower).
    rng = np.random.default_rng(2)
    w = _model(rng)
    clients = _clients(rng, w, 2)
    new = qffl_step(w, clients, [0.0, 1.0], q=0.5, lipschitz=1.0)
    assert all(np.all(np.isfinite(layer)) for layer in new)
    for a, b in zip(new, _flower_qffl(w, clients, [0.0, 1.0], 0.5, 1.0)):
        np.testing.assert_allclose(a, b, rtol=1e-9)


# Hand-made 1-D example, L = 1: w = 0, client 1 at w̄_1 = 1 with loss F_1 = 4, client 2 at
# w̄_2 = −1 with F_2 = 1. Δw_1 = −1, Δw_2 = +1, ||Δw_k||² = 1.
#   q = 0: Δ = (−1, 1), h = (1, 1)           → w_new = 0 − 0/2          = 0    (mean), |w_new − 1| = 1
#   q = 1: Δ = (−4, 1), h = (1 + 4, 1 + 1)   → w_new = 0 − (−3)/7       = 3/7,        |w_new − 1| = 4/7
#   q = 2: Δ = (−16, 1), h = (2·4 + 16, 2 + 1) → w_new = 0 − (−15)/27  = 5/9,        |w_new − 1| = 4/9
#   q = 5: Δ = (−1024, 1), h = (5·256 + 1024, 5 + 1) → w_new = 1023/2310 ≈ 0.443, |w_new − 1| ≈ 0.557
# Client 1's share of the direction, F_1^q / (F_1^q + F_2^q) = 1/2, 4/5, 16/17, 1024/1025, keeps
# growing, but the q F^(q−1) ||Δw||² term of h_k shrinks the step: large q moves less.
HAND = {0.0: 0.0, 1.0: 3 / 7, 2.0: 5 / 9, 5.0: 1023 / 2310}


@pytest.mark.parametrize("q, expected", sorted(HAND.items()))
def test_hand_made_two_client_example(q, expected):
    new = qffl_step([np.zeros(1)], [[np.ones(1)], [-np.ones(1)]], [4.0, 1.0], q=q, lipschitz=1.0)
    assert new[0][0] == pytest.approx(expected, rel=1e-8, abs=1e-9)


def test_larger_loss_client_pulls_the_model_towards_it_as_q_grows():
    w, clients, losses = [np.zeros(1)], [[np.ones(1)], [-np.ones(1)]], [4.0, 1.0]
    dist = [abs(qffl_step(w, clients, losses, q=q, lipschitz=1.0)[0][0] - 1.0) for q in (0.0, 0.5, 1.0, 2.0)]
    assert dist[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(dist, dist[1:])), dist
    # Past some q the step shrinks faster than the share grows (q = 5: ≈ 0.557 > 4/9).
    assert abs(qffl_step(w, clients, losses, q=5.0, lipschitz=1.0)[0][0] - 1.0) > 4 / 9


def test_float32_stays_float32():
    rng = np.random.default_rng(3)
    w = _model(rng, np.float32)
    clients = _clients(rng, w, 3, np.float32)
    new = qffl_step(w, clients, [0.5, 1.0, 1.5], q=1.0, lipschitz=10.0)
    assert [layer.dtype for layer in new] == [np.float32, np.float32]
    expected = qffl_step(
        [a.astype(np.float64) for a in w],
        [[a.astype(np.float64) for a in c] for c in clients],
        [0.5, 1.0, 1.5],
        q=1.0,
        lipschitz=10.0,
    )
    for a, b in zip(new, expected):
        assert b.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_large_losses_and_q_do_not_overflow():
    # F^q = 50^200 overflows float64; Σ Δ_k / Σ h_k does not, and q → ∞ tends to a null step.
    w, clients = [np.zeros(1)], [[np.ones(1)], [-np.ones(1)]]
    new = qffl_step(w, clients, [50.0, 1.0], q=200.0, lipschitz=1.0)
    # ≈ F_1 / (q + F_1) = 50/250 for the dominant client (its Δ_k/h_k with ||Δw||² = 1, L = 1).
    assert new[0][0] == pytest.approx(50 / 250, rel=1e-6)


def test_loss_epsilon_matches_flower():
    assert LOSS_EPSILON == 1e-10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"q": -0.1}, "q=-0.1"),
        ({"q": float("nan")}, "q=nan"),
        ({"lipschitz": 0.0}, "lipschitz=0.0"),
        ({"lipschitz": -1.0}, "lipschitz=-1.0"),
        ({"losses": [1.0, -0.5]}, r"losses\[1\]=-0.5"),
        ({"losses": [float("nan"), 1.0]}, r"losses\[0\]=nan"),
        ({"losses": [float("inf"), 1.0]}, r"losses\[0\]=inf"),
        ({"losses": [1.0]}, "1 losses for 2 clients"),
        ({"client_weights": [[np.zeros(2)], [np.zeros(3)]]}, r"client_weights\[1\]\[0\] has shape \(3,\)"),
        ({"client_weights": [[np.zeros(2)], [np.zeros(2), np.zeros(1)]]}, r"client_weights\[1\] has 2 layers"),
        ({"client_weights": [[np.zeros(2)], [np.array([0.0, np.nan])]]}, r"client_weights\[1\]\[0\] has non-finite"),
        ({"client_weights": [], "losses": []}, "client_weights is empty"),
    ],
)
def test_validation(kwargs, match):
    args = {
        "weights_before": [np.zeros(2)],
        "client_weights": [[np.ones(2)], [np.zeros(2)]],
        "losses": [1.0, 2.0],
        "q": 1.0,
        "lipschitz": 1.0,
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        qffl_step(**args)
