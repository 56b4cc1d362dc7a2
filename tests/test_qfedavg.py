"""strategy=qfedavg: clients report their pre-training loss, the server takes the q-FFL step."""

import json

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from common.config import compose
from common.config.checks import check_strategy
from common.fairness.qffl import qffl_step
from common.tracking.store import RunStore
from server.strategy import RecommenderFedAvg
from tests.test_simulation import SMALL, run_cli


def fit_res(update, loss_before, cid):
    return FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters(update),
        10,
        {"client_id": cid, "num_users": 10, "train_loss": 1.0, "loss_before": loss_before},
    )


def test_the_server_takes_the_qffl_step_on_the_clients_models(tmp_path):
    from common.training.updates import update

    old = [np.array([0.5, -1.0], dtype=np.float32), np.array([[2.0]], dtype=np.float32)]
    # The clients' trained models; what they send is update(local, global), as client/app.py does.
    local = [
        [np.array([1.5, -1.0], dtype=np.float32), np.array([[2.5]], dtype=np.float32)],
        [np.array([-0.5, 1.0], dtype=np.float32), np.array([[2.0]], dtype=np.float32)],
    ]
    strategy = RecommenderFedAvg(
        store=RunStore(tmp_path),
        num_rounds=1,
        evaluate_every=0,
        qffl=(2.0, 10.0),
        initial_parameters=ndarrays_to_parameters(old),
    )
    strategy._row = {"round": 1, "clients": 2}
    results = [(None, fit_res(update(local[0], old), 4.0, 0)), (None, fit_res(update(local[1], old), 1.0, 1))]
    params, _ = strategy.aggregate_fit(1, results, [])
    got = parameters_to_ndarrays(params)
    want = qffl_step(old, [[w.astype(np.float64) for w in m] for m in local], [4.0, 1.0], 2.0, 10.0)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)
        assert g.dtype == np.float32
    # Not the plain mean of the two models: the higher-loss client pulls harder.
    assert not np.allclose(got[0], (local[0][0] + local[1][0]) / 2)
    assert strategy._row["qffl_clients"] == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["secagg=secaggplus"], "secagg"),
        (["privacy.noise=central", "secagg=none"], "privacy.noise=central"),
        (["strategy.q=-1"], "strategy.q=-1"),
        (["strategy.q=inf"], "strategy.q=inf"),
        (["privacy.noise=distributed", "secagg=secaggplus"], "secagg|distributed"),
    ],
)
def test_qfedavg_refuses_what_hides_or_mis_sizes_per_client_updates(extra, message):
    with pytest.raises(ValueError, match=message):
        check_strategy(compose(["strategy=qfedavg", *extra]))


@pytest.mark.slow
def test_a_qfedavg_run_completes_with_clients_losses(tmp_path):
    proc = run_cli(tmp_path, *SMALL, "strategy=qfedavg", "secagg=none", "strategy.num_rounds=2", "privacy=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 < summary["metrics"]["full"]["hr@10"] <= 1
    assert "client_distribution" in summary["fairness"]
