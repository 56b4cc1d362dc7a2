"""On-premise deployment (W1-6): clients on their own data folders, a catalogue-only ServerApp,
and a real TLS + SuperNode-authentication federation on 127.0.0.1 driven by the deploy/ scripts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common.config import compose
from common.data import leave_one_out, load_interaction_folder, make_synthetic
from common.deployment import certs
from common.deployment.export import split_for_deployment
from common.deployment.node import (
    check_server_plans,
    deployment_data_block,
    load_catalogue,
    load_client_data,
    load_server_data,
)
from common.privacy.accounting import AccountantState, PrivacyConfigError
from common.privacy.plans import federated_plan

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
ORGS = ["org-a", "org-b", "org-c"]


def _data():
    return make_synthetic(num_users=90, num_items=40, mean_interactions=12, seed=1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return split_for_deployment(_data(), ORGS, tmp_path_factory.mktemp("orgs"))


def _cfg(catalogue: Path, extra: str = ""):
    return compose(f"deployment.catalogue={catalogue} deployment.num_clients=3 {extra}")


def test_split_folders_hold_each_users_whole_history_once(folders):
    data = _data()
    loaded = {org: load_interaction_folder(folders[org]) for org in ORGS}
    users = [u for org in ORGS for u in loaded[org].user_ids]
    assert sorted(users) == sorted(data.user_ids)  # every user in exactly one organisation
    a = loaded[ORGS[0]]
    u = a.user_ids[0]
    src = data.user_ids.index(u)
    assert [a.item_ids[i] for i in a.sequences[0]] == [data.item_ids[i] for i in data.sequences[src]]
    assert a.item_ids == data.item_ids and a.item_text == data.item_text  # the full catalogue, in order
    cat = load_catalogue(folders["catalogue"])
    assert cat.item_ids == data.item_ids and cat.num_users == 0


def test_client_reads_only_its_own_folder_and_caches_embeddings_in_state_dir(folders, tmp_path):
    cfg = _cfg(folders["catalogue"])
    node = {"data-path": str(folders[ORGS[1]]), "state-dir": str(tmp_path / "state"), "client-id": 1}
    run = load_client_data(cfg, node)
    own = leave_one_out(load_interaction_folder(folders[ORGS[1]]))
    assert run.num_clients == 1 and np.array_equal(run.partitions[0], np.arange(own.num_users))
    assert [run.data.user_ids[u] for u in run.split.users] == [run.data.user_ids[u] for u in own.users]
    cached = list((tmp_path / "state" / "item_embeddings").glob("items-*.npy"))
    assert len(cached) == 1 and np.array_equal(np.load(cached[0]), run.item_text)
    stamp = cached[0].stat().st_mtime_ns
    again = load_client_data(cfg, node)  # a restarted SuperNode: read back, not re-encoded
    assert cached[0].stat().st_mtime_ns == stamp and np.array_equal(again.item_text, run.item_text)
    # Fairness groups are the client's own: its top 5 % most active users.
    lengths = np.array([len(t) for t in run.split.train])
    assert run.fairness.advantaged.any() and not run.fairness.advantaged.all()
    assert lengths[run.fairness.advantaged].min() >= lengths[~run.fairness.advantaged].max()


def test_published_activity_threshold_applies_to_every_client(folders, tmp_path):
    cfg = _cfg(folders["catalogue"], "deployment.activity_threshold=9")
    run = load_client_data(cfg, {"data-path": str(folders[ORGS[0]]), "client-id": 0})
    lengths = np.array([len(t) for t in run.split.train])
    assert np.array_equal(run.fairness.advantaged, lengths >= 9) and run.fairness.activity_threshold == 9
    assert 0 < run.fairness.advantaged.sum() < len(lengths)


def test_server_loads_only_the_catalogue(folders):
    cfg = _cfg(folders["catalogue"], "secagg=secaggplus secagg.max_weight=100 privacy.delta=1e-3")
    run = load_server_data(cfg)
    check_server_plans(cfg, run)  # local DP: nothing refused without users
    assert run.num_clients == 3 and run.split.num_users == 0 and run.data.num_items == 40
    assert run.item_text.shape == (40, 384)
    block = deployment_data_block(cfg, run, {"0": {"users": 30}, "2": {"users": 28}})
    assert block["users"] == 58 and block["clients"] == 3 and block["items"] == 40


@pytest.mark.parametrize(
    "extra, message",
    [
        ("secagg=secaggplus privacy.delta=1e-3", "secagg.max_weight"),
        ("", r"^privacy.delta must be set in a deployment with privacy on"),
        ("secagg=secaggplus secagg.max_weight=100 privacy.noise=distributed", "distributed is not supported"),
    ],
)
def test_server_refuses_what_it_cannot_do_without_users(folders, extra, message):
    cfg = _cfg(folders["catalogue"], extra)
    with pytest.raises((ValueError, PrivacyConfigError), match=message) as err:
        check_server_plans(cfg, load_server_data(cfg))
    assert "\n" not in str(err.value)


def test_bad_node_config_and_catalogue_are_named(folders, tmp_path):
    cfg = _cfg(folders["catalogue"])
    with pytest.raises(ValueError, match="data-format='parquet'"):
        load_client_data(cfg, {"data-path": str(folders[ORGS[0]]), "data-format": "parquet", "client-id": 0})
    with pytest.raises(ValueError, match=str(tmp_path / "missing")):
        load_client_data(cfg, {"data-path": str(tmp_path / "missing"), "client-id": 0})
    with pytest.raises(ValueError, match="client-id is missing"):
        load_client_data(cfg, {"data-path": str(folders[ORGS[0]])})
    with pytest.raises(ValueError, match="items.csv"):
        load_catalogue(tmp_path)


def test_clientapp_uses_node_config_data_device_and_id(folders, tmp_path):
    from flwr.app import Context, RecordDict

    from client.app import RecommenderClient

    overrides = f"deployment.catalogue={folders['catalogue']} deployment.num_clients=3"
    node = {"data-path": str(folders[ORGS[2]]), "state-dir": str(tmp_path), "client-id": 7, "device": "cpu"}
    client = RecommenderClient(Context(0, 0, node, RecordDict(), {"overrides": overrides}))
    own = leave_one_out(load_interaction_folder(folders[ORGS[2]]))
    assert client.client_id == 7 and len(client.rows) == own.num_users and str(client.device) == "cpu"
    assert client.ledger_path == tmp_path / "privacy_ledger.jsonl"
    with pytest.raises(ValueError, match="no node-config data-path"):
        RecommenderClient(Context(0, 0, {"partition-id": 0}, RecordDict(), {"overrides": overrides}))


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            "privacy.epsilon=8",
            r"max-epsilon=4: the run's budget ε=8 \(privacy.budget_epsilon, else privacy.epsilon\) is over",
        ),
        ("privacy.epsilon=8 privacy.budget_epsilon=5", "max-epsilon=4: the run's budget ε=5 "),
        (
            "privacy=none",
            "max-epsilon=4: this organisation trains only with privacy.noise=local; the run asks privacy.noise=none",
        ),
        ("privacy.noise=central privacy.epsilon=2", "privacy.noise=central"),
        ("privacy.epsilon=4", None),  # at the ceiling: trains
        ("privacy.epsilon=8 privacy.budget_epsilon=3", None),
    ],
)
def test_an_organisations_max_epsilon_overrides_the_coordinators_budget(folders, tmp_path, extra, message):
    from common.deployment.node import check_org_budget

    cfg = _cfg(folders["catalogue"], extra)
    node = {"data-path": str(folders[ORGS[0]]), "client-id": 0, "max-epsilon": "4"}
    if message is None:
        check_org_budget(cfg, node)
        return
    with pytest.raises(PrivacyConfigError, match=message) as err:
        load_client_data(cfg, node)  # before any of its data is read
    assert "\n" not in str(err.value)


def test_supernode_script_refuses_quotes_in_node_config_values(tmp_path):
    org, data = tmp_path / "org", tmp_path / "o'brien"
    org.mkdir(), data.mkdir()
    (org / "auth.key").write_text(""), (org / "ca.crt").write_text("")
    env = {**os.environ, "FEDREC_VENV": str(BIN.parent)}
    out = subprocess.run(
        ["bash", str(DEPLOY / "supernode.sh"), "127.0.0.1:1", org, data, tmp_path / "state", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "quotes and newlines are not allowed in node-config values" in out.stderr
    assert str(data) in out.stderr and not (tmp_path / "state").exists()  # nothing started


def test_stop_script_does_not_signal_a_stale_pid_that_is_not_flower(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a reused PID, as it were
    try:
        pidfile = tmp_path / "supernode.pid"
        pidfile.write_text(str(sleeper.pid))
        out = subprocess.run(
            ["bash", str(DEPLOY / "stop.sh"), pidfile],
            env={**os.environ, "FEDREC_VENV": str(BIN.parent)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and "not running a Flower SuperLink/SuperNode; not signalled" in out.stdout
        assert sleeper.poll() is None and not pidfile.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_wait_for_log_ignores_what_an_earlier_start_wrote(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("SuperNode ID: 1 (the previous start)\n")
    script = (
        f"source {DEPLOY / 'common.sh'}; start_bg {log} {tmp_path / 'x.pid'} sleep 30; "
        f'wait_for_log {log} {tmp_path / "x.pid"} "SuperNode ID:" 2; rc=$?; kill -- -$(cat {tmp_path / "x.pid"}); exit $rc'
    )
    out = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, "FEDREC_VENV": str(BIN.parent)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "'SuperNode ID:' not in" in out.stderr


# ---- a real federation on 127.0.0.1 ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(pid: int) -> None:
    """End a process group started in its own session, waiting for it; ignore if gone."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(not (BIN / "flower-superlink").exists(), reason="flower-superlink not installed")
