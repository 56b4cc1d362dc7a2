"""The server's checks on plain client updates: a hostile or broken update is left out of the
average (one log line), honest ones are averaged exactly as before."""

import logging

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from common.tracking.store import RunStore
from common.training.updates import update_problem
from server.strategy import RecommenderFedAvg

SHAPES = [(3, 2), (4,)]


def _update(scale: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(scale * rng.normal(size=s)).astype(np.float32) for s in SHAPES]


def _res(update, n, cid):
    return (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), n, {"client_id": cid, "train_loss": 1.0}))


@pytest.mark.parametrize(
    "arrays, weight, expected",
    [
        (_update(0.1, 0), 5, None),
        ([np.zeros((3, 2), np.float32)], 5, "tensors) are not the adapter's"),
        ([np.zeros((2, 3), np.float32), np.zeros(4, np.float32)], 5, "are not the adapter's"),
        ([np.full((3, 2), np.nan, np.float32), np.zeros(4, np.float32)], 5, "6 NaN/Inf value(s)"),
        ([np.full((3, 2), 1e30, np.float32), np.zeros(4, np.float32)], 5, "L2 norm 2.449e+30 > the bound 8"),
        (_update(0.1, 0), 0, "weight (num_examples) 0 is not a positive integer"),
        (_update(0.1, 0), 10**9, "weight (num_examples) 1000000000 > the cap 100"),
    ],
)
def test_update_problem_names_what_is_wrong(arrays, weight, expected):
    problem = update_problem(arrays, SHAPES, weight, 8.0, 100)
    assert problem is None if expected is None else expected in problem


def test_a_norm_exactly_at_the_bound_passes_and_no_bound_means_any_norm():
    u = [np.zeros((3, 2), np.float32), np.array([8.0, 0, 0, 0], np.float32)]
    assert update_problem(u, SHAPES, 1, 8.0, None) is None
    assert update_problem([a * 1e6 for a in u], SHAPES, 1, None, None) is None


def test_the_mean_leaves_out_hostile_updates_and_equals_the_honest_clients_weighted_mean(tmp_path, caplog):
    init = [np.zeros(s, np.float32) for s in SHAPES]
    strategy = RecommenderFedAvg(
        store=RunStore(tmp_path),
        num_rounds=2,
        evaluate_every=0,
        initial_parameters=ndarrays_to_parameters(init),
        update_bound=8.0,
        max_client_weight=100,
    )
    honest = [(_update(0.5, 1), 30, 0), (_update(0.5, 2), 70, 1)]
    hostile = [
        ([np.full(s, np.nan, np.float32) for s in SHAPES], 50, 2),  # garbage
        (_update(1e6, 3), 50, 3),  # a scaled update to sink the model
        (_update(0.5, 4), 10**9, 4),  # an honest-looking update claiming a billion users
        ([np.zeros(7, np.float32)], 50, 5),  # the wrong shapes
    ]
    results = [_res(u, n, c) for u, n, c in honest + hostile]
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        params, _ = strategy.aggregate_fit(1, results, [])
    got = parameters_to_ndarrays(params)
    want = [(30 * a + 70 * b) / 100 for a, b in zip(honest[0][0], honest[1][0])]
    for g, w in zip(got, want):
        assert np.allclose(g, w, atol=1e-6)
    rejected = [r for r in caplog.records if "update rejected" in r.getMessage()]
    assert sorted(r.getMessage().split("client ")[1][0] for r in rejected) == ["2", "3", "4", "5"]
    assert strategy._row["updates_rejected"] == 4


def test_a_round_whose_every_update_is_rejected_leaves_the_model_unchanged(tmp_path):
    init = [np.ones(s, np.float32) for s in SHAPES]
    strategy = RecommenderFedAvg(
        store=RunStore(tmp_path),
        num_rounds=2,
        evaluate_every=0,
        initial_parameters=ndarrays_to_parameters(init),
        update_bound=8.0,
    )
    params, _ = strategy.aggregate_fit(1, [_res(_update(1e3, 0), 10, 0)], [])
    assert all(np.array_equal(a, b) for a, b in zip(parameters_to_ndarrays(params), init))


def test_an_update_within_the_bound_but_far_above_the_rounds_median_is_scaled_to_ratio_times_the_median(tmp_path):
    init = [np.zeros(s, np.float32) for s in SHAPES]
    strategy = RecommenderFedAvg(
        store=RunStore(tmp_path),
        num_rounds=2,
        evaluate_every=0,
        initial_parameters=ndarrays_to_parameters(init),
        update_bound=8.0,
        median_norm_ratio=3.0,
    )

    def unit(seed, norm):
        u = _update(1.0, seed)
        n = float(np.sqrt(sum(float((a.astype(np.float64) ** 2).sum()) for a in u)))
        return [a * (norm / n) for a in u]

    honest = [unit(s, 1.0 + 0.1 * s) for s in range(4)]  # norms 1.0 .. 1.3
    attacker = unit(9, 7.5)  # under the fixed bound 8, 6x the median
    results = [_res(u, 10, c) for c, u in enumerate(honest)] + [_res(attacker, 10, 9)]
    params, _ = strategy.aggregate_fit(1, results, [])
    median = float(np.median([1.0, 1.1, 1.2, 1.3, 7.5]))  # 1.2
    scaled = [a * (3.0 * median / 7.5) for a in attacker]
    want = [(sum(h[k] for h in honest) + scaled[k]) / 5 for k in range(len(SHAPES))]
    for g, w in zip(parameters_to_ndarrays(params), want):
        assert np.allclose(g, w, atol=1e-5)
    assert strategy._row["updates_scaled"] == 1
