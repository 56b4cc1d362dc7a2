"""Server checkpoints and resume=true, and the item-catalogue fingerprint every round checks."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from client.app import RecommenderClient
from common.config import compose
from common.data.catalogue import CatalogueMismatch, catalogue_fingerprint
from common.model.factory import build_model
from common.privacy.accounting import independent_epsilon
from common.privacy.distributed import ServerOptimizer
from common.privacy.ledger import LedgerRow, PrivacyLedger
from common.serialization import get_weights
from common.tracking.checkpoint import (
    CheckpointError,
    ServerCheckpoint,
    check_config,
    check_ledgers_survive,
    fixed_config,
    is_complete,
    keep_rounds_up_to,
    load_checkpoint,
    resume_point,
    save_checkpoint,
)
from tests.test_harness_csv import write_shop

ROOT = Path(__file__).resolve().parents[1]


def test_a_checkpoint_round_trips_and_the_restored_optimizer_continues_exactly(tmp_path):
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    grads = [[rng.normal(size=w.shape).astype(np.float32) for w in weights] for _ in range(3)]
    straight = ServerOptimizer(weights, lr=0.01)
    for g in grads:
        expected = straight.step(g)
    first = ServerOptimizer(weights, lr=0.01)
    for g in grads[:2]:
        after_two = first.step(g)
    state = {"client_privacy": {"0": {"epsilon": 1.5, "refused_rounds": 1}}, "rounds_failed": [2]}
    ckpt = ServerCheckpoint(2, after_two, state, first.opt.state_dict(), 12.5, {"seed": 0}, {"items_sha256": "ab"}, [1])
    save_checkpoint(tmp_path, ckpt)
    assert not [p for p in (tmp_path / "checkpoint").iterdir() if p.name.startswith(".")]  # no temp file left
    back = load_checkpoint(tmp_path)
    assert (back.round, back.strategy, back.seconds, back.config, back.catalogue, back.resumed_from) == (
        2,
        state,
        12.5,
        {"seed": 0},
        {"items_sha256": "ab"},
        [1],
    )
    for a, b in zip(back.weights, after_two):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    # Adam's moments and step count came back: the third step equals an uninterrupted one.
    resumed = ServerOptimizer(back.weights, lr=0.01)
    resumed.opt.load_state_dict(back.optimizer)
    for a, b in zip(resumed.step(grads[2]), expected):
        np.testing.assert_array_equal(a, b)
    assert load_checkpoint(tmp_path / "elsewhere") is None


def test_a_damaged_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "server_state.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(CheckpointError, match="server_state.safetensors: not a readable fedrec checkpoint"):
        load_checkpoint(tmp_path)


def test_resuming_with_another_config_is_refused_but_where_it_runs_may_change(tmp_path):
    cfg = compose("strategy.num_rounds=3 privacy.epsilon=8")
    ckpt = ServerCheckpoint(1, [], config=fixed_config(cfg))
    check_config(
        ckpt,
        compose(
            f"strategy.num_rounds=3 privacy.epsilon=8 resume=true output_dir={tmp_path} "
            "device=cpu cache_dir=/tmp/x simulation.num_cpus_per_client=2"
        ),
        tmp_path,
    )
    with pytest.raises(CheckpointError, match=r"privacy.epsilon: 8 -> 4, strategy.num_rounds: 3 -> 5; only resume"):
        check_config(ckpt, compose("strategy.num_rounds=5 privacy.epsilon=4 resume=true"), tmp_path)


def test_resume_needs_the_run_folder_and_starts_at_round_one_without_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="resume=true needs output_dir=RUN_DIR"):
        resume_point(compose("resume=true"), tmp_path)
    assert resume_point(compose(f"resume=true output_dir={tmp_path} privacy.ledger_dir={tmp_path}"), tmp_path) is None
    assert resume_point(compose(f"output_dir={tmp_path}"), tmp_path) is None


def test_per_client_ledgers_live_under_the_run_folder_by_default_so_any_killed_run_can_resume(tmp_path):
    from common.privacy.ledger import ledger_path

    cfg = compose(f"output_dir={tmp_path}")
    assert ledger_path(cfg, {}, 3) == tmp_path / "ledgers" / "client_3" / "privacy_ledger.jsonl"
    chosen = compose(f"output_dir={tmp_path} privacy.ledger_dir={tmp_path / 'mine'}")
    assert ledger_path(chosen, {}, 3) == tmp_path / "mine" / "client_3" / "privacy_ledger.jsonl"
    assert ledger_path(cfg, {"state-dir": str(tmp_path / "node")}, 3) == tmp_path / "node" / "privacy_ledger.jsonl"
    for noise in ("local", "distributed"):
        assert resume_point(compose(f"resume=true output_dir={tmp_path} privacy.noise={noise}"), tmp_path) is None
    # Only without a run folder would the ledgers have lived in memory (and died with the run).
    with pytest.raises(CheckpointError, match=r"^resume=true with privacy on needs privacy.ledger_dir or the run"):
        check_ledgers_survive(compose("resume=true privacy.noise=local"))


def test_a_completed_run_without_a_checkpoint_resumes_only_with_its_own_config(tmp_path):
    from common.config import to_yaml

    ran = compose(f"privacy=none strategy.num_rounds=2 output_dir={tmp_path}")
    (tmp_path / "config.yaml").write_text(to_yaml(ran))
    (tmp_path / "summary.json").write_text("{}")
    same = compose(f"privacy=none strategy.num_rounds=2 output_dir={tmp_path} resume=true device=cpu")
    assert resume_point(same, tmp_path) is None and is_complete(same, tmp_path)
    other = compose(f"privacy=none strategy.num_rounds=2 output_dir={tmp_path} resume=true seed=7")
    with pytest.raises(CheckpointError, match=r"config.yaml was written with another config: seed: 0 -> 7"):
        resume_point(other, tmp_path)
    (tmp_path / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match="neither a checkpoint nor a config.yaml"):
        resume_point(same, tmp_path)


def test_resume_without_a_named_run_folder_is_a_one_line_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEDREC_PROGRESS": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.run", "resume=true", "privacy=none"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "fedrec: error: resume=true needs the run folder: hydra.run.dir=RUN_DIR (or output_dir=RUN_DIR)"
    ]
    # No run was started in Hydra's new timestamped folder (Hydra's own .hydra/ aside).
    assert not [p for p in tmp_path.rglob("*.yaml") if p.parent.name != ".hydra"]


def test_a_cut_off_last_metrics_line_is_dropped_on_resume(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    rows = "".join(json.dumps({"round": r}) + "\n" for r in (1, 2))
    path.write_text(rows + '{"round": 3, "lo')  # killed while appending round 3
    with caplog.at_level("WARNING", logger="fedrec"):
        assert keep_rounds_up_to(path, 2) == 1
    assert path.read_text() == rows and "cut-off last line" in caplog.text
    path.write_text('{"round": 1}\nnot json\n{"round": 2}\n')  # damage elsewhere is not a kill's doing
    with pytest.raises(CheckpointError, match=r"metrics.jsonl, line 2: not a JSON row"):
        keep_rounds_up_to(path, 2)


def test_every_resume_counts_one_more_central_release():
    from common.privacy.accounting import AccountantState
    from common.privacy.central import central_plan
    from server.summary import central_ledger, central_privacy

    cfg = compose("privacy.noise=central strategy.num_rounds=3 privacy.epsilon=4")
    plan = central_plan(cfg, 20, 1e-3)
    expected = AccountantState().add(plan.noise_multiplier, plan.sample_rate, 4).epsilon(1e-3, cfg.privacy.accountant)
    once = central_privacy(cfg, plan, 3, resumes=1)
    assert once["epsilon_max"] == pytest.approx(expected, rel=1e-9) and once["per_client"]["server"]["steps"] == 4
    assert central_privacy(cfg, plan, 3)["epsilon_max"] < expected  # the uninterrupted plan: 3 releases
    row = central_ledger(cfg, plan, resumes=1)(2)
    assert (row["round"], row["steps_total"]) == (2, 3)


def test_only_the_half_done_round_is_dropped_from_the_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"round": r, "loss": r / 10}) + "\n" for r in (1, 2, 3)))
    assert keep_rounds_up_to(path, 2) == 1
    assert [json.loads(line)["round"] for line in path.read_text().splitlines()] == [1, 2]
    assert keep_rounds_up_to(path, 2) == 0 and keep_rounds_up_to(tmp_path / "absent.jsonl", 1) == 0


def test_a_client_ledger_keeps_both_rows_of_a_redone_round_and_counts_both(tmp_path):
    ledger = PrivacyLedger.open(tmp_path / "privacy_ledger.jsonl")
    for steps_total in (3, 6, 9):  # rounds 1, 2, and 2 again after a resume
        r = 1 if steps_total == 3 else 2
        ledger.append(
            LedgerRow(r, "trained", 3, steps_total, 0.5, 1.0, 0.0, 0.0, "rdp", "dp-accounting rdp", True, 1e-4, None)
        )
    again = PrivacyLedger.open(tmp_path / "privacy_ledger.jsonl")
    assert [r["round"] for r in again.rows] == [1, 2, 2] and again.accountant().steps == 9


def shop_client(folder: Path, cache: Path) -> RecommenderClient:
    overrides = (
        f"dataset=csv dataset.path={folder} partition.num_clients=2 strategy.num_rounds=2 "
        f"model.num_negatives=8 cache_dir={cache}"
    )
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config={"overrides": overrides},
    )
    return RecommenderClient(context)


def test_a_client_whose_catalogue_differs_by_one_item_text_fails_the_round(tmp_path):
    server_side = write_shop(tmp_path / "server", users=24, items=30)
    client_side = tmp_path / "org-a"
    shutil.copytree(server_side, client_side)
    items = (client_side / "items.csv").read_text().splitlines()
    items[5] = items[5].split(",")[0] + ",a different description"
    (client_side / "items.csv").write_text("\n".join(items) + "\n")

    server = shop_client(server_side, tmp_path / "cache")
    expected = catalogue_fingerprint(server.run.data)
    weights = get_weights(build_model(server.cfg, server.run))
    _, users, _ = server.evaluate(weights, {"server_round": 1, **expected})  # the same catalogue passes
    assert users > 0

    client = shop_client(client_side, tmp_path / "cache")
    mine = catalogue_fingerprint(client.run.data)
    assert mine["items_sha256"] == expected["items_sha256"]  # same ids: only the text tells them apart
    for call in (client.fit, client.evaluate):
        with pytest.raises(CatalogueMismatch) as e:
            call(weights, {"server_round": 1, **expected})
        message = str(e.value)
        assert "\n" not in message and "client 0: item catalogue mismatch" in message
        assert expected["item_texts_sha256"] in message and mine["item_texts_sha256"] in message
        assert str(client_side / "items.csv") in message


def test_the_server_sends_the_catalogue_fingerprint_in_every_fit_and_evaluate_config(tmp_path):
    from flwr.common import ndarrays_to_parameters
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy

    from common.tracking.store import RunStore
    from server.strategy import RecommenderFedAvg

    class Node(ClientProxy):  # only registered and sampled here; never called
        get_properties = get_parameters = fit = evaluate = reconnect = None

    manager = SimpleClientManager()
    for cid in ("1", "2"):
        manager.register(Node(cid))
    catalogue = {"items_sha256": "a" * 64, "item_texts_sha256": "b" * 64}
    params = ndarrays_to_parameters([np.zeros(2, dtype=np.float32)])
    strategy = RecommenderFedAvg(
        store=RunStore(tmp_path),
        num_rounds=2,
        evaluate_every=1,
        catalogue=catalogue,
        initial_parameters=params,
        min_fit_clients=2,
        min_available_clients=2,
    )
    fit = strategy.configure_fit(1, params, manager)
    strategy._row["train_loss"] = 0.0  # as aggregate_fit leaves it
    configs = [f.config for _, f in fit] + [e.config for _, e in strategy.configure_evaluate(1, params, manager)]
    configs += [e.config for _, e in strategy.configure_evaluate(2, params, manager)]  # the final, all-client one
    assert len(configs) == 6 and all(
        c["items_sha256"] == "a" * 64 and c["item_texts_sha256"] == "b" * 64 for c in configs
    )


# The acceptance test: a real simulation whose server process is killed (SIGKILL) right after
# round 1's checkpoint, resumed with resume=true, against an uninterrupted run of the same plan.
SMALL = [
    "dataset.num_users=60",
    "dataset.num_items=40",
    "dataset.mean_interactions=10",
    "partition.num_clients=2",
    "strategy.num_rounds=3",
    "model.num_negatives=8",
    "privacy.seeded_noise=true",
]


def ledger_rows(folder: Path) -> dict[str, list[dict]]:
    return {
        p.parent.name: [json.loads(line) for line in p.read_text().splitlines()]
        for p in sorted(folder.glob("client_*/privacy_ledger.jsonl"))
    }


def adapter(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.fixture
def process_groups():
    """Popen objects started in their own session; whatever is left is killed, even on failure."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and Ray's workers
        proc.wait()


