"""The client's privacy ledger: append-only, survives restarts, enforces the budget, and its two
accountants agree."""

import contextlib
import itertools
import json

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from client.app import RecommenderClient
from common.config import compose
from common.data.run import load_run_data
from common.model.factory import build_model
from common.privacy.accounting import AccountantState, PrivacyConfigError, independent_epsilon
from common.privacy.ledger import PrivacyLedger, cross_checked
from common.privacy.plans import federated_plan
from common.serialization import get_weights
from common.tracking.store import RunStore
from server.strategy import RecommenderFedAvg

# Local noise without SecAgg+: the per-client DP-SGD ledger (distributed noise: the last tests).
OVERRIDES = (
    "privacy.noise=local secagg=none dataset.num_users=90 dataset.num_items=60 dataset.mean_interactions=12 "
    "partition.num_clients=3 strategy.num_rounds=3 model.num_negatives=8 train.batch_size=10"
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    overrides = f"{OVERRIDES} cache_dir={tmp_path_factory.mktemp('cache')}"
    cfg = compose(overrides)
    return overrides, cfg, load_run_data(cfg)


def client(overrides: str, state: RecordDict | None = None, node_config: dict | None = None, extra: str = ""):
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 1, "num-partitions": 3, **(node_config or {})},
        state=state if state is not None else RecordDict(),
        run_config={"overrides": f"{overrides} {extra}"},
    )
    return context


def planned_epsilons(cfg, run) -> list[float]:
    plan = federated_plan(cfg, run, 1)
    return [
        AccountantState()
        .add(plan.dp.noise_multiplier, plan.sample_rate, k * plan.steps_per_round)
        .epsilon(plan.delta, "rdp")
        for k in (1, 2, 3)
    ]


def test_a_client_refuses_the_round_that_would_exceed_its_budget(setup):
    overrides, cfg, run = setup
    eps = planned_epsilons(cfg, run)
    budget = (eps[0] + eps[1]) / 2  # room for one round, not two
    context = client(overrides, extra=f"privacy.budget_epsilon={budget}")
    weights = get_weights(build_model(cfg, run))
    results = [RecommenderClient(context).fit(weights, {"server_round": r}) for r in (1, 2, 3)]
    (_, n1, m1), (update2, n2, m2), (_, n3, m3) = results
    assert m1["ledger_status"] == "trained" and n1 > 0 and m1["epsilon"] == pytest.approx(eps[0], rel=1e-6)
    for update, n, m in ((update2, n2, m2), (None, n3, m3)):
        assert m["ledger_status"] == "refused_budget" and m["budget_refused"] and n == 0
        assert m["epsilon"] == m1["epsilon"] and m["steps_total"] == m1["steps_total"]  # nothing more spent
    assert all(not np.any(u) for u in update2)
    assert all(m["epsilon"] <= budget for m in (m1, m2, m3))


def test_a_restarted_client_continues_from_its_ledger_on_disk(setup, tmp_path):
    overrides, cfg, run = setup
    weights = get_weights(build_model(cfg, run))
    node = {"state-dir": str(tmp_path / "org-b")}
    _, _, first = RecommenderClient(client(overrides, node_config=node)).fit(weights, {"server_round": 1})
    # A new process: fresh Flower state, same state directory.
    _, _, second = RecommenderClient(client(overrides, node_config=node)).fit(weights, {"server_round": 2})
    plan = federated_plan(cfg, run, 1)
    assert second["steps_total"] == 2 * plan.steps_per_round and second["epsilon"] > first["epsilon"]
    rows = [json.loads(line) for line in (tmp_path / "org-b" / "privacy_ledger.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and [r["epsilon"] for r in rows] == [
        first["epsilon"],
        second["epsilon"],
    ]
    history = [(plan.dp.noise_multiplier, plan.sample_rate, 2 * plan.steps_per_round)]
    assert rows[-1]["epsilon_check"] == pytest.approx(independent_epsilon(history, plan.delta, "rdp"), rel=1e-9)


def test_a_damaged_ledger_stops_the_client_instead_of_resetting_its_budget(tmp_path):
    path = tmp_path / "privacy_ledger.jsonl"
    path.write_text('{"round": 1}\n{"round": 2, "stat')
    with pytest.raises(PrivacyConfigError, match="privacy_ledger.jsonl, line 2"):
        PrivacyLedger.open(path)


# The regime DP runs use (ε up to ~20); beyond it the RDP bounds part ways (see the flag test).
GRID = list(itertools.product([1.0, 2.0, 4.0], [0.01, 0.05, 0.25], [10, 100]))


@pytest.mark.parametrize("noise, q, steps", GRID)
def test_opacus_rdp_and_dp_accounting_rdp_agree_within_one_percent(noise, q, steps):
    eps, check, name, agree = cross_checked(AccountantState().add(noise, q, steps), 1e-5, "rdp")
    assert name == "dp-accounting rdp" and agree, (eps, check)
    assert abs(eps - check) <= 0.01 * max(eps, check)  # RDP: 1 %, no resolution slack needed


@pytest.mark.parametrize("noise, q, steps", [(1.0, 0.05, 100), (2.0, 0.25, 100), (0.8, 0.01, 10)])
def test_opacus_prv_and_dp_accounting_pld_agree_within_one_percent(noise, q, steps):
    eps, check, name, agree = cross_checked(AccountantState().add(noise, q, steps), 1e-5, "prv")
    assert name == "dp-accounting pld" and agree, (eps, check)


def test_a_large_epsilon_where_the_accountants_differ_is_flagged():
    # High sampling rate, many steps: dp-accounting's fractional-order RDP is ~30 % looser.
    eps, check, _, agree = cross_checked(AccountantState().add(0.8, 0.5, 1000), 1e-5, "rdp")
    assert check > 1.2 * eps and not agree


def fit_res(update, n, **metrics):
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), n, metrics)


