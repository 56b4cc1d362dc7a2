"""Secure aggregation (SecAgg+): exact up to the computed quantization bound, tolerant of
dropouts up to its threshold, and blind to any single client's update."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from omegaconf import OmegaConf
from safetensors.numpy import load_file

from common.config import compose
from common.secagg.protocol import SecAggConfigError, check_secagg, dropout_clients, quantization_error_bound
from common.training.updates import clip_update

sys.path.insert(0, str(Path(__file__).parent))
from test_simulation import run_cli  # noqa: E402

SMALL = [
    "dataset.num_users=120",
    "dataset.num_items=80",
    "dataset.mean_interactions=15",
    "partition.num_clients=4",
    "strategy.num_rounds=1",
    "model.num_negatives=16",
    "model.dropout=0.0",
    "privacy.noise=local",
    "secagg=secaggplus",
    "privacy.seeded_noise=true",  # reproducible noise: tests only
]


def reference_mean_update(tmp_path, overrides, clients):
    """Each client's update computed again in this process; their user-weighted mean."""
    import torch

    from client.app import RecommenderClient
    from common.data.run import load_run_data
    from common.model.factory import build_model
    from common.serialization import get_weights

    torch.set_num_threads(1)  # as in the simulation's one-CPU actors
    one_string = " ".join([*overrides, f"cache_dir={tmp_path / 'cache'}"])
    cfg = compose(one_string)
    init = get_weights(build_model(cfg, load_run_data(cfg)))
    updates, weights = [], []
    for cid in clients:
        ctx = Context(
            run_id=1,
            node_id=cid + 1,
            node_config={"partition-id": cid, "num-partitions": 4},
            state=RecordDict(),
            run_config={"overrides": one_string},
        )
        update, n, _ = RecommenderClient(ctx).fit(init, {"server_round": 1})
        updates.append(update)
        weights.append(n)
    w = np.asarray(weights, dtype=np.float64)
    mean = [sum(wi * u[k] for wi, u in zip(w, updates)) / w.sum() for k in range(len(init))]
    return cfg, init, mean, weights


def adapter(run_dir: Path) -> list[np.ndarray]:
    """The saved adapter's tensors in the model's parameter order (the file sorts by name)."""
    from common.data.run import load_run_data
    from common.model.factory import build_model

    cfg = OmegaConf.load(run_dir / "config.yaml")
    names = [n for n, p in build_model(cfg, load_run_data(cfg)).named_parameters() if p.requires_grad]
    tensors = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    return [tensors[n] for n in names]


@pytest.mark.slow
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_secagg_aggregate_equals_plain_weighted_mean_of_the_survivors(tmp_path, dropout):
    overrides = [*SMALL, f"secagg.simulate_dropout={dropout}"]
    proc = run_cli(tmp_path, *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    cfg = OmegaConf.load(tmp_path / "run" / "config.yaml")
    dropped = dropout_clients(4, dropout, cfg.seed, 1)
    assert len(dropped) == round(dropout * 4)
    sa = summary["secure_aggregation"]
    assert sa["protocol"] == "secagg+" and sa["clients_dropped"] == len(dropped) and sa["rounds_completed"] == 1
    survivors = [c for c in range(4) if c not in dropped]
    ref_cfg, init, mean, weights = reference_mean_update(tmp_path, overrides, survivors)
    ref_cfg.secagg.max_weight = sa["max_weight"]  # the server's, over all clients
    bound = quantization_error_bound(ref_cfg, weights)
    assert 0 < bound < 1e-4
    got = adapter(tmp_path / "run")
    worst = max(float(np.max(np.abs((g - i) - m))) for g, i, m in zip(got, init, mean))
    assert worst <= bound, f"secure aggregate off by {worst}, bound {bound}"
    # The updates were not trivially zero: the comparison means something.
    assert max(float(np.max(np.abs(m))) for m in mean) > 100 * bound


@pytest.mark.slow
def test_too_many_dropouts_fail_the_round_cleanly_and_leave_the_model_unchanged(tmp_path):
    """Each failed round leaves the model as it was and the run goes on; a run in which no
    round aggregated is not a result: exit 1 with one line, no summary and no adapter."""
    proc = run_cli(tmp_path, *SMALL, "strategy.num_rounds=2", "secagg.simulate_dropout=0.75")
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fedrec: error: no round aggregated: 2 of 2 rounds failed secure aggregation"), last
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["aggregation_failed"] for r in rows if "aggregation_failed" in r] == [True, True]
    assert not (run / "summary.json").exists() and not (run / "adapter").exists()
    assert (run / "failed.txt").read_text().startswith("no round aggregated")
    cfg = compose(" ".join([*SMALL, "strategy.num_rounds=2", f"cache_dir={tmp_path / 'cache'}"]))
    from common.data.run import load_run_data
    from common.model.factory import build_model
    from common.serialization import get_weights
    from common.tracking.checkpoint import load_checkpoint

    init = get_weights(build_model(cfg, load_run_data(cfg)))
    after_round_1 = load_checkpoint(run)  # the state the run continued from after its failed round
    assert after_round_1.round == 1
    assert all(np.array_equal(a, b) for a, b in zip(after_round_1.weights, init))


