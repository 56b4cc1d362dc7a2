"""privacy.noise=central: DP-FedAvg through Flower's client-side fixed clipping wrapper."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from omegaconf import OmegaConf

from common.config import compose
from common.privacy.accounting import independent_epsilon
from common.privacy.central import central_plan, sampled_clients

sys.path.insert(0, str(Path(__file__).parent))
from test_secagg import adapter  # noqa: E402
from test_simulation import run_cli  # noqa: E402

SMALL = [
    "dataset.num_users=120",
    "dataset.num_items=80",
    "dataset.mean_interactions=15",
    "partition.num_clients=4",
    "strategy.num_rounds=1",
    "model.num_negatives=16",
    "model.dropout=0.0",
    "privacy.noise=central",
    "privacy.epsilon=20",
    "train.epochs=1",
]


def test_plan_protects_clients_in_cross_silo_and_users_in_cross_device():
    cfg = compose(["privacy.noise=central", "strategy.fraction_fit=0.5", "strategy.num_rounds=30"])
    plan = central_plan(cfg, num_clients=10, delta=1e-3)
    assert plan.unit == "client" and plan.num_sampled == sampled_clients(cfg, 10) == 5
    assert plan.sample_rate == 0.5
    eps = independent_epsilon([(plan.noise_multiplier, 0.5, 30)], 1e-3, "rdp")
    assert eps == pytest.approx(cfg.privacy.epsilon, rel=0.02)
    device = compose(["privacy.noise=central", "partition=cross_device"])
    assert central_plan(device, num_clients=600, delta=1e-4).unit == "user"


@pytest.mark.slow
@pytest.mark.parametrize("secagg", ["none", "secaggplus"])
def test_server_noise_has_the_planned_variance_around_the_mean_clipped_update(tmp_path, secagg):
    import torch

    from client.app import RecommenderClient
    from common.data.run import load_run_data
    from common.model.factory import build_model
    from common.privacy.plans import central_plan_for
    from common.serialization import get_weights

    overrides = [*SMALL, f"secagg={secagg}"]
    proc = run_cli(tmp_path, *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["privacy"]["unit"] == "client" and "central" in summary["privacy"]["mechanism"]
    # The server's own accountant keeps a ledger in the clients' format, a row per round.
    rows = [json.loads(line) for line in (tmp_path / "run" / "privacy_ledger.jsonl").read_text().splitlines()]
    server = [r for r in rows if r["client_id"] == "server"]
    assert [r["round"] for r in server] == list(range(1, len(server) + 1)) and len(server) >= 1
    eps = [r["epsilon"] for r in server]
    assert eps == sorted(eps) and eps[-1] == pytest.approx(summary["privacy"]["epsilon_max"])
    assert all(r["agree"] for r in server)

    torch.set_num_threads(1)
    one_string = " ".join([*overrides, f"cache_dir={tmp_path / 'cache'}"])
    cfg = compose(one_string)
    run = load_run_data(cfg)
    plan = central_plan_for(cfg, run)
    init = get_weights(build_model(cfg, run))
    updates = []
    for cid in range(4):
        ctx = Context(
            run_id=1,
            node_id=cid + 1,
            node_config={"partition-id": cid, "num-partitions": 4},
            state=RecordDict(),
            run_config={"overrides": one_string},
        )
        update, weight, _ = RecommenderClient(ctx).fit(init, {"server_round": 1, "clipping_norm": plan.clipping_norm})
        assert weight == 1  # equal weights: one client moves the mean by at most C/K
        assert np.sqrt(sum((u.astype(np.float64) ** 2).sum() for u in update)) <= plan.clipping_norm + 1e-5
        updates.append(update)
    mean = [sum(u[k] for u in updates) / 4 for k in range(len(init))]
    got = adapter(tmp_path / "run")
    residual = np.concatenate([((g - i) - m).ravel() for g, i, m in zip(got, init, mean)])
    expected = plan.noise_multiplier * plan.clipping_norm / plan.num_sampled
    assert residual.size > 20_000
    assert residual.std() == pytest.approx(expected, rel=0.03)
    assert abs(residual.mean()) < 5 * expected / np.sqrt(residual.size)
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").privacy.noise == "central"
