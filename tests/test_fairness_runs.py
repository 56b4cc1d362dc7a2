"""Fairness in runs: every summary.json carries the fairness block, and a federation's block,
built from clients' group sums and exposure counts, equals the centralized computation."""

import json
import math

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.common import Code, EvaluateRes, Status
from flwr.compat.common.recorddict_compat import evaluateres_to_recorddict, recorddict_to_evaluateres

from client.app import RecommenderClient
from common.config import compose
from common.data.run import load_run_data
from common.evaluation import evaluate_users
from common.fairness.groups import EXPOSURE_KEY, fairness_block, fairness_row, top_items
from common.fairness.metrics import coverage_at_k, exposure_gini, exposure_metrics, long_tail_share
from common.model.factory import build_model
from common.serialization import get_weights
from common.tracking.store import RunStore
from server.strategy import RecommenderFedAvg
from server.summary import federated_summary
from simulations.run import execute

OVERRIDES = (
    "dataset.num_users=90 dataset.num_items=60 dataset.mean_interactions=12 "
    "partition.num_clients=3 strategy.num_rounds=1 model.num_negatives=8 train.batch_size=10"
)
SMALL = [
    "dataset.num_users=90",
    "dataset.num_items=60",
    "dataset.mean_interactions=12",
    "partition.num_clients=3",
    "strategy.num_rounds=2",
    "model.num_negatives=16",
    "train.epochs=2",
]


