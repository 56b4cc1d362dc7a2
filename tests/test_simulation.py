"""End-to-end: the real Flower simulation engine runs the apps and writes the run folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.config import compose
from common.privacy.accounting import independent_epsilon
from simulations.run import app_overrides

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "dataset.num_users=120",
    "dataset.num_items=80",
    "dataset.mean_interactions=15",
    "partition.num_clients=3",
    "strategy.num_rounds=2",
    "model.num_negatives=16",
]


def run_cli(tmp_path: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "FEDREC_CACHE": str(tmp_path / "cache"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "simulations.run", *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_seeded_runs_of_the_default_reproduce_their_metrics_exactly(tmp_path):
    """privacy.seeded_noise=true (not private): sampling, noise, the prior, dropout and SecAgg+'s
    stochastic rounding all follow the seed, so two runs give identical results."""
    results = []
    for name in ("a", "b"):
        proc = run_cli(tmp_path / name, *SMALL, "privacy.seeded_noise=true")
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((tmp_path / name / "run" / "summary.json").read_text())
        losses = [json.loads(line)["train_loss"] for line in (tmp_path / name / "run" / "metrics.jsonl").open()]
        results.append((summary["metrics"], losses))
    assert results[0] == results[1]
    assert results[0][0]["full"]["ndcg@10"] > 0


@pytest.mark.slow
def test_two_round_dp_simulation_writes_a_complete_run_folder(tmp_path):
    proc = run_cli(tmp_path, *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    full = summary["metrics"]["full"]
    for key in ("ndcg@10", "hr@10", "mrr", "ndcg@5", "hr@20"):
        assert 0.0 <= full[key] <= 1.0, key
    assert full["hr@10"] >= full["ndcg@10"] > 0
    assert set(summary["metrics"]["sampled"]) >= {"ndcg@10", "hr@10", "mrr"}
    privacy = summary["privacy"]
    assert privacy["unit"] == "user" and privacy["delta"] < 1 / 120
    assert len(privacy["per_client"]) == 3
    # The default: SecAgg+ with distributed noise and the popularity prior, named in the summary.
    assert summary["secure_aggregation"]["protocol"] == "secagg+" and privacy["noise_placement"] == "distributed"
    assert "secagg+" in privacy["mechanism"] and privacy["popularity_prior"]["released"]
    ledger = [json.loads(line) for line in (run / "privacy_ledger.jsonl").read_text().splitlines()]
    # The whole plan spends the target: after the last round every client is at ε ≈ 8.
    for cid, client in privacy["per_client"].items():
        assert client["epsilon"] == pytest.approx(8.0, rel=0.02)
        rows = [r for r in ledger if str(r["client_id"]) == cid]
        assert [(r["round"], r["status"]) for r in rows] == [(1, "popularity_prior"), (1, "trained"), (2, "trained")]
        # The reported ε equals Google's dp-accounting recomputation of the prior + training steps.
        history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]
        assert history[0][1:] == (1.0, 1) and client["steps"] == 3
        assert client["epsilon"] == pytest.approx(independent_epsilon(history, client["delta"], "rdp"), rel=0.01)
    assert summary["eval_users"] == summary["data"]["users"] == sum(summary["data"]["client_users"])
    assert {"timing", "fairness", "data"} <= summary.keys()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    # Distributed noise logs a real (DP) training loss every round, not nan.
    assert all(0 < r["train_loss"] < 20 and r["train_loss_noise_std"] > 0 for r in rows)
    # The accountant persists across rounds: ε grows from round 1 to round 2, never resets.
    for client, eps1 in rows[0]["epsilon_per_client"].items():
        assert 0 < eps1 < rows[1]["epsilon_per_client"][client]
    assert rows[0]["bytes_down_per_client"] == summary["communication"]["adapter_bytes"]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    # config.yaml is what the Flower apps composed from the same overrides.
    saved = OmegaConf.load(run / "config.yaml")
    assert saved == compose(app_overrides(SMALL, Path(saved.output_dir)))
    assert "NDCG@10" in proc.stdout and "federated DP" in proc.stdout
    # No terminal: no progress bar, one log line per round instead.
    log = proc.stdout + proc.stderr
    assert "round 1/2" in log and "round 2/2" in log and "━" not in log


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["popularity", "centralized"])
def test_baselines_write_the_same_summary_format(tmp_path, baseline):
    proc = run_cli(tmp_path, *SMALL, f"baseline={baseline}", "train.epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["kind"] == baseline
    assert 0 < summary["metrics"]["full"]["hr@10"] <= 1
    assert summary["privacy"]["unit"] == "user"
    if baseline == "centralized":
        assert summary["privacy"]["epsilon_max"] == pytest.approx(8.0, rel=0.02)


@pytest.mark.parametrize(
    "overrides, message",
    [
        # 1/120 users < 0.01 < 1/40 users per client: δ is bounded by all users protected.
        (["privacy.delta=0.01"], "delta"),
        (["partition=cross_device"], "cross_device"),
        (["privacy.epsilon=0.000001"], "epsilon"),
        (["model.lm.path=/nonexistent/model"], "/nonexistent/model"),
        (["dataset=movielens_100k", "dataset.path=/nonexistent/ml-100k"], "/nonexistent/ml-100k"),
    ],
)
def test_bad_input_is_refused_before_training_with_one_line(tmp_path, overrides, message):
    small = SMALL
    if overrides[0].startswith("dataset="):
        small = [o for o in SMALL if not o.startswith("dataset.")]
    if overrides[0].startswith("partition="):
        small = [o for o in SMALL if not o.startswith("partition.")]
    proc = run_cli(tmp_path, *small, *overrides, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("fedrec: error:") and message in err[-1]
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_flwr_run_config_and_harness_compose_the_same_config():
    overrides = ["privacy.epsilon=4", "partition=dirichlet", "model.item_ids=true"]
    one_string = app_overrides(overrides, Path("/tmp/x"))
    assert compose(one_string) == compose([*overrides, "output_dir=/tmp/x"])
    cfg = compose(one_string)
    assert cfg.privacy.epsilon == 4 and cfg.partition.scheme == "dirichlet" and cfg.output_dir == "/tmp/x"


@pytest.mark.slow
def test_flwr_run_cli_runs_the_same_app_from_the_same_conf(tmp_path):
    """`flwr run .` with one run_config string gives the run folder and config of the harness."""
    home = tmp_path / "flwr_home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\noptions.num-supernodes = 3\n'
    )
    out = tmp_path / "run"
    overrides = " ".join([*SMALL, f"output_dir={out}"])
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FEDREC_CACHE": str(tmp_path / "cache"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    try:
        proc = subprocess.run(
            [str(bin_dir / "flwr"), "run", ".", "--stream", "--run-config", f'overrides="{overrides}"'],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    finally:
        # `flwr run` leaves a local SuperLink behind; stop the one this test started, by PID.
        found = subprocess.run(["pgrep", "-f", f"{home}/local-superlink"], capture_output=True, text=True)
        for pid in found.stdout.split():
            os.kill(int(pid), 9)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["privacy"]["per_client"]) == 3 and summary["eval_users"] > 0
    assert OmegaConf.load(out / "config.yaml") == compose(overrides)


def test_a_rerun_skips_a_completed_run_of_the_same_config_and_redoes_a_changed_one(tmp_path):
    args = [*SMALL, "baseline=popularity"]
    first = run_cli(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = tmp_path / "run" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    again = run_cli(tmp_path, *args)
    assert again.returncode == 0 and "skipped" in again.stdout
    assert summary.stat().st_mtime_ns == stamp
    changed = run_cli(tmp_path, *args, "eval.sampled_negatives=50")
    assert changed.returncode == 0 and "skipped" not in changed.stdout
    assert summary.stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_the_same_seed_gives_the_same_metrics(tmp_path):
    def metrics(name, seed):
        proc = run_cli(
            tmp_path / name, *SMALL, "baseline=centralized", "privacy=none", "train.epochs=2", f"seed={seed}"
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads((tmp_path / name / "run" / "summary.json").read_text())["metrics"]

    a, b, c = metrics("a", 3), metrics("b", 3), metrics("c", 4)
    assert a == b
    assert a != c


@pytest.mark.slow
def test_a_federated_dp_run_with_seeded_noise_repeats_with_the_same_seed(tmp_path):
    def metrics(name):
        proc = run_cli(tmp_path / name, *SMALL, "privacy.seeded_noise=true", "seed=5")
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads((tmp_path / name / "run" / "summary.json").read_text())["metrics"]["full"]

    a, b = metrics("a"), metrics("b")
    # Clients' results may arrive in any order, so FedAvg's float sums may differ in the last bits.
    assert a == pytest.approx(b, rel=1e-6)