def test_the_server_averages_only_clients_that_trained_and_records_every_ledger_row(tmp_path):
    initial = [np.zeros(3, dtype=np.float32)]
    strategy = RecommenderFedAvg(
        store=RunStore(tmp_path), num_rounds=2, evaluate_every=0, initial_parameters=ndarrays_to_parameters(initial)
    )
    strategy._row = {"round": 1, "clients": 2}
    common = dict(
        delta=1e-4,
        noise_multiplier=1.0,
        sample_rate=0.5,
        steps_total=4,
        budget_epsilon=2.0,
        epsilon_check=1.5,
        agree=True,
        accountant="rdp",
        check_accountant="dp-accounting rdp",
    )
    results = [
        (
            None,
            fit_res(
                [np.array([1.0, 2.0, 3.0], dtype=np.float32)],
                10,
                client_id=0,
                num_users=10,
                epsilon=1.5,
                train_loss=2.0,
                steps=4,
                ledger_status="trained",
                **common,
            ),
        ),
        (
            None,
            fit_res(
                [np.zeros(3, dtype=np.float32)],
                0,
                client_id=1,
                num_users=7,
                epsilon=1.9,
                train_loss=float("nan"),
                steps=0,
                ledger_status="refused_budget",
                budget_refused=True,
                **common,
            ),
        ),
    ]
    params, _ = strategy.aggregate_fit(1, results, [])
    # The refused client's weight-0 zeros do not dilute the average.
    np.testing.assert_allclose(parameters_to_ndarrays(params)[0], [1.0, 2.0, 3.0])
    assert strategy._row["clients_refused"] == 1 and strategy._row["train_loss"] == 2.0
    rows = [json.loads(line) for line in (tmp_path / "privacy_ledger.jsonl").read_text().splitlines()]
    assert [(r["client_id"], r["status"]) for r in rows] == [(0, "trained"), (1, "refused_budget")]
    assert strategy.client_privacy[1]["budget_status"] == "exhausted"
    assert strategy.client_privacy[0]["budget_status"] == "within"
    # Every client refusing leaves the model as it was.
    strategy._row = {"round": 2, "clients": 1}
    params, _ = strategy.aggregate_fit(2, results[1:], [])
    np.testing.assert_allclose(parameters_to_ndarrays(params)[0], [1.0, 2.0, 3.0])


def ledger_rows(folder):
    return {
        p.parent.name: [json.loads(line) for line in p.read_text().splitlines()]
        for p in sorted(folder.glob("client_*/privacy_ledger.jsonl"))
    }