@pytest.mark.slow
def test_a_run_killed_after_round_one_resumes_and_ends_as_an_uninterrupted_run(tmp_path, process_groups):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEDREC_PROGRESS": "0"}
    cache = f"cache_dir={tmp_path / 'cache'}"

    def start(name: str, *extra: str, env_extra: dict | None = None) -> subprocess.Popen:
        cmd = [
            sys.executable,
            "-m",
            "simulations.run",
            *SMALL,
            cache,
            f"privacy.ledger_dir={tmp_path / name / 'ledgers'}",
            f"hydra.run.dir={tmp_path / name / 'run'}",
            *extra,
        ]
        # Own process group: the kill takes Ray's workers down with the driver.
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**env, **(env_extra or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        process_groups.append(proc)
        return proc

    def finish(proc: subprocess.Popen) -> str:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-3000:]
        return out.decode()

    # Two at a time (Ray's start-up mostly waits): the uninterrupted run beside the one whose
    # server process kills itself (SIGKILL) right after round 1's checkpoint. An outside kill
    # would race the clients, whose round 2 takes a fraction of a second here.
    straight_proc = start("straight")
    killed = start("resumed", env_extra={"FEDREC_KILL_AFTER_ROUND": "1"})
    killed.communicate(timeout=600)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(killed.pid, signal.SIGKILL)  # Ray's workers, left behind by the driver
    finish(straight_proc)
    straight = tmp_path / "straight" / "run"
    assert killed.returncode == -signal.SIGKILL
    run = tmp_path / "resumed" / "run"
    ckpt = load_checkpoint(run)
    assert ckpt.round == 1 and not (run / "summary.json").exists()
    before = ledger_rows(tmp_path / "resumed" / "ledgers")
    # Killed before any client recorded round 2: otherwise it would (honestly) spend ε twice.
    # (The default: round 1 releases the popularity prior, then takes the first pooled step.)
    assert {c: [(r["round"], r["status"]) for r in rows] for c, rows in before.items()} == {
        c: [(1, "popularity_prior"), (1, "trained")] for c in ("client_0", "client_1")
    }

    resumed = start("resumed", "resume=true")
    # Meanwhile: a completed run with resume=true says so and trains nothing.
    reference = json.loads((straight / "summary.json").read_text())
    assert "already holds a completed run" in finish(start("straight", "resume=true"))
    assert json.loads((straight / "summary.json").read_text()) == reference
    changed = start("straight", "resume=true", "privacy.epsilon=4")
    _, err = changed.communicate(timeout=300)
    assert changed.returncode == 2 and "privacy.epsilon: 8.0 -> 4" in err.decode(), err.decode()[-2000:]
    finish(resumed)
    summary, reference = (json.loads((r / "summary.json").read_text()) for r in (run, straight))
    assert summary["timing"]["resumed_from_round"] == 1 and reference["timing"]["resumed_from_round"] is None
    assert summary["timing"]["rounds"] == 3 and summary["eval_users"] == reference["eval_users"] == 60
    assert [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert load_checkpoint(run).round == 3

    after, plain = ledger_rows(tmp_path / "resumed" / "ledgers"), ledger_rows(tmp_path / "straight" / "ledgers")
    for client, rows in after.items():
        assert rows[:2] == before[client]  # continued, never reset, round 1 (nor the prior) not redone
        assert [r["round"] for r in rows] == [1, 1, 2, 3]
        assert [r["status"] for r in rows] == ["popularity_prior", "trained", "trained", "trained"]
        assert [r["epsilon"] for r in rows] == pytest.approx([r["epsilon"] for r in plain[client]], abs=1e-9)
        entry, straight_entry = (
            s["privacy"]["per_client"][client.removeprefix("client_")] for s in (summary, reference)
        )
        assert entry["epsilon"] == pytest.approx(straight_entry["epsilon"], abs=1e-9)
        assert entry["steps"] == straight_entry["steps"] == rows[-1]["steps_total"]
        history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]
        recomputed = independent_epsilon(history, rows[0]["delta"], "rdp")
        assert entry["epsilon_check"] == pytest.approx(recomputed, abs=1e-9)
        assert entry["epsilon"] == pytest.approx(recomputed, rel=0.01)  # Opacus RDP vs dp-accounting RDP
    resumed_adapter, straight_adapter = adapter(run), adapter(straight)
    assert resumed_adapter.keys() == straight_adapter.keys()
    for name, values in resumed_adapter.items():
        np.testing.assert_allclose(values, straight_adapter[name], atol=1e-5, err_msg=name)


