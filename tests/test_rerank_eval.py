"""UGF re-ranking at evaluation time (common.fairness.rerank_eval): valid lists, the loss bound, the
numbers it reports, and a federation's rerank block = the sum of its clients' re-ranking."""

import math

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.common import Code, EvaluateRes, Status
from flwr.compat.common.recorddict_compat import evaluateres_to_recorddict, recorddict_to_evaluateres
from omegaconf import OmegaConf

from client.app import RecommenderClient
from common.config import compose
from common.data.run import load_run_data
from common.evaluation import evaluate_scorer, evaluate_users, histories
from common.fairness.groups import fairness_block, fairness_groups
from common.fairness.metrics import group_gap
from common.fairness.rerank_eval import (
    RerankSettings,
    candidates_of,
    client_rerank,
    expected_ndcg,
    info_metrics,
    rerank_users,
)
from common.model.factory import build_model
from common.serialization import get_weights
from common.tracking.store import RunStore
from server.strategy import RecommenderFedAvg
from server.summary import federated_summary
from tests.test_fairness_runs import assert_same

OVERRIDES = (
    "dataset.num_users=90 dataset.num_items=60 dataset.mean_interactions=12 partition.num_clients=3 "
    "strategy.num_rounds=1 model.num_negatives=8 train.batch_size=10 eval.rerank.method=ugf"
)


def test_expected_ndcg_by_hand():
    sel = np.array([[True, False, True, True]])
    rel = np.array([[0.5, 0.9, 0.2, 0.1]])
    # shown in candidate order: 0, 2, 3 at positions 1, 2, 3
    assert expected_ndcg(sel, rel)[0] == pytest.approx(0.5 + 0.2 / math.log2(3) + 0.1 / 2)


