"""The DP popularity prior and the private defaults: accounting, sensitivity, refusals."""

import math

import numpy as np
import pytest

from common.config import compose
from common.config.checks import check_placement
from common.data import load_dataset
from common.data.split import leave_one_out
from common.privacy.accounting import AccountantState, PrivacyConfigError, independent_epsilon
from common.privacy.distributed import distributed_plan
from common.privacy.popularity_prior import noisy_share, popularity_prior_plan, prior_logits, user_counts
from tests.conftest import SHARED_DATA


def _plan(overrides=(), users=943, clients=10, items=1682, largest=100):
    cfg = compose(list(overrides))
    return cfg, distributed_plan(cfg, users, clients, 1e-4, 60_000, items, largest)


@pytest.mark.parametrize("epsilon,share", [(8.0, 0.1), (4.0, 0.1), (1.0, 0.3)])
def test_prior_and_training_compose_to_epsilon_by_an_independent_accountant(epsilon, share):
    cfg, plan = _plan([f"privacy.epsilon={epsilon}", f"privacy.popularity_prior={share}"])
    assert plan.prior is not None and plan.history()[0] == (plan.prior.noise_multiplier, 1.0, 1)
    ours = AccountantState(plan.history()).epsilon(1e-4, "rdp")
    theirs = independent_epsilon(plan.history(), 1e-4, "rdp")
    assert epsilon - 0.011 <= ours <= epsilon
    assert theirs == pytest.approx(ours, rel=0.01)
    # The prior alone spends its stated share (within the search's tolerance).
    alone = AccountantState(plan.prior.history()).epsilon(1e-4, "rdp")
    assert share * epsilon - 0.011 <= alone <= share * epsilon
    # ... and the training noise grows to make room for it.
    _, without = _plan([f"privacy.epsilon={epsilon}", "privacy.popularity_prior=0"])
    assert without.prior is None and plan.noise_multiplier > without.noise_multiplier


def _sensitivity_check(sequences, num_items):
    """Removing the user with the longest history moves the counts by exactly 1 in L2."""
    longest = max(range(len(sequences)), key=lambda u: len(np.unique(sequences[u])))
    full = user_counts(sequences, num_items)
    without = user_counts(sequences[:longest] + sequences[longest + 1 :], num_items)
    assert np.linalg.norm(full - without) == pytest.approx(1.0)
    return len(np.unique(sequences[longest]))


def test_prior_sensitivity_holds_for_the_longest_history_synthetic():
    split = leave_one_out(load_dataset("synthetic", None, num_users=200, num_items=120, mean_interactions=40))
    assert _sensitivity_check(list(split.train), 120) > 40


@pytest.mark.skipif(not (SHARED_DATA / "ml-100k" / "u.data").exists(), reason="ML-100K not present")
def test_prior_sensitivity_holds_for_the_longest_history_ml100k():
    data = load_dataset("movielens_100k", str(SHARED_DATA / "ml-100k"))
    split = leave_one_out(data)
    assert _sensitivity_check(list(split.train), data.num_items) > 600  # ML-100K's heaviest user: 737


def test_noise_shares_of_t_clients_sum_to_the_prior_noise():
    _, plan = _plan()
    prior = plan.prior
    assert prior.noise_shares == plan.noise_shares == 10  # every client: the default threshold with this placement
    zeros = np.zeros(20_000)
    shares = [noisy_share(zeros, prior, np.random.default_rng(s)) for s in range(prior.noise_shares)]
    total = np.sum(shares, axis=0).astype(np.float64) * prior.scale
    assert total.std() == pytest.approx(prior.noise_multiplier * prior.sensitivity, rel=0.03)
    # Every share fits SecAgg+'s range with the largest client's counts on top.
    assert 100 / prior.scale + 6 * prior.share_std / prior.scale <= 8.0 + 1e-9


def test_prior_logits_are_centred_log_noisy_counts():
    _, plan = _plan()
    counts = np.array([500.0, 40.0, 0.0, -30.0])
    logits = prior_logits(counts / plan.prior.scale, plan.prior)
    floor = plan.prior.noise_multiplier * plan.prior.sensitivity
    expected = np.log(np.array([500.0, 40.0, 0.0, 0.0]) + floor)
    np.testing.assert_allclose(logits, expected - expected.mean(), rtol=1e-5)
    assert logits[2] == logits[3]  # both under the noise floor


def test_prior_needs_an_item_bias():
    cfg = compose(["model.item_bias=false"])
    with pytest.raises(PrivacyConfigError, match="model.item_bias"):
        popularity_prior_plan(cfg, 1e-4, 100, 10, 6)