def test_a_client_whose_ledger_holds_fewer_steps_than_the_server_recorded_refuses(tmp_path):
    from common.privacy.accounting import PrivacyConfigError

    folder = write_shop(tmp_path / "shop", users=24, items=30)
    client = shop_client(folder, tmp_path / "cache")
    weights = get_weights(build_model(client.cfg, client.run))
    config = {"server_round": 1, **catalogue_fingerprint(client.run.data)}
    _, _, metrics = client.fit(weights, {**config, "ledger_steps": "{}"})
    recorded = int(metrics["steps_total"])
    assert recorded > 0
    # What the server then sends: this client's ledger holds them, so round 2 trains.
    _, _, again = client.fit(weights, {**config, "server_round": 2, "ledger_steps": json.dumps({"0": recorded})})
    assert int(again["steps_total"]) == 2 * recorded
    # The same SuperNode with its state wiped (or a resumed run's fresh process): refused.
    wiped = shop_client(folder, tmp_path / "cache")
    with pytest.raises(
        PrivacyConfigError,
        match=rf"client 0: privacy ledger lost or reset: holds 0 steps, the server "
        rf"recorded {2 * recorded}",
    ):
        wiped.fit(weights, {**config, "server_round": 3, "ledger_steps": json.dumps({"0": 2 * recorded})})


