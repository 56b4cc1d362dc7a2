"""Every baseline runs in-process on small synthetic data and writes the common summary."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from common.config import compose
from common.data.run import load_run_data
from common.privacy.accounting import independent_epsilon
from common.privacy.plans import federated_plan
from simulations.run import execute

SMALL = [
    "dataset.num_users=90",
    "dataset.num_items=60",
    "dataset.mean_interactions=12",
    "partition.num_clients=3",
    "strategy.num_rounds=2",
    "model.num_negatives=16",
    "train.epochs=2",
]


def run_baseline(tmp_path, *overrides):
    cfg = compose([*SMALL, f"cache_dir={tmp_path / 'cache'}", *overrides])
    out = tmp_path / "run"
    summary = execute(cfg, [], out)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    return cfg, summary, out


def weighted_client_mean(summary, metric):
    clients = summary["fairness"]["clients"].values()
    return sum(c["users"] * c[metric] for c in clients) / sum(c["users"] for c in clients)


@pytest.mark.parametrize(
    "baseline, privacy",
    [
        ("popularity", "none"),
        ("centralized", "none"),
        ("centralized", "dp"),
        ("local", "none"),
        ("local", "dp"),
        ("sasrec_ids", "none"),
    ],
)
def test_baseline_writes_the_summary_with_per_client_results(tmp_path, baseline, privacy):
    cfg, summary, out = run_baseline(tmp_path, f"baseline={baseline}", f"privacy={privacy}")
    assert summary["kind"] == baseline
    full = summary["metrics"]["full"]
    assert 0 < full["ndcg@10"] <= full["hr@10"] <= 1
    # Per-client results partition the users and add up to the overall user-weighted means.
    clients = summary["fairness"]["clients"]
    assert len(clients) == 3 and sum(c["users"] for c in clients.values()) == summary["eval_users"] == 90
    for metric in ("ndcg@10", "hr@10", "mrr"):
        assert weighted_client_mean(summary, metric) == pytest.approx(full[metric], rel=1e-9)
    assert summary["privacy"]["enabled"] is (privacy == "dp")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if baseline != "popularity":
        epochs = 2 if baseline != "local" else cfg.strategy.num_rounds * cfg.strategy.local_epochs
        assert [r["round"] for r in rows] == list(range(1, epochs + 1))


def test_local_only_clients_spend_the_federated_plan_and_match_an_independent_accountant(tmp_path):
    cfg, summary, _ = run_baseline(tmp_path, "baseline=local", "strategy.local_epochs=2")
    run = load_run_data(cfg)
    per_client = summary["privacy"]["per_client"]
    assert sorted(per_client) == ["0", "1", "2"]
    for c, entry in per_client.items():
        plan = federated_plan(cfg, run, int(c))
        # Alone, a client takes exactly the steps and noise it would take in the federation.
        assert entry["steps"] == plan.total_steps and entry["noise_multiplier"] == plan.dp.noise_multiplier
        assert entry["epsilon"] == pytest.approx(8.0, rel=0.02)
        history = [(entry["noise_multiplier"], entry["sample_rate"], entry["steps"])]
        assert entry["epsilon"] == pytest.approx(independent_epsilon(history, entry["delta"], "rdp"), rel=0.01)
    assert summary["communication"]["adapter_bytes"] == 0


def test_sasrec_ids_has_no_text_path_and_differs_from_the_text_model(tmp_path):
    _, ids, out = run_baseline(tmp_path / "ids", "baseline=sasrec_ids", "privacy=none")
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any("id_emb" in k for k in weights) and not any("proj" in k for k in weights)
    _, text, _ = run_baseline(tmp_path / "text", "baseline=centralized", "privacy=none")
    assert ids["metrics"]["full"] != text["metrics"]["full"]


def test_epsilon_inf_is_the_non_private_run():
    cfg = compose(["privacy.epsilon=inf"])
    assert cfg.privacy.enabled is False and np.isinf(cfg.privacy.epsilon)
    assert compose(["privacy.epsilon=8"]).privacy.enabled is True
