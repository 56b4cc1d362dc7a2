"""The ClientApp's privacy state across rounds, and the server's refusal of partial results,
exercised in-process (the end-to-end runs are in test_simulation.py)."""

import json

import pytest
from flwr.app import Context, RecordDict

from client.app import LEDGER_KEY, PLAN_KEY, RecommenderClient
from common.config import compose
from common.data.run import load_run_data
from common.model.factory import build_model
from common.privacy.accounting import independent_epsilon
from common.privacy.ledger import PrivacyLedger
from common.privacy.plans import federated_plan
from common.serialization import get_weights
from common.tracking.store import RunStore
from server.strategy import RecommenderFedAvg

# The per-client DP-SGD path (local noise, plain FedAvg); the default is tested in test_simulation.py.
OVERRIDES = (
    "privacy.noise=local secagg=none dataset.num_users=90 dataset.num_items=60 dataset.mean_interactions=12 "
    "partition.num_clients=3 strategy.num_rounds=3 model.num_negatives=8 train.batch_size=10"
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    overrides = f"{OVERRIDES} cache_dir={cache}"
    cfg = compose(overrides)
    run = load_run_data(cfg)
    return overrides, cfg, run


def test_accountant_persists_in_client_state_and_is_never_reset(setup):
    overrides, cfg, run = setup
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 1, "num-partitions": 3},
        state=RecordDict(),
        run_config={"overrides": overrides},
    )
    weights = get_weights(build_model(cfg, run))
    plan = federated_plan(cfg, run, 1)
    eps = []
    for rnd in (1, 2, 3):
        # Flower builds a new client object every round; only the context carries over.
        _, n, metrics = RecommenderClient(context).fit(weights, {"server_round": rnd})
        eps.append(metrics["epsilon"])
        ledger = PrivacyLedger.open(None, str(context.state.config_records[LEDGER_KEY]["rows"]))
        assert [r["round"] for r in ledger.rows] == list(range(1, rnd + 1))
        assert ledger.accountant().steps == rnd * plan.steps_per_round == metrics["steps_total"]
        assert ledger.rows[-1]["epsilon"] == metrics["epsilon"] and ledger.rows[-1]["agree"]
    assert eps[0] < eps[1] < eps[2]
    assert dict(context.state.config_records[PLAN_KEY])["noise_multiplier"] == plan.dp.noise_multiplier
    # The whole plan spends the target, and Google's accountant agrees within 1 %.
    assert eps[2] == pytest.approx(cfg.privacy.epsilon, rel=0.02)
    history = [(plan.dp.noise_multiplier, plan.sample_rate, plan.total_steps)]
    assert eps[2] == pytest.approx(independent_epsilon(history, plan.delta, "rdp"), rel=0.01)
    assert n == plan.num_users


def test_client_evaluation_returns_sums_and_counts_of_its_users(setup):
    overrides, cfg, run = setup
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 2, "num-partitions": 3},
        state=RecordDict(),
        run_config={"overrides": overrides},
    )
    _, n, metrics = RecommenderClient(context).evaluate(get_weights(build_model(cfg, run)), {})
    assert n == metrics["count"] == len(run.partitions[2])
    assert 0 <= metrics["ndcg@10_sum"] <= metrics["hr@10_sum"] <= n


def test_a_failed_client_fails_the_round_instead_of_averaging_survivors(tmp_path):
    strategy = RecommenderFedAvg(store=RunStore(tmp_path), num_rounds=2, evaluate_every=0)
    with pytest.raises(RuntimeError, match="1 client\\(s\\) failed to train; first: .*boom"):
        strategy.aggregate_fit(1, [], [ValueError("boom")])
    with pytest.raises(RuntimeError, match="failed to evaluate"):
        strategy.aggregate_evaluate(2, [], [ValueError("x")])


def test_starting_a_run_removes_a_stale_summary(tmp_path):
    store = RunStore(tmp_path)
    store.write_summary({"metrics": "old"})
    store.append_metrics({"round": 1})
    store.start(compose(OVERRIDES))
    assert not store.summary_path.exists() and store.read_metrics() == []
    assert "num_clients: 3" in (tmp_path / "config.yaml").read_text()
    store.write_summary({"x": float("nan")})
    assert json.loads(store.summary_path.read_text()) == {"x": None}