def test_tls_federation_of_three_supernodes_with_dp_and_secagg(folders, tmp_path):
    """3 registered SuperNodes on their own folders run 2 rounds of DP + SecAgg+; an unregistered
    key and a plain-text connection are refused; every process is stopped by PID."""
    certs.generate(tmp_path / "certs", [*ORGS, "intruder"])
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr"),
        "FEDREC_VENV": str(BIN.parent),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "HF_HUB_OFFLINE": "1",
    }
    port = _free_port()
    link, states = tmp_path / "link", {org: tmp_path / "state" / org for org in ORGS}
    pidfiles = [link / "superlink.pid", *(s / "supernode.pid" for s in states.values())]
    own: list[subprocess.Popen] = []

    def sh(*args, **kw) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [str(a) for a in args], env={**env, **kw}, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, f"{args[0]}: {out.stdout}{out.stderr}"
        return out

    def refused_node(name: str, *flags) -> subprocess.Popen:
        with open(tmp_path / f"{name}.log", "w") as log:  # the child keeps its own descriptor
            own.append(
                subprocess.Popen(
                    [
                        str(BIN / "flower-supernode"),
                        "--superlink",
                        f"127.0.0.1:{port}",
                        "--port",
                        str(_free_port()),
                        "--max-retries",
                        "2",
                        "--max-wait-time",
                        "20",
                        *map(str, flags),
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return own[-1]

    try:
        sh(DEPLOY / "superlink.sh", tmp_path / "certs", link, "127.0.0.1", port)
        sh(DEPLOY / "connection.sh", "fedrec", f"127.0.0.1:{port}", tmp_path / "certs" / "ca.crt")
        reg = sh(DEPLOY / "register.sh", "fedrec", tmp_path / "certs", *ORGS)
        assert reg.stdout.count("registered successfully") == 3
        for i, org in enumerate(ORGS):
            sh(
                DEPLOY / "supernode.sh",
                f"127.0.0.1:{port}",
                tmp_path / "certs" / "supernodes" / org,
                folders[org],
                states[org],
                i,
                DEVICE="cpu",
                RUNTIME_PORT=str(_free_port()),
            )
        intruder = tmp_path / "certs" / "supernodes" / "intruder"
        unregistered = refused_node(
            "intruder",
            "--root-certificates",
            intruder / "ca.crt",
            "--auth-supernode-private-key",
            intruder / "auth.key",
        )
        plaintext = refused_node("plaintext", "--insecure")

        out_dir = tmp_path / "run"
        overrides = (
            f"deployment.catalogue={folders['catalogue']} deployment.num_clients=3 strategy.num_rounds=2 "
            f"privacy=dp privacy.delta=1e-3 secagg=secaggplus secagg.max_weight=100 output_dir={out_dir}"
        )
        run = subprocess.run(
            [str(BIN / "flwr"), "run", ".", "fedrec", "--stream", "--run-config", f'overrides="{overrides}"'],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0 and (out_dir / "summary.json").exists(), run.stdout[-4000:] + run.stderr[-2000:]

        # Refused: the unregistered key by the SuperLink, the plain-text connection by TLS.
        for proc in (unregistered, plaintext):
            assert proc.wait(timeout=60) != 0
        assert "Failed to activate SuperNode" in (tmp_path / "intruder.log").read_text()
        assert "No SuperNode found with the given public key" in (link / "superlink.log").read_text()
        assert "Server disconnected without sending a response" in (tmp_path / "plaintext.log").read_text()

        summary = json.loads((out_dir / "summary.json").read_text())
        metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        assert [m["round"] for m in metrics] == [1, 2] and all(m["clients_ok"] == 3 for m in metrics)
        assert summary["secure_aggregation"]["rounds_completed"] == 2
        assert summary["data"]["clients"] == 3 and summary["data"]["items"] == 40
        assert (out_dir / "adapter" / "adapter_model.safetensors").exists() and (out_dir / "config.yaml").exists()
        per_client = summary["privacy"]["per_client"]
        assert sorted(per_client) == ["0", "1", "2"]
        cfg = compose(overrides)
        for i, org in enumerate(ORGS):
            users = leave_one_out(load_interaction_folder(folders[org])).num_users
            assert summary["data"]["client_users"][str(i)] == users  # each client's own users
            # ε = what this client's plan (its own users and δ) spends in 2 rounds.
            plan = federated_plan(cfg, load_client_data(cfg, {"data-path": str(folders[org]), "client-id": i}), 0)
            assert plan.total_steps == 2 and plan.delta == 1e-3 < 1 / users  # one δ for every organisation
            expected = AccountantState().add(plan.dp.noise_multiplier, plan.sample_rate, plan.total_steps)
            eps = per_client[str(i)]["epsilon"]
            assert 0 < eps <= 8.0 and eps == pytest.approx(expected.epsilon(plan.delta, "rdp"), rel=1e-9)
            ledger = [json.loads(x) for x in (states[org] / "privacy_ledger.jsonl").read_text().splitlines()]
            assert [r["round"] for r in ledger] == [1, 2] and ledger[-1]["epsilon"] == eps
    finally:
        for proc in own:
            _stop_group(proc.pid)
        for pidfile in pidfiles:
            if pidfile.exists():
                _stop_group(int(pidfile.read_text()))
