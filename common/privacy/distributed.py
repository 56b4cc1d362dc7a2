"""Distributed noise (``privacy.noise=distributed``): user-level DP-SGD over the pooled users
of all clients, with the Gaussian noise split across clients and summed under SecAgg+.

Each round is one DP-SGD step (DP-FedSGD). Every client Poisson-samples its users at the same
rate q, sums their gradients clipped to L2 norm C, and adds N(0, (σC)²/t); SecAgg+ reveals
only the sum over the m ≥ t surviving clients, whose noise has variance (m/t)·(σC)² ≥ (σC)².
So the sum is the Gaussian mechanism of pooled DP-SGD (σ, q) — at least — and one accountant
for the whole federation counts one step per round. t is the SecAgg+ reconstruction
threshold: below t survivors the sum is never revealed, so it never carries too little noise.

Guarantees: against the server and any client, (ε, δ) for every user of every client.
Against the server colluding with clients, the honest clients' noise shares are still summed
but a coalition can subtract its own shares: with c colluders among m survivors the noise
left has variance (m−c)/t·(σC)², a weaker ε (reported in docs/threat-model.md).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig

from common.model.recommender import TextSeqRec
from common.privacy.accounting import PrivacyConfigError, check_delta, noise_multiplier_for_plan
from common.privacy.popularity_prior import PopularityPriorPlan, popularity_prior_plan
from common.training.local import user_loss

LOSS_WEIGHT = 0.1  # κ: see DistributedPlan.sensitivity
# SecAgg+ range kept free for a client's noise share, in its std: a share beyond it (about
# 1.5e-23 per coordinate) would be clamped, which the Gaussian analysis does not cover.
NOISE_HEADROOM = 10.0


@dataclass(frozen=True)
class DistributedPlan:
    noise_multiplier: float  # σ of the pooled mechanism
    sample_rate: float  # q, the same at every client
    steps: int  # one per round
    delta: float
    max_grad_norm: float  # C
    noise_shares: int  # t: each client adds variance (σ·S)²/t
    expected_batch: float  # q × all users: the server divides the noisy sum by it
    num_clients: int = 0  # every client takes part in every step
    rounding_slack: float = 0.0  # L2 bound of SecAgg+'s stochastic rounding of one vector
    prior: PopularityPriorPlan | None = None  # released once, before the first step
    loss_weight: float = 0.0  # κ: the loss coordinate of one user is at most κ·C (0 = none)
    loss_clip: float = 0.0  # L: each user's loss is clipped to [0, L] before it is summed
    send_scale: float = 1.0  # clients send their noisy sum / send_scale (see send_scale_for)

    @property
    def sensitivity(self) -> float:
        """S = C·√(1 + κ²) + rounding slack: one user adds its clipped gradient (norm ≤ C) and
        its clipped loss scaled to at most κ·C; SecAgg+ rounds each client's noised vector
        stochastically to its grid, which can move one user's contribution by up to √d grid
        steps more."""
        return self.max_grad_norm * math.sqrt(1.0 + self.loss_weight**2) + self.rounding_slack

    def mean_loss(self, loss_sum: float) -> float:
        """The training loss from the securely summed loss coordinate: an unbiased estimate
        of the users' mean (clipped) loss, with noise of std ``loss_noise_std``."""
        return loss_sum * self.loss_clip / (self.loss_weight * self.max_grad_norm) / self.expected_batch

    @property
    def loss_noise_std(self) -> float:
        return (
            self.noise_multiplier
            * self.sensitivity
            * self.loss_clip
            / (self.loss_weight * self.max_grad_norm * self.expected_batch)
        )

    @property
    def share_std(self) -> float:
        return self.noise_multiplier * self.sensitivity / math.sqrt(self.noise_shares)

    def history(self) -> list[tuple[float, float, int]]:
        """Every mechanism of the plan, in the accountant's (σ, q, steps) form."""
        prior = self.prior.history() if self.prior else []
        return [*prior, (self.noise_multiplier, self.sample_rate, self.steps)]