@pytest.mark.slow
def test_a_failed_secure_round_can_stop_the_run_with_a_clear_message(tmp_path):
    proc = run_cli(tmp_path, *SMALL, "secagg.simulate_dropout=0.75", "secagg.on_failure=stop")
    assert proc.returncode != 0
    assert "secure aggregation failed (secagg.on_failure=stop)" in proc.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


def test_masked_vector_reveals_nothing_while_the_sum_is_exact():
    """Flower's SecAgg+ client masking, run on three clients' quantized updates: each masked
    vector is uncorrelated with its update, and the masks cancel in the sum."""
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import parameters_mod
    from flwr.common.secure_aggregation.quantization import quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import generate_key_pairs

    mod = 2**32
    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 0.5, size=(20_000,)) for _ in range(3)]
    quantized = [quantize([u], 8.0, 2**22)[0].astype(np.int64) for u in updates]
    keys = [generate_key_pairs() for _ in range(3)]
    masked, private = [], []
    for i in range(3):
        seed = rng.bytes(32)
        private.append(pseudo_rand_gen(seed, mod, [(20_000,)])[0].astype(np.int64))
        vec = quantized[i] + private[-1]
        for j in range(3):
            if j == i:
                continue
            shared = generate_shared_key(keys[i][0], keys[j][1])
            pair = pseudo_rand_gen(shared, mod, [(20_000,)])[0].astype(np.int64)
            vec = vec + pair if i > j else vec - pair
        masked.append(parameters_mod([vec], mod)[0])
    for m, b, u in zip(masked, private, updates):
        # The server learns each survivor's private mask b_i when unmasking the sum, so the
        # pairwise masks alone must hide u_i: correlate what is left once b_i is removed.
        seen = parameters_mod([m - b], mod)[0].astype(np.float64)
        assert abs(np.corrcoef(seen, u)[0, 1]) < 0.05
        assert abs(np.corrcoef(m.astype(np.float64), u)[0, 1]) < 0.05
    total = parameters_mod([sum(masked) - sum(private)], mod)[0]
    assert np.array_equal(total, parameters_mod([sum(quantized)], mod)[0])


def test_updates_are_clipped_into_the_range_before_masking():
    rng = np.random.default_rng(1)
    big = [rng.normal(0, 5.0, size=(50, 3)), rng.normal(0, 5.0, size=(7,))]
    clipped, norm = clip_update(big, 4.0)
    assert norm > 4.0
    assert np.sqrt(sum((c**2).sum() for c in clipped)) == pytest.approx(4.0)
    assert max(np.abs(c).max() for c in clipped) <= 4.0 <= 8.0  # inside clipping_range
    # Direction kept: a scaled copy, not a per-coordinate clamp.
    assert np.allclose(clipped[0] / big[0], 4.0 / norm)
    small = [np.full((3,), 0.1)]
    assert clip_update(small, 4.0)[0] is small


def test_a_clipping_range_that_cannot_hold_the_clip_norm_is_refused():
    with pytest.raises(SecAggConfigError, match="update_clip_norm=9 "):
        check_secagg(compose(["secagg=secaggplus", "privacy.noise=local", "secagg.update_clip_norm=9"]))
    check_secagg(compose(["secagg=secaggplus", "privacy.noise=local"]))


def test_quantization_bound_matches_the_settings():
    cfg = compose(["secagg=secaggplus", "secagg.max_weight=10"])
    # 2 clients, weights exactly representable: n * 2c/Q / sum(r) = 2 * 16/2^22 / 1.0
    assert quantization_error_bound(cfg, [5, 5]) == pytest.approx(2 * 16 / 2**22)


@pytest.mark.slow
def test_secagg_benchmark_runs_on_a_tiny_setting_and_prints_its_ratio(tmp_path):
    import os

    env = {**os.environ, "FEDREC_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "benchmarks/secagg_overhead.py", "--clients", "3", "--rounds", "2", "--users", "60"],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    header, row = proc.stdout.strip().splitlines()[-2:]
    assert "time ratio" in header
    cells = row.split()
    assert cells[0] == "3" and float(cells[3]) > 0
    plain_up, secagg_up = float(cells[4]), float(cells[5])
    assert secagg_up > plain_up > 0  # masked int vectors + keys and shares cost more bytes


@pytest.mark.slow
def test_distributed_noise_run_spends_one_pooled_budget(tmp_path):
    proc = run_cli(tmp_path, *SMALL[:-1], "strategy.num_rounds=3", "privacy.noise=distributed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    privacy = summary["privacy"]
    assert "distributed" in privacy["mechanism"]
    # Every client accounts the same pooled mechanism: the prior's release, then one step per round.
    per_client = list(privacy["per_client"].values())
    assert len(per_client) == 4 and all(c["steps"] == 1 + 3 for c in per_client)
    assert privacy["popularity_prior"]["released"]
    assert len({round(c["epsilon"], 9) for c in per_client}) == 1
    assert per_client[0]["epsilon"] == pytest.approx(8.0, rel=0.02)
    assert summary["secure_aggregation"]["rounds_completed"] == 3
