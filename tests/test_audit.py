"""Empirical privacy audit: the one-run ε lower bound, the MIA's ROC, canary injection, the driver."""

import json
import math
import pickle
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from common.config import compose
from common.data import leave_one_out, make_synthetic, partition_users
from common.data.run import _load_run_data, data_key
from common.privacy.canaries import (
    audit_canaries,
    count_correct,
    default_guess_counts,
    epsilon_lower_bound,
    inject_audit,
    p_value,
    roc_auc,
    roc_curve,
)
from simulations.audit.run import audit_config, audit_run, main

TINY = [
    "dataset.num_users=120",
    "dataset.num_items=80",
    "dataset.mean_interactions=15",
    "partition.num_clients=3",
    "model.num_negatives=16",
]


# --- ε lower bound ---------------------------------------------------------------------------


def test_ten_correct_of_ten_at_delta_zero_matches_the_hand_computed_bound():
    # (e^ε/(1+e^ε))^10 = 0.05  =>  q = 0.05^(1/10), ε = ln(q/(1-q)) ≈ 1.0519
    q = 0.05**0.1
    assert epsilon_lower_bound(m=10, r=10, v=10, delta=0.0, beta=0.05) == pytest.approx(math.log(q / (1 - q)), abs=1e-9)
    assert math.log(q / (1 - q)) == pytest.approx(1.0519, abs=1e-4)


def test_pure_dp_p_value_is_the_binomial_tail():
    r, v, eps = 12, 9, 0.7
    q = math.exp(eps) / (1 + math.exp(eps))
    tail = sum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(v, r + 1))
    assert p_value(50, r, v, eps, 0.0) == pytest.approx(tail, rel=1e-12)
    # δ > 0 only adds the 2mδ term: a larger p-value, so a weaker bound.
    assert p_value(50, r, v, eps, 1e-3) > tail
    assert epsilon_lower_bound(200, 40, 38, 1e-4) < epsilon_lower_bound(200, 40, 38, 0.0)


@pytest.mark.parametrize("delta", [0.0, 1e-4])
def test_bound_is_monotone_in_correct_guesses_and_zero_at_chance(delta):
    bounds = [epsilon_lower_bound(200, 40, v, delta) for v in range(41)]
    assert all(a <= b for a, b in zip(bounds, bounds[1:]))
    assert bounds[20] == 0.0 and bounds[40] > 1.0


def test_random_guesses_give_no_bound_beyond_the_confidence_level():
    positive = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        included = rng.random(200) < 0.5
        result = audit_canaries(rng.standard_normal(200), included, delta=1e-4)
        positive += result["epsilon_lower_bound"] > 0
        assert result["epsilon_lower_bound"] < 0.5
    assert positive <= 4  # each run is wrong with probability <= 5 % overall (Bonferroni)


def test_guessing_counts_top_in_and_bottom_out():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    included = np.array([True, False, True, False, True, False])
    assert count_correct(scores, included, 2, 2) == (4, 2)  # top two: 1 right; bottom two: 1 right
    assert count_correct(scores, included, 1, 1) == (2, 2)


def test_perfect_separation_reports_the_best_choice_at_the_bonferroni_level():
    rng = np.random.default_rng(0)
    included = rng.random(200) < 0.5
    result = audit_canaries(included.astype(float) + 0.01 * rng.random(200), included, delta=1e-4)
    choices = default_guess_counts(200)
    assert result["k_plus"] == max(k for k, _ in choices) and result["correct"] == result["guesses"]
    expected = epsilon_lower_bound(200, result["guesses"], result["guesses"], 1e-4, 0.05 / len(choices))
    assert result["epsilon_lower_bound"] == pytest.approx(expected)
    assert result["confidence"] == 0.95 and "Steinke" in result["method"]


# --- membership inference ----------------------------------------------------------------------


def test_auc_hand_example_counts_ties_half():
    # pairs (member, non-member): 3>1, 3>2, 2>1 win; 2=2 ties -> (3 + 0.5) / 4
    assert roc_auc([3, 2], [1, 2]) == pytest.approx(0.875)
    assert roc_auc([1, 1], [2, 2]) == 0.0 and roc_auc([1], [1]) == 0.5