def send_scale_for(cfg: DictConfig, base_sensitivity: float, sigma: float, t: int, max_client_users: int) -> float:
    """How much a client shrinks its noisy sum so that no coordinate can reach Flower's clamp
    at ±secagg.clipping_range: Flower clamps silently, and a clamped noise share breaks the
    Gaussian mechanism the sum is accounted as (at ε = 1 on ML-100K, thousands of values a
    round were clamped with the range alone).

    A coordinate of a client's sum of clipped user vectors is at most (its users) × S, and its
    noise share beyond ``NOISE_HEADROOM`` standard deviations is negligible; the server
    multiplies the revealed sum back. The grid step grows by the same factor (the rounding
    slack in the sensitivity accounts for it)."""
    share_std = 1.1 * sigma * base_sensitivity / math.sqrt(t)  # 1.1: room for the rounding slack
    bound = max(max_client_users, 1) * base_sensitivity + NOISE_HEADROOM * share_std
    return max(1.0, bound / float(cfg.secagg.clipping_range))


def shares_needed(cfg: DictConfig, num_clients: int) -> int:
    """SecAgg+'s reconstruction threshold as a client count, by Flower's own rule; with
    shares sent to every client it is the fewest survivors whose sum can be revealed."""
    t = cfg.secagg.reconstruction_threshold
    return max(round(t * num_clients), 2) if isinstance(t, float) else int(t)


def distributed_plan(
    cfg: DictConfig,
    total_users: int,
    num_clients: int,
    delta: float,
    num_params: int = 0,
    num_items: int = 0,
    max_client_users: int = 0,
) -> DistributedPlan:
    if not cfg.secagg.enabled:
        raise PrivacyConfigError(
            "privacy.noise=distributed needs secagg=secaggplus: without secure aggregation the "
            "server sees each client's update with only a 1/sqrt(t) share of the noise"
        )
    if cfg.secagg.num_shares != 1.0:
        raise PrivacyConfigError("privacy.noise=distributed needs secagg.num_shares=1.0 (shares with every client)")
    if cfg.strategy.fraction_fit != 1.0:
        raise PrivacyConfigError(
            f"privacy.noise=distributed needs strategy.fraction_fit=1.0 (all clients each step), "
            f"got {cfg.strategy.fraction_fit}"
        )
    if num_clients < 2:
        raise PrivacyConfigError(
            f"privacy.noise=distributed needs at least 2 clients (partition.num_clients="
            f"{num_clients}): SecAgg+ cannot hide one client's sum; use privacy.noise=local "
            "secagg=none for a single client"
        )
    t = shares_needed(cfg, num_clients)
    if not 2 <= t <= num_clients:
        raise PrivacyConfigError(
            f"secagg.reconstruction_threshold={cfg.secagg.reconstruction_threshold} means {t} "
            f"of {num_clients} clients must survive to unmask: it must be between 2 and the "
            "number of clients"
        )
    check_delta(delta, total_users)
    q = cfg.privacy.get("sample_rate") or min(1.0, cfg.train.batch_size * num_clients / total_users)
    steps = int(cfg.strategy.num_rounds)
    prior = popularity_prior_plan(cfg, delta, num_items, max_client_users, t)
    prefix = prior.history() if prior else []
    sigma = noise_multiplier_for_plan(cfg.privacy.epsilon, delta, q, steps, cfg.privacy.accountant, prefix=prefix)
    base = float(cfg.privacy.max_grad_norm) * math.sqrt(1.0 + LOSS_WEIGHT**2)
    send_scale = send_scale_for(cfg, base, sigma, t, max_client_users)
    # Weights are all 1 (max_weight 1), so the grid step on a sent value is 2c/Q: in gradient
    # units, times send_scale.
    step = 2 * float(cfg.secagg.clipping_range) / int(cfg.secagg.quantization_range) * send_scale
    # Each user's loss rides along in its clipped vector (one more coordinate, +0.5 % noise), so
    # every round logs a real, DP training loss; random scores give about log(1 + negatives).
    loss_clip = 1.25 * math.log(1 + int(cfg.model.get("num_negatives", 128)))
    return DistributedPlan(
        sigma,
        q,
        steps,
        delta,
        float(cfg.privacy.max_grad_norm),
        t,
        q * total_users,
        num_clients,
        math.sqrt(num_params + 1) * step,
        prior,
        LOSS_WEIGHT,
        loss_clip,
        send_scale,
    )