def test_candidates_skip_history_keep_target_and_carry_the_softmax():
    scores = np.array([[3.0, 1.0, 2.0, 0.0, 5.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    hist = [np.array([4, 1]), np.array([3])]
    cand, probs, oracle = candidates_of(scores, hist, np.array([1, 0]), 3)
    # user 0: 4 is history; 1 is history but also the target, so it stays (as full_ranks does)
    assert cand.tolist() == [[0, 2, 1], [4, 2, 1]]
    z0 = np.exp([3.0, 1.0, 2.0, 0.0]).sum()
    assert probs[0] == pytest.approx(np.exp([3.0, 2.0, 1.0]) / z0)
    z1 = np.exp([0.0, 1.0, 2.0, 4.0]).sum()
    assert probs[1] == pytest.approx(np.exp([4.0, 2.0, 1.0]) / z1)
    assert oracle.tolist() == [[0, 0, 1], [0, 0, 0]]


def _instance(seed: int = 0, users: int = 60, items: int = 80):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(users, items)) * 2
    hist = [rng.choice(items, size=rng.integers(1, 15), replace=False) for _ in range(users)]
    targets = np.array([rng.choice(np.setdiff1d(np.arange(items), h)) for h in hist])
    advantaged = np.zeros(users, dtype=bool)
    advantaged[rng.choice(users, size=6, replace=False)] = True
    scores[advantaged] *= 0.3  # flatter: advantaged users' expected NDCG is lower, a real gap
    return scores, hist, targets, advantaged


@pytest.mark.parametrize("loss", [0.0, 0.05, 0.3, 0.9])
def test_rerank_keeps_lists_valid_and_the_loss_within_bound(loss):
    scores, hist, targets, adv = _instance()
    cand, probs, _ = candidates_of(scores, hist, targets, 30)
    sel, info = rerank_users(cand, probs, probs, adv, RerankSettings(30, "model", loss))
    lists = cand[sel].reshape(len(cand), 10)
    for i, row in enumerate(lists):
        assert len(set(row)) == 10  # no duplicates, length K
        assert not set(row) & set(hist[i])  # no history item
    before = expected_ndcg(np.pad(np.ones((len(cand), 10), bool), ((0, 0), (0, 20))), probs)
    after = expected_ndcg(sel, probs)
    assert info["ndcg_before"] == pytest.approx(before.mean())
    assert info["ndcg_after"] == pytest.approx(after.mean())
    assert after.mean() >= (1 - loss) * before.mean() - 1e-12
    g0, g1 = group_gap(before, adv)["gap"], group_gap(after, adv)["gap"]
    assert info["gap_before"] == pytest.approx(g0) and info["gap_after"] == pytest.approx(g1)
    assert abs(g1) <= abs(g0) + 1e-12
    if loss == 0.0:
        assert info["changed_users"] == 0 and (sel == (np.arange(30) < 10)).all()
    if loss in (0.05, 0.3):  # the smallest bound within the loss: the loss is what binds
        assert 1 - after.mean() / before.mean() == pytest.approx(loss, abs=0.005)
        assert info["epsilon"] == pytest.approx(abs(g1), rel=0.01) and info["changed_users"] > 0
    if loss == 0.9:  # room enough to close the expected gap
        assert abs(g1) < 1e-3 * abs(g0) and info["epsilon"] < 1e-3


def test_oracle_relevance_closes_the_realised_gap_more():
    scores, hist, targets, adv = _instance(1)
    cand, probs, oracle = candidates_of(scores, hist, targets, 30)
    sel, info = rerank_users(cand, probs, oracle, adv, RerankSettings(30, "oracle", 0.05))
    before, after = info["gap_before"], info["gap_after"]
    assert abs(after) <= abs(before) and info["ndcg_after"] >= 0.95 * info["ndcg_before"] - 1e-12


def test_rerank_metrics_equal_the_plain_ones_when_nothing_may_be_lost():
    scores, hist, targets, adv = _instance(2)
    from common.data.types import LeaveOneOutSplit  # a split whose test items are `targets`

    users, items = scores.shape
    split = LeaveOneOutSplit(
        users=np.arange(users),
        train=[h[1:] for h in hist],
        valid=np.array([h[0] for h in hist]),
        test=targets,
        num_items=items,
        stats={},
    )
    h, t = histories(split, np.arange(users), "test")
    assert all(set(a) == set(b) for a, b in zip(h, hist)) and (t == targets).all()
    groups = fairness_groups(split)
    assert groups.advantaged.any() and not groups.advantaged.all()
    out = evaluate_scorer(
        lambda _h: scores,
        split,
        np.arange(users),
        sampled_negatives=0,
        groups=groups,
        rerank=RerankSettings(30, "model", 0.0),
    )
    means = out.means()
    for m in ("hr@5", "ndcg@5", "hr@10", "ndcg@10"):
        assert means[f"rerank_{m}"] == pytest.approx(means[m])
    assert out.rerank_info["skipped"] == 0.0 and out.rerank_info["changed_users"] == 0
    assert out.rerank_info["gap_before"] != 0  # there was a gap to narrow; no loss was allowed
    plain, reranked = fairness_block(out.fairness, {}, groups), fairness_block(out.rerank_fairness, {}, groups)
    assert_same(plain["users"], reranked["users"])
    assert_same(plain["items"], reranked["items"])


def test_a_fixed_epsilon_that_cannot_be_met_is_reported_infeasible():
    scores, hist, targets, adv = _instance(4)
    cand, probs, _ = candidates_of(scores, hist, targets, 12)
    _, info = rerank_users(cand, probs, probs, adv, RerankSettings(12, "model", 0.05, epsilon=0.0))
    assert info["feasible"] == 0.0 and abs(info["gap_after"]) > 0
    _, info = rerank_users(cand, probs, probs, adv, RerankSettings(12, "model", 0.05, epsilon=1.0))
    assert info["feasible"] == 1.0 and info["changed_users"] == 0


def test_bad_settings_are_named():
    for bad, key in [
        ({"method": "fair"}, "method"),
        ({"method": "ugf", "candidates": 10}, "candidates"),
        ({"method": "ugf", "relevance": "test"}, "relevance"),
        ({"method": "ugf", "max_ndcg_loss": 1.5}, "max_ndcg_loss"),
    ]:
        with pytest.raises(ValueError, match=f"eval.rerank.{key}"):
            RerankSettings.from_config(OmegaConf.create(bad))
    assert RerankSettings.from_config(OmegaConf.create({"method": "none"})) is None


def test_federated_rerank_block_is_the_sum_of_each_clients_own_reranking(tmp_path):
    overrides = f"{OVERRIDES} cache_dir={tmp_path / 'cache'}"
    cfg = compose(overrides)
    run = load_run_data(cfg)
    model = build_model(cfg, run)
    weights = get_weights(model)
    settings = RerankSettings.from_config(cfg.eval.rerank)
    ev = dict(which=cfg.eval.split, sampled_negatives=cfg.eval.sampled_negatives, seed=cfg.seed, ks=tuple(cfg.eval.ks))

    # Expected: each client's users re-ranked apart, sums added up.
    fair, clients, n, ndcg = None, {}, 0, 0.0
    for c, rows in enumerate(run.partitions):
        out = evaluate_users(model, run.split, rows, groups=run.fairness, rerank=settings, **ev)
        fair = out.rerank_fairness if fair is None else fair.merge(out.rerank_fairness)
        clients[str(c)] = client_rerank(out.means(), info_metrics(out.rerank_info))
        n += len(rows)
        ndcg += out.means()["rerank_ndcg@10"] * len(rows)
    expected = fairness_block(fair, clients, run.fairness)

    strategy = RecommenderFedAvg(store=RunStore(tmp_path), num_rounds=1, evaluate_every=1)
    strategy._row = {"round": 1}
    results = []
    for c in range(run.num_clients):
        context = Context(
            run_id=1,
            node_id=c,
            node_config={"partition-id": c, "num-partitions": 3},
            state=RecordDict(),
            run_config={"overrides": overrides},
        )
        loss, num, metrics = RecommenderClient(context).evaluate(weights, {})
        res = EvaluateRes(Status(Code.OK, ""), loss, num, metrics)
        results.append((None, recorddict_to_evaluateres(evaluateres_to_recorddict(res))))
    strategy.aggregate_evaluate(1, results, [])
    strategy.rounds_completed = 1
    summary = federated_summary(cfg, run, strategy, 0, 0.0)

    block = summary["fairness"]["rerank"]
    assert block["method"] == "ugf" and block["relevance"] == "model" and block["candidates"] == 50
    assert_same(expected, {k: block[k] for k in expected}, "fairness.rerank")
    assert summary["metrics"]["rerank"]["ndcg@10"] == pytest.approx(ndcg / n)
    assert "rerank_ndcg@10" not in summary["metrics"]["full"]
    row = RunStore(tmp_path).read_metrics()[-1]
    assert row["fair_rerank_activity_gap_ndcg@10"] == pytest.approx(expected["users"]["activity"]["gap"]["ndcg@10"])
