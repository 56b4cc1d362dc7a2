"""privacy.noise=distributed: noise shares that sum to the pooled mechanism's noise."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from common.config import compose
from common.model.recommender import FrozenText, TextSeqRec
from common.privacy.accounting import PrivacyConfigError
from common.privacy.distributed import (
    DistributedPlan,
    ServerOptimizer,
    check_protocol,
    distributed_plan,
    noisy_gradient_sum,
    shares_needed,
)

NUM_ITEMS = 40


def _model():
    torch.manual_seed(0)
    text = torch.randn(NUM_ITEMS, 8, generator=torch.Generator().manual_seed(1))
    return TextSeqRec(FrozenText(text), NUM_ITEMS, dim=32, max_len=6, dropout=0.0, item_bias=True)


def _plan(sigma=2.0, q=0.5, shares=5, clip=1.0):
    return DistributedPlan(sigma, q, 10, 1e-4, clip, shares, q * 100, num_clients=8)


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
    # More survivors than the threshold only add noise: 8 shares of t = 5 give (8/5)·(σC)².
    more = [noisy_gradient_sum(model, [], NUM_ITEMS, 4, plan, seed=s)[0] for s in range(5, 8)]
    total8 = np.concatenate([sum(parts).ravel() for parts in zip(*shares, *more)])
    assert total8.var() == pytest.approx(8 / 5 * 4.0, rel=0.08)


def test_rounding_slack_inflates_the_noise_to_cover_secagg_quantization():
    cfg = compose(["privacy.noise=distributed", "secagg=secaggplus"])
    plain = distributed_plan(cfg, total_users=600, num_clients=10, delta=1e-4, num_params=0)
    real = distributed_plan(cfg, total_users=600, num_clients=10, delta=1e-4, num_params=63_250)
    step = 2 * 8.0 / 2**22
    # d parameters plus the loss coordinate; S = C·√(1 + κ²) + slack.
    assert real.rounding_slack == pytest.approx(math.sqrt(63_251) * step)
    assert plain.sensitivity == pytest.approx(math.sqrt(1 + 0.1**2) + plain.rounding_slack)
    assert real.share_std == pytest.approx(plain.share_std * (real.sensitivity / plain.sensitivity))
    assert real.share_std == pytest.approx(real.noise_multiplier * real.sensitivity / math.sqrt(real.noise_shares))


def test_a_noisy_sum_never_reaches_the_secagg_clamp_even_at_epsilon_1():
    """Flower clamps values beyond ±clipping_range silently; a clamped noise share is not the
    accounted Gaussian mechanism. At ε = 1 on ML-100K's shape the shares are wide: the plan
    shrinks what clients send so that (users × S) + 10 noise stds fits the range."""
    cfg = compose(["privacy.epsilon=1", "secagg.clipping_range=8"])
    largest = 30
    plan = distributed_plan(
        cfg, total_users=943, num_clients=10, delta=1e-4, num_params=5_000, max_client_users=largest
    )
    base = plan.max_grad_norm * math.sqrt(1 + plan.loss_weight**2)
    assert plan.share_std > 1.0 and plan.send_scale > 1.0
    assert plan.send_scale * 8.0 >= largest * base + 10 * plan.share_std
    # the rounding slack counts the coarser grid: one step per coordinate, in gradient units
    assert plan.rounding_slack == pytest.approx(math.sqrt(5_001) * 2 * 8.0 / 2**22 * plan.send_scale)
    model = _model()
    rng = np.random.default_rng(0)
    users = [rng.integers(0, NUM_ITEMS, size=8) for _ in range(largest)]
    sent = [noisy_gradient_sum(model, users, NUM_ITEMS, 4, plan, seed=s)[0] for s in range(20)]
    peak = max(float(np.abs(a).max()) for parts in sent for a in parts)
    assert peak < 8.0  # inside the range: nothing clamped
    # and the server's rescaled sum is the unscaled mechanism: same noise std per coordinate
    pure = replace(plan, sample_rate=0.0)
    noise = np.concatenate(
        [a.ravel() for s in range(3) for a in noisy_gradient_sum(model, [], NUM_ITEMS, 4, pure, seed=s)[0]]
    )
    assert (noise * plan.send_scale).std() == pytest.approx(plan.share_std, rel=0.05)


def test_clients_refuse_a_round_that_could_reveal_an_under_noised_sum():
    plan = _plan(shares=5)
    check_protocol(plan, sample_number=8, threshold=5)
    with pytest.raises(PrivacyConfigError, match="every client"):
        check_protocol(plan, sample_number=6, threshold=5)  # server sampled fewer clients
    with pytest.raises(PrivacyConfigError, match="threshold >= 5"):
        check_protocol(plan, sample_number=8, threshold=4)


def test_signal_is_the_sum_of_clipped_per_user_gradients():
    """With σ = 0 and q = 1 the share is exactly Σ_u clip(∇ℓ_u, C), against autograd run
    one user at a time with the same negatives."""
    from common.training.local import user_loss

    rng = np.random.default_rng(0)
    seqs = [rng.choice(NUM_ITEMS, size=5, replace=False) for _ in range(6)]
    clip = 0.05
    grads, sampled = noisy_gradient_sum(_model(), seqs, NUM_ITEMS, 4, _plan(0.0, 1.0, 2, clip), seed=0)
    assert sampled == 6
    # Rebuild the negatives the function drew: its generator is seeded, then draws q-sampling.
    gen = torch.Generator().manual_seed(0)
    torch.rand(6, generator=gen)
    neg_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    model = _model()
    params = [p for p in model.parameters() if p.requires_grad]
    want = [torch.zeros_like(p) for p in params]
    neg_gen = torch.Generator().manual_seed(neg_seed)
    # The batch draws all users' negatives at once: draw them once and slice per user.
    negs = torch.randint(0, NUM_ITEMS, (6, 4), generator=neg_gen)
    for b in range(6):
        model.zero_grad()
        fixed = torch.Generator().manual_seed(0)
        loss = _loss_with_negatives(model, seqs[b], negs[b], user_loss, fixed)
        loss.backward()
        g = [p.grad.clone() for p in params]
        norm = torch.sqrt(sum((x**2).sum() for x in g))
        for w, x in zip(want, g):
            w += x * min(1.0, clip / (float(norm) + 1e-6))
    for got, w in zip(grads, want):
        assert np.allclose(got, w.numpy(), atol=1e-6)
    total = math.sqrt(sum(float((g**2).sum()) for g in grads))
    assert 0 < total <= 6 * clip + 1e-6


def _loss_with_negatives(model, seq, neg, user_loss, gen):
    """user_loss for one user with the given negatives (patched into torch.randint)."""
    original = torch.randint
    torch.randint = lambda *a, **k: neg.unsqueeze(0)  # noqa: E731
    try:
        return user_loss(model, [seq], model.max_len, NUM_ITEMS, 4, gen, torch.device("cpu")).sum()
    finally:
        torch.randint = original


def test_distributed_noise_is_refused_without_secure_aggregation():
    cfg = compose(["privacy.noise=distributed", "secagg=none"])
    with pytest.raises(PrivacyConfigError, match="needs secagg=secaggplus"):
        distributed_plan(cfg, total_users=600, num_clients=10, delta=1e-4)
    cfg = compose(["privacy.noise=distributed", "secagg=secaggplus"])
    plan = distributed_plan(cfg, total_users=600, num_clients=10, delta=1e-4)
    assert plan.sample_rate == pytest.approx(32 * 10 / 600)


def test_default_threshold_needs_every_client_so_the_revealed_sum_carries_exactly_the_planned_noise():
    cfg = compose(["privacy.noise=distributed", "secagg=secaggplus"])
    assert cfg.secagg.reconstruction_threshold == 1.0  # null resolved for distributed noise
    plan = distributed_plan(cfg, total_users=600, num_clients=10, delta=1e-4)
    assert plan.noise_shares == shares_needed(cfg, 10) == 10
    # All 10 shares of variance (σS)²/10: the sum has variance (σS)², not 10/6 of it.
    assert 10 * plan.share_std**2 == pytest.approx((plan.noise_multiplier * plan.sensitivity) ** 2)
    lower = compose(["privacy.noise=distributed", "secagg=secaggplus", "secagg.reconstruction_threshold=0.6"])
    assert distributed_plan(lower, 600, 10, 1e-4).noise_shares == 6  # Flower: round(0.6 × 10)
    # Other placements keep Flower's usual 60 %: their noise does not depend on it.
    assert compose(["privacy.noise=local", "secagg=secaggplus"]).secagg.reconstruction_threshold == 0.6
    assert compose(["privacy=none", "secagg=secaggplus"]).secagg.reconstruction_threshold == 0.6


def test_server_optimizer_descends_the_summed_gradient():
    opt = ServerOptimizer([np.zeros(3, dtype=np.float32)], lr=0.1)
    new = opt.step([np.array([1.0, -1.0, 0.0], dtype=np.float32)])[0]
    assert new[0] < 0 < new[1] and new[2] == 0