def test_auc_equals_brute_force_pair_counting_and_the_area_under_the_curve():
    rng = np.random.default_rng(1)
    members, others = rng.integers(0, 30, 300).astype(float), rng.integers(0, 25, 250).astype(float)
    wins = sum((a > b) + 0.5 * (a == b) for a, b in product(members, others))
    auc = roc_auc(members, others)
    assert auc == pytest.approx(wins / (300 * 250), abs=1e-12)
    fpr, tpr = roc_curve(members, others)  # ≤ 31 distinct scores: not thinned
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc, abs=1e-12)
    fpr, tpr = roc_curve(rng.random(1000), rng.random(900))
    assert len(fpr) == len(tpr) <= 200 and (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


# --- canaries and held-out users in the data ---------------------------------------------------


def _small(scheme="iid", num_clients=4):
    data = make_synthetic(num_users=80, num_items=60, mean_interactions=12, seed=0)
    split = leave_one_out(data)
    parts = partition_users(split, scheme, None if scheme == "cross_device" else num_clients, seed=0)
    return data, split, parts


def test_canaries_keep_real_users_unchanged_and_untrained_users_out_of_every_partition():
    data, split, parts = _small()
    new_data, new_split, new_parts, info = inject_audit(data, split, parts, 30, 10, 0.25, seed=3)
    held = np.flatnonzero(np.isin(split.users, info.holdout_users))
    keep = np.setdiff1d(np.arange(split.num_users), held)
    assert len(held) == 20 and len(info.holdout_train) == 20
    # Real users: same data, same order, same client (rows renumbered past the held-out ones).
    assert all(np.array_equal(a, b) for a, b in zip(new_data.sequences, data.sequences))
    assert new_data.user_ids[: data.num_users] == data.user_ids
    for new, old in zip(info.member_rows, keep):
        assert np.array_equal(new_split.train[new], split.train[old]) and new_split.users[new] == split.users[old]
        assert new_split.valid[new] == split.valid[old] and new_split.test[new] == split.test[old]
    for before, after in zip(parts, new_parts):
        assert np.array_equal(new_split.users[after[after < len(keep)]], split.users[np.setdiff1d(before, held)])
    # Every split row is in exactly one partition: the centralized baseline trains on exactly these.
    rows = np.sort(np.concatenate(new_parts))
    assert np.array_equal(rows, np.arange(new_split.num_users))
    assert not np.isin(info.holdout_users, new_split.users).any()
    # Included canaries have a split row and a client; excluded ones neither.
    assert np.array_equal(info.canary_rows >= 0, info.included) and 5 < info.included.sum() < 25
    inc = info.canary_rows[info.included]
    assert np.array_equal(np.sort(inc), np.arange(len(keep), new_split.num_users))
    for j, r in zip(np.flatnonzero(info.included), inc):
        assert np.array_equal(new_split.train[r], info.canary_train[j]) and len(info.canary_train[j]) == 8
    # Same seed, same audit; another seed, other canaries.
    again = inject_audit(data, split, parts, 30, 10, 0.25, seed=3)[3]
    assert np.array_equal(again.included, info.included) and np.array_equal(again.canary_train[0], info.canary_train[0])
    other = inject_audit(data, split, parts, 30, 10, 0.25, seed=4)[3]
    assert not np.array_equal(other.canary_train[0], info.canary_train[0])


def test_cross_device_gives_each_included_canary_its_own_client():
    data, split, parts = _small("cross_device")
    _, new_split, new_parts, info = inject_audit(data, split, parts, 10, 5, 0.5, seed=0, one_client_per_user=True)
    assert all(len(p) == 1 for p in new_parts)
    assert len(new_parts) == split.num_users - len(info.holdout_users) + info.included.sum() == new_split.num_users


def test_default_run_data_is_byte_identical_to_a_config_without_the_audit_block(tmp_path):
    from common.data import load_dataset
    from common.data.partition import partition_users
    from common.data.split import leave_one_out

    cfg = compose([*TINY, f"cache_dir={tmp_path}"])
    assert cfg.audit.canaries == 0 and cfg.audit.holdout == 0.0
    plain = OmegaConf.to_container(cfg)
    del plain["audit"]
    assert data_key(cfg) == data_key(OmegaConf.create(plain))  # same cache entry, so one load serves both
    default = _load_run_data.__wrapped__(data_key(cfg))
    assert default.audit is None
    # The same data built without the harness at all: the audit hook changed nothing.
    ds = cfg.dataset
    data = load_dataset(ds.name, ds.get("path"), **{k: v for k, v in ds.items() if k not in ("name", "path")})
    split = leave_one_out(data)
    parts = partition_users(
        split,
        scheme=cfg.partition.scheme,
        num_clients=cfg.partition.num_clients,
        seed=cfg.seed,
        attributes=data.user_attributes,
        attribute=None,
    )
    assert pickle.dumps((data, split, parts)) == pickle.dumps((default.data, default.split, default.partitions))


# --- driver ------------------------------------------------------------------------------------


def test_overrides_reproduce_the_run_config_for_the_flower_apps(tmp_path):
    cfg = compose(
        [
            "dataset=movielens_100k",
            "dataset.path=/somewhere/ml-100k",
            "privacy=none",
            "strategy.local_epochs=5",
            "partition=dirichlet",
            "eval.ks=[10]",
        ]
    )
    audit_cfg, overrides = audit_config(cfg, tmp_path / "train", 50, 0.5, 7, 20)
    assert "privacy=none" in overrides and "dataset=movielens_100k" in overrides
    expected = OmegaConf.to_container(cfg)
    expected.update(
        audit={"canaries": 50, "canary_length": 20, "holdout": 0.5, "seed": 7}, output_dir=str(tmp_path / "train")
    )
    assert OmegaConf.to_container(audit_cfg) == expected
    # δ is pinned to the audited run's, not re-derived from the larger user count.
    assert audit_config(compose([]), tmp_path, 50, 0.5, 0, 20, delta=1e-4)[0].privacy.delta == 1e-4


def test_bad_run_folders_are_one_line_errors_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "no_summary").mkdir()
    (tmp_path / "no_summary" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "empty").mkdir()
    for folder in ("missing", "empty", "no_summary"):
        assert main(["run", str(tmp_path / folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(tmp_path / folder) in err


def _check_report(report: dict, out: Path, private: bool) -> None:
    assert json.loads((out / "audit" / "audit.json").read_text()) == json.loads(json.dumps(report))
    assert {"run", "private", "epsilon_theory", "delta", "canaries", "mia", "train_dir", "seconds"} <= report.keys()
    assert report["run"] == str(out) and report["train_dir"] == "audit/train" and report["private"] is private
    c, mia = report["canaries"], report["mia"]
    assert c["m"] == 40 and 0 < c["included"] < 40 and c["guesses"] == c["k_plus"] + c["k_minus"]
    assert 0 <= c["correct"] <= c["guesses"] and c["epsilon_lower_bound"] >= 0 and c["confidence"] == 0.95
    assert mia["members"] + mia["non_members"] > 100 and 0 <= mia["auc"] <= 1
    assert len(mia["roc"]["fpr"]) == len(mia["roc"]["tpr"]) <= 200
    assert (out / "audit" / "train" / "summary.json").is_file()


@pytest.mark.slow
def test_audit_of_tiny_centralized_runs(tmp_path):
    from simulations.run import execute

    for privacy, epochs in (("none", 15), ("dp", 3)):
        setting = "privacy.epsilon=1" if privacy == "dp" else "train.lr=0.005"
        cfg = compose(
            [
                *TINY,
                f"cache_dir={tmp_path / 'cache'}",
                "baseline=centralized",
                f"privacy={privacy}",
                setting,
                f"train.epochs={epochs}",
            ]
        )
        out = tmp_path / privacy
        cfg.output_dir = str(out)
        execute(cfg, [], out)
        report = audit_run(out, canaries=40, holdout=0.5, draws=4)
        _check_report(report, out, private=privacy == "dp")
        if privacy == "none":
            assert report["epsilon_theory"] is None and report["violation"] is False
            assert report["mia"]["auc"] > 0.6  # many epochs, no noise: members are visibly fitted
        else:
            assert report["epsilon_theory"] == pytest.approx(1.0, rel=0.02)
            assert report["canaries"]["epsilon_lower_bound"] <= report["epsilon_theory"]