def assert_same(a, b, path="fairness"):
    """Equal structure; numbers equal to 1e-9 (sums added in another order), NaN == NaN."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float) or isinstance(b, float):
        if math.isnan(a):
            assert math.isnan(b), path
        else:
            assert b == pytest.approx(a, abs=1e-9), path
    else:
        assert a == b, path


def test_exposure_counts_give_the_list_metrics():
    rng = np.random.default_rng(0)
    top = np.stack([rng.choice(30, size=10, replace=False) for _ in range(25)])
    counts = rng.integers(0, 50, size=30)
    got = exposure_metrics(np.bincount(top.reshape(-1), minlength=30), counts)
    assert got["coverage"] == coverage_at_k(top, 30)
    assert got["exposure_gini"] == pytest.approx(exposure_gini(top, 30), abs=1e-12)
    assert got["long_tail_share"] == pytest.approx(long_tail_share(top, counts), abs=1e-12)


def test_top_items_skip_the_history_but_not_the_target_and_break_ties_by_item_id():
    scores = np.array([[5.0, 5.0, 9.0, 1.0, np.nan], [1.0, 2.0, 3.0, 4.0, 5.0]])
    top = top_items(scores, [np.array([2, 3]), np.array([0, 1, 2, 4])], np.array([3, 4]), k=4)
    # user 0: item 2 is history, item 3 its target; NaN is no candidate. user 1: 2 candidates.
    assert top.tolist() == [[0, 1, 3, -1], [4, 3, -1, -1]]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    overrides = f"{OVERRIDES} cache_dir={tmp_path_factory.mktemp('cache')}"
    cfg = compose(overrides)
    return overrides, cfg, load_run_data(cfg)


def test_federated_fairness_equals_the_centralized_computation(small_run, tmp_path):
    overrides, cfg, run = small_run
    model = build_model(cfg, run)
    weights = get_weights(model)
    ev = dict(which=cfg.eval.split, sampled_negatives=cfg.eval.sampled_negatives, seed=cfg.seed, ks=tuple(cfg.eval.ks))

    # Centralized: every user in one evaluation, one code path.
    central = evaluate_users(model, run.split, np.arange(run.split.num_users), groups=run.fairness, **ev)
    clients = {
        str(c): {"users": len(rows), **evaluate_users(model, run.split, rows, **ev).means()}
        for c, rows in enumerate(run.partitions)
    }
    expected = fairness_block(central.fairness, clients, run.fairness)

    # Federated: each client evaluates its own users and sends sums; the strategy adds them up.
    strategy = RecommenderFedAvg(store=RunStore(tmp_path), num_rounds=1, evaluate_every=1)
    strategy._row = {"round": 1}  # what configure_fit starts; this test skips training
    results = []
    for c in range(run.num_clients):
        context = Context(
            run_id=1,
            node_id=c,
            node_config={"partition-id": c, "num-partitions": 3},
            state=RecordDict(),
            run_config={"overrides": overrides},
        )
        loss, n, metrics = RecommenderClient(context).evaluate(weights, {})
        assert isinstance(metrics[EXPOSURE_KEY], bytes)
        assert all(isinstance(v, (int, float, bytes)) for v in metrics.values())  # sums and counts only
        # Through Flower's own message conversion, as in a real round.
        res = EvaluateRes(Status(Code.OK, ""), loss, n, metrics)
        results.append((None, recorddict_to_evaluateres(evaluateres_to_recorddict(res))))
    strategy.aggregate_evaluate(1, results, [])
    strategy.rounds_completed = 1
    summary = federated_summary(cfg, run, strategy, 0, 0.0)

    assert_same(expected, summary["fairness"])
    assert summary["fairness"]["users"]["activity"]["advantaged"]["users"] == math.ceil(0.05 * 90)
    row = RunStore(tmp_path).read_metrics()[-1]
    assert_same(
        json.loads(json.dumps(fairness_row(expected))), {k: row[k] for k in fairness_row(expected)}, "metrics.jsonl"
    )


def test_a_baseline_summary_has_a_fairness_block_whose_groups_partition_the_users(tmp_path):
    cfg = compose([*SMALL, f"cache_dir={tmp_path / 'cache'}", "baseline=popularity", "privacy=none"])
    summary = execute(cfg, [], tmp_path / "run")
    fair = summary["fairness"]
    n = summary["eval_users"]
    assert n == 90
    activity = fair["users"]["activity"]
    assert activity["advantaged"]["users"] + activity["disadvantaged"]["users"] == n
    assert activity["gap"]["ndcg@10"] == pytest.approx(
        activity["advantaged"]["ndcg@10"] - activity["disadvantaged"]["ndcg@10"]
    )
    run = load_run_data(cfg)
    lengths = np.array([len(t) for t in run.split.train])
    assert (lengths[run.fairness.advantaged] >= activity["threshold"]).all()
    assert (lengths > activity["threshold"]).sum() <= activity["advantaged"]["users"]
    attributes = [k for k in fair["users"] if k != "activity"]
    assert attributes and set(attributes) <= set(run.data.user_attributes.columns)
    for attribute in attributes:
        groups = fair["users"][attribute]["groups"]
        assert sum(g["users"] for g in groups.values()) == n, attribute
        means = [g["ndcg@10"] for g in groups.values() if g["users"]]
        assert fair["users"][attribute]["gap"]["ndcg@10"] == pytest.approx(max(means) - min(means))
    assert 0 < fair["items"]["coverage@10"] <= 1
    assert 0 <= fair["items"]["long_tail_share@10"] <= 1 and 0 <= fair["items"]["exposure_gini@10"] < 1
    # The per-client dict keeps its shape: users plus every metric of the run, per client.
    metrics = set(summary["metrics"]["full"]) | {f"sampled_{k}" for k in summary["metrics"]["sampled"]}
    assert sorted(fair["clients"]) == ["0", "1", "2"]
    assert all(set(c) == {"users"} | metrics for c in fair["clients"].values())
    dist = fair["client_distribution"]
    assert dist["n"] == 3 and dist["min"] == min(c["ndcg@10"] for c in fair["clients"].values())


def test_gap_standard_error_from_group_sums_matches_the_per_user_formula():
    from common.fairness.groups import FairnessSums, gap_standard_error

    rng = np.random.default_rng(3)
    ranks = rng.integers(0, 15, size=40)  # NDCG@10 is 0 beyond rank 9: a mix of hits and misses
    labels = np.where(np.arange(40) < 7, "advantaged", "disadvantaged")
    fair = FairnessSums.empty(5)
    fair.add({"activity": labels[:25]}, ranks[:25], np.zeros((25, 10), dtype=np.int64))
    fair.add({"activity": labels[25:]}, ranks[25:], np.zeros((15, 10), dtype=np.int64))  # sums add up
    per_user = np.where(ranks < 10, 1 / np.log2(ranks + 2.0), 0.0)
    a, d = per_user[:7], per_user[7:]
    expected = math.sqrt(a.var(ddof=1) / 7 + d.var(ddof=1) / 33)
    got = gap_standard_error(fair.groups[("activity", "advantaged")], fair.groups[("activity", "disadvantaged")])
    assert got == pytest.approx(expected, rel=1e-9)
    block = fairness_block(fair, {})
    assert block["users"]["activity"]["gap_se"]["ndcg@10"] == pytest.approx(expected, rel=1e-9)
    assert math.isnan(gap_standard_error(np.array([0.5, 1.0, 1.0, 0.25]), np.array([1.0, 1.0, 2.0, 0.5])))