def test_default_config_is_secagg_with_distributed_noise_and_the_prior():
    cfg = compose([])
    assert cfg.secagg.enabled and cfg.secagg.protocol == "secagg+"
    assert cfg.privacy.enabled and cfg.privacy.noise == "distributed" and cfg.privacy.popularity_prior == 0.1
    # Where distributed noise cannot hold, auto picks the placement that can.
    assert compose(["partition=cross_device", "secagg=none"]).privacy.noise == "central"
    assert compose(["model=causal_lora"]).privacy.noise == "local"
    assert compose(["deployment.catalogue=/x"]).privacy.noise == "local"
    # A small ε still leaves the prior enough to rank the popular items: ε_p >= min(0.4, ε/2).
    assert compose(["privacy.epsilon=4"]).privacy.popularity_prior == 0.1
    assert compose(["privacy.epsilon=1"]).privacy.popularity_prior == pytest.approx(0.4)
    assert compose(["privacy.epsilon=0.5"]).privacy.popularity_prior == pytest.approx(0.5)
    for cfg in (compose(["privacy.noise=local"]), compose(["privacy=none"]), compose(["privacy.epsilon=inf"])):
        assert cfg.privacy.popularity_prior == 0
    with pytest.raises(ValueError, match="privacy.noise='foo'"):
        compose(["privacy.noise=foo"])


def test_settings_distributed_noise_cannot_hold_are_refused_in_one_line():
    cases = [
        (["partition.num_clients=1"], 943, 1, "partition.num_clients=1"),
        (["strategy.fraction_fit=0.5"], 943, 10, "strategy.fraction_fit=1.0"),
        (["secagg.reconstruction_threshold=12"], 943, 10, "secagg.reconstruction_threshold=12"),
        (["secagg.reconstruction_threshold=1"], 943, 10, "secagg.reconstruction_threshold=1"),
        (["secagg=none"], 943, 10, "needs secagg=secaggplus"),
    ]
    for overrides, users, clients, expected in cases:
        cfg = compose(overrides)
        with pytest.raises(PrivacyConfigError, match=expected.replace(".", r"\.")) as e:
            distributed_plan(cfg, users, clients, 1e-4, 1000, 100, 100)
        assert "\n" not in str(e.value)


def test_a_prior_without_distributed_noise_and_all_pairs_cross_device_are_refused():
    with pytest.raises(PrivacyConfigError, match="privacy.popularity_prior=0.2 needs privacy.noise=distributed"):
        check_placement(compose(["privacy.noise=local", "privacy.popularity_prior=0.2"]))
    with pytest.raises(PrivacyConfigError, match="secagg=none"):
        check_placement(compose(["partition=cross_device"]))
    check_placement(compose(["partition=cross_device", "secagg=none"]))


def test_the_summed_loss_coordinate_estimates_the_mean_training_loss():
    """σ = 0, q = 1: the extra coordinate is κ·C·Σ min(ℓ, L)/L, and the plan turns it back
    into the users' mean loss computed independently."""
    import torch

    from common.model.recommender import FrozenText, TextSeqRec
    from common.privacy.distributed import DistributedPlan, noisy_gradient_sum
    from common.training.local import user_loss

    torch.manual_seed(0)
    text = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
    model = TextSeqRec(FrozenText(text), 40, dim=16, max_len=6, dropout=0.0, item_bias=True)
    rng = np.random.default_rng(0)
    seqs = [rng.choice(40, size=5, replace=False) for _ in range(7)]
    plan = DistributedPlan(0.0, 1.0, 10, 1e-4, 0.5, 2, 7.0, 2, 0.0, None, 0.1, 6.0)
    arrays, sampled = noisy_gradient_sum(model, seqs, 40, 4, plan, seed=3)
    assert sampled == 7 and arrays[-1].shape == (1,)
    # The same negatives: the function's generator draws q-sampling, then the negatives' seed.
    gen = torch.Generator().manual_seed(3)
    torch.rand(7, generator=gen)
    neg_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
    model.eval()
    with torch.no_grad():
        losses = user_loss(model, seqs, 6, 40, 4, neg_gen, torch.device("cpu"))
    assert plan.mean_loss(float(arrays[-1][0])) == pytest.approx(float(losses.clamp(max=6.0).mean()), rel=1e-5)
    assert plan.sensitivity == pytest.approx(0.5 * math.sqrt(1.01))


def test_the_printed_protection_line_names_placement_guarantee_and_secagg():
    from simulations.table import protection_line

    summary = {
        "kind": "federated",
        "privacy": {
            "enabled": True,
            "epsilon_max": 7.99,
            "delta": 1e-4,
            "noise_placement": "distributed",
            "popularity_prior": {"released": True},
        },
        "secure_aggregation": {"protocol": "secagg+", "threshold_clients": 6, "num_shares_clients": 10},
    }
    line = protection_line(summary)
    assert "ε=7.99, δ=1e-04" in line and "distributed noise + DP popularity prior" in line
    assert "SecAgg+" in line and "6 of 10" in line
    # A run whose every round failed has spent nothing and says so instead of crashing.
    summary["privacy"].update(epsilon_max=None, delta=None)
    summary["secure_aggregation"] = None
    assert "nothing spent yet" in protection_line(summary) and "server sees each client's update" in protection_line(
        summary
    )
