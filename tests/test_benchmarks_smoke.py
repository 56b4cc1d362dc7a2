"""Smoke tests for the scripts in benchmarks/: they run end to end on a tiny setting."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--users", "40", "--repeats", "1", "--dataset-overrides", "dataset.num_users=60", "dataset.num_items=50"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dp_overhead.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dp_overhead_prints_a_positive_ratio():
    proc = _run(*TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("projection"))
    ratio = float(row.split()[-1])
    assert ratio > 0 and re.search(r"torch threads: \d+", proc.stdout)


def test_dp_overhead_json():
    proc = _run(*TINY, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    (row,) = out["results"]
    assert row["model"] == "projection" and row["ratio"] > 0 and row["users"] == 40
    assert row["examples_non_dp"] == 40 and row["examples_dp"] > 0


# --- the other scripts: each on a tiny setting through the real harness ---------------------
TINY_DATA = ["dataset.num_users=40", "dataset.num_items=40", "dataset.mean_interactions=8", "model.num_negatives=8"]


def _script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_dp_overhead_runs_the_lora_adapter_too():
    proc = _run(
        "--models",
        "lora",
        "--json",
        "--users",
        "8",
        "--repeats",
        "1",
        "--dataset-overrides",
        "dataset.num_users=30",
        "dataset.num_items=40",
        "dataset.mean_interactions=8",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(proc.stdout)["results"]
    assert row["model"] == "lora" and row["examples_non_dp"] == 8
    assert row["ratio"] == pytest.approx(row["s_per_example_dp"] / row["s_per_example_non_dp"])


@pytest.mark.slow
def test_federation_overhead_prints_the_ratio_of_its_two_timings():
    proc = _script("federation_overhead.py", "--clients", "2", "--rounds", "2", "--json", "--overrides", *TINY_DATA)
    r = json.loads(proc.stdout)
    assert len(r["federated_rounds_s"]) == 2 and len(r["centralized_epochs_s"]) == 2
    # Round 2 is the steady figure; the ratio is exactly the two steady timings' quotient.
    assert r["federated_s_per_round"] == r["federated_rounds_s"][1] > 0
    assert r["ratio"] == pytest.approx(r["federated_s_per_round"] / r["centralized_s_per_epoch"])


@pytest.mark.slow
def test_bytes_per_round_counts_at_least_the_adapter_each_way():
    proc = _script(
        "bytes_per_round.py",
        "--models",
        "projection",
        "--clients",
        "2",
        "--rounds",
        "1",
        "--json",
        "--dataset-overrides",
        *TINY_DATA,
        "--overrides",
        "privacy=none",
    )
    (row,) = json.loads(proc.stdout)
    assert row["adapter_bytes"] == 4 * row["adapter_parameters"] > 0
    # One training message each way per client and round, each carrying the whole adapter.
    assert row["train_messages"] == 2
    assert row["adapter_bytes"] < row["train_down"] < row["adapter_bytes"] * 1.1
    assert row["adapter_bytes"] < row["train_up"] < row["adapter_bytes"] * 1.1
    assert row["ratio"] == pytest.approx(row["train_up"] / 2_000_000)


@pytest.mark.slow
def test_scale_reports_seconds_per_round_and_peak_memory(tmp_path):
    proc = _script(
        "scale.py",
        "--users",
        "30",
        "--items",
        "40",
        "--mean-interactions",
        "8",
        "--rounds",
        "2",
        "--data-dir",
        str(tmp_path),
        "--overrides",
        "model.num_negatives=8",
    )
    out = proc.stdout
    assert "clients per round [3, 3]" in out  # 10 % of 30 one-user clients
    seconds, _, ratio_s, gib, _, ratio_m = out.strip().splitlines()[-1].split()
    assert float(ratio_s) == pytest.approx(float(seconds) / 60, abs=0.01)
    # A Python process with torch alone holds a few hundred MB: the tree's PSS is above that.
    assert 0.3 < float(gib) < 8 and float(ratio_m) == pytest.approx(float(gib) / 8, abs=0.01)


@pytest.mark.slow
def test_quality_cost_prints_the_ndcg_ratio_of_a_fresh_pair():
    overrides = " ".join(
        [*TINY_DATA, "privacy=none", "partition.num_clients=2", "strategy.num_rounds=1", "train.epochs=1"]
    )
    proc = _script("quality_cost.py", "--run", overrides)
    row = proc.stdout.splitlines()[1].split()
    fed, cen, ratio = float(row[-9]), float(row[-8]), float(row[-1])
    assert fed > 0 and cen > 0 and ratio == pytest.approx(fed / cen, rel=0.05)  # from 4-decimal figures


def test_causal_cache_benchmark_reports_exact_states_and_positive_ratios():
    out = json.loads(
        _script(
            "causal_cache.py",
            "model.path=tiny-random",
            "model.top_layers=1",
            *TINY_DATA[:3],
            "--prompts",
            "4",
            "--repeats",
            "1",
            "--json",
        ).stdout
    )
    assert out["prompts"] == 4 and out["layers"] == 2 and out["top_layers"] == 1
    assert out["train_ratio"] > 0 and out["score_ratio"] > 0 and out["fill_s_per_prompt"] > 0
    # The cached path is the same computation: differences are float rounding only.
    assert out["max_grad_diff"] < 1e-5 and out["max_score_diff"] < 1e-5


def _ml1m_convert():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ml1m_pairs", ROOT / "benchmarks" / "ml1m_pairs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.convert


def test_ml1m_pairs_converter_gives_a_random_order_the_csv_loader_reads(tmp_path):
    """A tiny ML-1M-shaped folder: every pair kept, each user's timestamps a permutation."""
    import pandas as pd

    from common.data import load_dataset

    convert = _ml1m_convert()
    src = tmp_path / "ml-1m"
    src.mkdir()
    pairs = [(str(u), str(m)) for u in (1, 2, 3) for m in range(1, 8) if (u + m) % 3]
    pd.DataFrame(pairs, columns=["userID", "movieID"]).to_parquet(src / "ratings-ids-only.parquet")
    (src / "movies.dat").write_text(
        "".join(f"{m}::Film {m} (1999)::Drama|Comedy\n" for m in range(1, 8)), encoding="latin-1"
    )
    (src / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n")
    stats = convert(src, tmp_path / "out", seed=3)
    assert stats == {"pairs": len(pairs), "users": 3, "items": 7}
    inter = pd.read_csv(tmp_path / "out" / "interactions.csv", dtype=str)
    assert sorted(zip(inter.user_id, inter.item_id)) == sorted(pairs)
    for _, g in inter.groupby("user_id"):
        assert sorted(g.timestamp.astype(int)) == list(range(len(g)))
    data = load_dataset("csv", str(tmp_path / "out"))
    assert data.num_items == 7 and "Film 3 (1999). Genres: Drama, Comedy" in list(data.item_text)
    with pytest.raises(SystemExit, match="not in movies.dat"):
        pd.DataFrame([("1", "99")], columns=["userID", "movieID"]).to_parquet(src / "ratings-ids-only.parquet")
        convert(src, tmp_path / "out2")


@pytest.mark.skipif(
    not (ROOT.parent / "shared/data/ml-1m/ratings-ids-only.parquet").exists(), reason="ML-1M pairs not present"
)
def test_ml1m_pairs_converter_on_the_real_pairs(tmp_path):
    stats = _ml1m_convert()(ROOT.parent / "shared/data/ml-1m", tmp_path, seed=0)
    assert stats == {"pairs": 1_000_209, "users": 6_040, "items": 3_883}


@pytest.mark.slow
def test_pooled_dp_reproduces_the_federated_default_run(tmp_path):
    """benchmarks/pooled_dp.py (the tuning tool) runs the default private run's mechanism without
    Flower: with seeded noise its adapter equals the real simulation's (SecAgg+, distributed
    noise, the prior) up to SecAgg+'s quantization, so settings tuned with it mean the same."""
    from safetensors.numpy import load_file

    overrides = [
        *TINY_DATA,
        "partition.num_clients=3",
        "strategy.num_rounds=3",
        "privacy.seeded_noise=true",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.run", *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _script("pooled_dp.py", "--seeded-noise", "--eval-every", "3", "--save", str(tmp_path / "pooled"), "--", *overrides)
    fed = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    pooled = dict(np.load(tmp_path / "pooled" / "adapter_seed0.npz"))
    assert set(fed) == set(pooled)
    init = _initial_adapter(overrides)
    moved = max(float(np.abs(pooled[k] - init[k]).max()) for k in pooled)
    worst = max(float(np.abs(fed[k] - pooled[k]).max()) for k in pooled)
    assert moved > 1e-2  # three noisy Adam steps and the prior moved the weights
    assert worst < 1e-3 * moved, f"pooled differs from the federation by {worst} (moved {moved})"


def _initial_adapter(overrides):
    from common.config import compose
    from common.data.run import load_run_data
    from common.model.factory import build_model

    cfg = compose(overrides)
    model = build_model(cfg, load_run_data(cfg))
    return {n: p.detach().numpy() for n, p in model.named_parameters() if p.requires_grad}


def test_hostile_client_prints_every_scenario():
    proc = _script("hostile_client.py", "--rounds", "1", "--", *TINY_DATA, "partition.num_clients=4")
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "±" in line]
    assert len(rows) == 10
    cells = {tuple(c.strip() for c in r.split("|")[1:4]): r.split("|")[4:6] for r in rows}
    # A naive attacker is rejected every round whatever it sends: the promote and sink runs then
    # average the same nine honest updates, so they end with the same model and metrics.
    assert cells[("promote", "fixed", "naive")] == cells[("sink", "fixed", "naive")]
    assert cells[("promote", "off", "–")] != cells[("promote", "fixed", "naive")]