def fed_strategy(tmp_path, client_privacy: dict | None = None):
    from flwr.common import ndarrays_to_parameters
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy

    from common.tracking.store import RunStore
    from server.strategy import RecommenderFedAvg

    class Node(ClientProxy):  # only registered and sampled here; never called
        get_properties = get_parameters = fit = evaluate = reconnect = None

    manager = SimpleClientManager()
    for cid in ("1", "2"):
        manager.register(Node(cid))
    params = ndarrays_to_parameters([np.zeros(2, dtype=np.float32)])
    strategy = RecommenderFedAvg(
        store=RunStore(tmp_path),
        num_rounds=2,
        evaluate_every=1,
        initial_parameters=params,
        min_fit_clients=2,
        min_available_clients=2,
    )
    strategy.client_privacy = client_privacy or {}
    return strategy, manager, params


def test_the_server_sends_each_clients_recorded_ledger_steps(tmp_path):
    strategy, manager, params = fed_strategy(tmp_path, {0: {"steps": 6, "epsilon": 1.0}, 1: {"steps": 4}})
    configs = [f.config for _, f in strategy.configure_fit(2, params, manager)]
    assert [json.loads(c["ledger_steps"]) for c in configs] == [{"0": 6, "1": 4}] * 2


def test_two_clients_reporting_one_client_id_fail_the_round(tmp_path):
    from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters

    strategy, manager, params = fed_strategy(tmp_path)
    strategy.configure_fit(1, params, manager)
    ok = Status(Code.OK, "")
    fit = [(None, FitRes(ok, params, 10, {"client_id": 3, "train_loss": 0.5})) for _ in range(2)]
    with pytest.raises(RuntimeError, match="round 1: two clients sent train results as client-id 3"):
        strategy.aggregate_fit(1, fit, [])
    evaluate = [(None, EvaluateRes(ok, 0.0, 10, {"client_id": 3})) for _ in range(2)]
    with pytest.raises(RuntimeError, match="round 1: two clients sent evaluate results as client-id 3"):
        strategy.aggregate_evaluate(1, evaluate, [])
    distinct = [
        (
            None,
            FitRes(ok, ndarrays_to_parameters([np.ones(2, dtype=np.float32)]), 10, {"client_id": c, "train_loss": 0.5}),
        )
        for c in (3, 4)
    ]
    strategy.aggregate_fit(1, distinct, [])
    assert strategy._row["clients_ok"] == 2


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    from common.tracking.store import atomic_write, replace_durably

    path = tmp_path / "summary.json"
    atomic_write(path, "old")

    def disk_full(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        replace_durably(path, disk_full)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