@pytest.mark.slow
def test_a_killed_run_restarts_from_the_ledger_and_never_resets_epsilon(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ledgers = tmp_path / "ledgers"
    small = [
        "privacy.noise=local",
        "secagg=none",
        "dataset.num_users=90",
        "dataset.num_items=60",
        "dataset.mean_interactions=12",
        "partition.num_clients=3",
        "strategy.num_rounds=3",
        "model.num_negatives=8",
        f"privacy.ledger_dir={ledgers}",
    ]
    env = {**os.environ, "FEDREC_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(root)}

    def start(name, **extra_env):
        cmd = [sys.executable, "-m", "simulations.run", *small, f"hydra.run.dir={tmp_path / name}"]
        # Own process group: the kill takes Ray's workers down with the driver.
        return subprocess.Popen(
            cmd,
            cwd=root,
            env={**env, **extra_env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    # The server SIGKILLs itself right after round 1 (fault injection): a kill from here once
    # round 1's metrics appear raced the now fast rounds 2 and 3 of this tiny run.
    first = start("run1", FEDREC_KILL_AFTER_ROUND="1")
    metrics = tmp_path / "run1" / "metrics.jsonl"
    try:
        deadline = time.time() + 400
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1) and first.poll() is None:
            assert time.time() < deadline, "round 1 did not finish"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL, first.stderr.read().decode()[-2000:]
    before = ledger_rows(ledgers)
    assert sorted(before) == ["client_0", "client_1", "client_2"]
    trained_before = {c: sum(r["status"] == "trained" for r in rows) for c, rows in before.items()}
    assert all(1 <= k <= 2 for k in trained_before.values())  # killed after round 1, maybe during 2

    second = start("run2")
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err.decode()[-3000:]
    after = ledger_rows(ledgers)
    summary = json.loads((tmp_path / "run2" / "summary.json").read_text())
    for client, rows in after.items():
        assert rows[: len(before[client])] == before[client]  # append-only
        eps = [r["epsilon"] for r in rows]
        assert eps == sorted(eps) and eps[-1] <= 8.0  # never reset, never over the budget
        statuses = [r["status"] for r in rows]
        # The plan's budget holds three rounds in all: the restart trains what is left, then refuses.
        assert statuses.count("trained") == 3 and statuses.count("refused_budget") == trained_before[client]
        entry = summary["privacy"]["per_client"][client.removeprefix("client_")]
        assert entry["epsilon"] == eps[-1] == pytest.approx(8.0, rel=0.02)
        assert entry["budget_status"] == "exhausted"
        history = [(rows[0]["noise_multiplier"], rows[0]["sample_rate"], rows[-1]["steps_total"])]
        assert eps[-1] == pytest.approx(independent_epsilon(history, rows[0]["delta"], "rdp"), rel=0.01)


def test_an_infinite_epsilon_never_agrees_with_a_finite_one():
    from common.privacy.ledger import accountants_agree

    assert not accountants_agree(1.0, float("inf")) and not accountants_agree(float("inf"), 1.0)
    assert accountants_agree(float("inf"), float("inf"))


def test_a_ledger_file_with_fewer_rows_than_the_client_remembers_is_refused(setup, tmp_path):
    overrides, cfg, run = setup
    weights = get_weights(build_model(cfg, run))
    state = RecordDict()
    node = {"state-dir": str(tmp_path / "org")}
    RecommenderClient(client(overrides, state=state, node_config=node)).fit(weights, {"server_round": 1})
    (tmp_path / "org" / "privacy_ledger.jsonl").unlink()  # e.g. the volume was not mounted
    with pytest.raises(PrivacyConfigError, match="refusing to train rather than reset"):
        RecommenderClient(client(overrides, state=state, node_config=node)).fit(weights, {"server_round": 2})


def test_two_writers_on_one_ledger_file_do_not_lose_rows(tmp_path):
    from common.privacy.ledger import LedgerRow

    path = tmp_path / "privacy_ledger.jsonl"
    row = LedgerRow(1, "trained", 3, 3, 0.5, 1.0, 1.2, 1.2, "rdp", "dp-accounting rdp", True, 1e-4, 8.0)
    a, b = PrivacyLedger.open(path), PrivacyLedger.open(path)
    a.append(row)
    with pytest.raises(PrivacyConfigError, match="changed by another process"):
        b.append(row)
    assert len(PrivacyLedger.open(path).rows) == 1


def test_distributed_noise_refuses_a_step_over_the_budget(setup):
    overrides, cfg, run = setup
    extra = "privacy.noise=distributed secagg=secaggplus privacy.budget_epsilon=0.001"
    context = client(overrides, extra=extra)
    weights = get_weights(build_model(cfg, run))
    with pytest.raises(PrivacyConfigError, match="over privacy.budget_epsilon=0.001"):
        RecommenderClient(context).fit(weights, {"server_round": 1})