def check_protocol(plan: DistributedPlan, sample_number: int, threshold: int) -> None:
    """Refuse a SecAgg+ round that could reveal a sum with less than the planned noise: the
    server must include every client and require at least t survivors to unmask."""
    if sample_number != plan.num_clients or threshold < plan.noise_shares:
        raise PrivacyConfigError(
            f"distributed noise needs every client ({plan.num_clients}) in the round and an "
            f"unmasking threshold >= {plan.noise_shares}; the server asked for {sample_number} "
            f"clients, threshold {threshold}: refusing to send a noise share"
        )


def noisy_gradient_sum(
    model: TextSeqRec,
    sequences: list[np.ndarray],
    num_items: int,
    num_negatives: int,
    plan: DistributedPlan,
    seed: int | None = None,
) -> tuple[list[np.ndarray], int]:
    """This client's share: Σ over Poisson-sampled users of clipped per-user gradients, plus
    Gaussian noise of std σS/√t, divided by ``plan.send_scale`` (what it sends). Returns the arrays (parameter order; then, when the plan has
    a loss weight κ, one array holding Σ κ·C·min(loss, L)/L) and the sample size.

    ``seed=None`` draws sampling and noise from OS entropy (private); a seed is for tests."""
    from opacus import GradSampleModule

    gen = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    chosen = torch.rand(len(sequences), generator=gen) < plan.sample_rate
    batch = [s for s, c in zip(sequences, chosen.tolist()) if c]
    total = [torch.zeros_like(p) for p in params]
    if plan.loss_weight:
        total.append(torch.zeros(1, device=device))
    if batch:
        model.train()
        gsm = GradSampleModule(model, loss_reduction="sum")
        neg_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        with torch.random.fork_rng(devices=[]):  # dropout: from this call's generator, not the process's
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            losses = user_loss(gsm, batch, model.max_len, num_items, num_negatives, neg_gen, device)
        losses.sum().backward()
        per_user = [p.grad_sample.reshape(len(batch), -1) for p in params]
        norms = torch.cat(per_user, dim=1).norm(dim=1)
        scale = (plan.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for t, p in zip(total, params):
            t += torch.einsum("b,b...->...", scale, p.grad_sample)
        if plan.loss_weight:
            clipped = losses.detach().clamp(0.0, plan.loss_clip) / plan.loss_clip
            total[-1] += plan.loss_weight * plan.max_grad_norm * clipped.sum()
        gsm._close()
        model.zero_grad(set_to_none=True)
        for p in params:
            p.grad_sample = None
    noisy = [t + torch.normal(0.0, plan.share_std, t.shape, generator=gen).to(device) for t in total]
    return [(n / plan.send_scale).detach().cpu().numpy() for n in noisy], len(batch)


class ServerOptimizer:
    """Adam on the global adapter, driven by the securely summed noisy gradient."""

    def __init__(self, weights: list[np.ndarray], lr: float) -> None:
        self.params = [torch.nn.Parameter(torch.as_tensor(w).clone()) for w in weights]
        self.opt = torch.optim.Adam(self.params, lr=lr)

    def assign(self, weights: list[np.ndarray]) -> None:
        """Overwrite the weights (the popularity prior), keeping Adam's moments."""
        with torch.no_grad():
            for p, w in zip(self.params, weights):
                p.copy_(torch.as_tensor(w, dtype=p.dtype))

    def step(self, gradient: list[np.ndarray]) -> list[np.ndarray]:
        for p, g in zip(self.params, gradient):
            p.grad = torch.as_tensor(g, dtype=p.dtype)
        self.opt.step()
        return [p.detach().numpy().copy() for p in self.params]
