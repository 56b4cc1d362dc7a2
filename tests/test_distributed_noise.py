"""privacy.noise=distributed: noise shares that sum to the pooled mechanism's noise."""

import math

import numpy as np
import pytest
import torch

from common.config import compose
from common.distributed_dp import DistributedPlan, ServerOptimizer, distributed_plan, noisy_gradient_sum, shares_needed
from common.model.recommender import FrozenText, TextSeqRec
from common.privacy.accounting import PrivacyConfigError

NUM_ITEMS = 40


def _model():
    torch.manual_seed(0)
    text = torch.randn(NUM_ITEMS, 8, generator=torch.Generator().manual_seed(1))
    return TextSeqRec(FrozenText(text), NUM_ITEMS, dim=32, max_len=6, dropout=0.0, item_bias=True)


def _plan(sigma=2.0, q=0.5, shares=5, clip=1.0):
    return DistributedPlan(sigma, q, 10, 1e-4, clip, shares, q * 100)


def test_noise_shares_of_t_clients_sum_to_the_pooled_variance():
    plan = _plan(sigma=2.0, q=0.0, shares=5)  # q = 0: nothing sampled, pure noise
    assert plan.share_std == pytest.approx(2.0 / math.sqrt(5))
    model = _model()
    shares = [noisy_gradient_sum(model, [], NUM_ITEMS, 4, plan, seed=s)[0] for s in range(5)]
    total = np.concatenate([sum(parts).ravel() for parts in zip(*shares)])
    assert total.size > 3000
    # Sum of 5 shares: std σC = 2.0 (sample std of >3000 normals: within 4 %).
    assert total.std() == pytest.approx(2.0, rel=0.04)
    assert abs(total.mean()) < 0.15
    one = np.concatenate([a.ravel() for a in shares[0]])
    assert one.std() == pytest.approx(2.0 / math.sqrt(5), rel=0.04)


def test_signal_is_the_sum_of_clipped_per_user_gradients():
    """With σ = 0 and q = 1 the share is exactly Σ_u clip(∇ℓ_u, C): norm ≤ users × C."""
    rng = np.random.default_rng(0)
    seqs = [rng.choice(NUM_ITEMS, size=5, replace=False) for _ in range(6)]
    plan = _plan(sigma=0.0, q=1.0, shares=2, clip=0.01)
    grads, sampled = noisy_gradient_sum(_model(), seqs, NUM_ITEMS, 4, plan, seed=0)
    assert sampled == 6
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
    assert 0 < norm <= 6 * 0.01 + 1e-6
    # Unclipped gradients here are far larger than 0.01, so each user hits the clip:
    big, _ = noisy_gradient_sum(_model(), seqs, NUM_ITEMS, 4, _plan(0.0, 1.0, 2, clip=1e6), seed=0)
    assert math.sqrt(sum(float((g**2).sum()) for g in big)) > 6 * 0.01


def test_distributed_noise_is_refused_without_secure_aggregation():
    cfg = compose(["privacy.noise=distributed"])
    with pytest.raises(PrivacyConfigError, match="needs secagg=secaggplus"):
        distributed_plan(cfg, total_users=600, num_clients=10, delta=1e-4)
    cfg = compose(["privacy.noise=distributed", "secagg=secaggplus"])
    plan = distributed_plan(cfg, total_users=600, num_clients=10, delta=1e-4)
    assert plan.noise_shares == shares_needed(cfg, 10) == 6  # Flower: round(0.6 × 10)
    assert plan.sample_rate == pytest.approx(32 * 10 / 600)


def test_server_optimizer_descends_the_summed_gradient():
    opt = ServerOptimizer([np.zeros(3, dtype=np.float32)], lr=0.1)
    new = opt.step([np.array([1.0, -1.0, 0.0], dtype=np.float32)])[0]
    assert new[0] < 0 < new[1] and new[2] == 0
