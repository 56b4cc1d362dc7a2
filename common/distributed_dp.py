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
from common.training import user_loss


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

    @property
    def sensitivity(self) -> float:
        """S = C + rounding slack: SecAgg+ rounds each client's noised vector stochastically
        to its grid, which can move one user's contribution by up to √d grid steps more."""
        return self.max_grad_norm + self.rounding_slack

    @property
    def share_std(self) -> float:
        return self.noise_multiplier * self.sensitivity / math.sqrt(self.noise_shares)


def shares_needed(cfg: DictConfig, num_clients: int) -> int:
    """SecAgg+'s reconstruction threshold as a client count, by Flower's own rule; with
    shares sent to every client it is the fewest survivors whose sum can be revealed."""
    t = cfg.secagg.reconstruction_threshold
    return max(round(t * num_clients), 2) if isinstance(t, float) else int(t)


def distributed_plan(
    cfg: DictConfig, total_users: int, num_clients: int, delta: float, num_params: int = 0
) -> DistributedPlan:
    if not cfg.secagg.enabled:
        raise PrivacyConfigError(
            "privacy.noise=distributed needs secagg=secaggplus: without secure aggregation the "
            "server sees each client's update with only a 1/sqrt(t) share of the noise"
        )
    if cfg.secagg.num_shares != 1.0:
        raise PrivacyConfigError("privacy.noise=distributed needs secagg.num_shares=1.0 (shares with every client)")
    if cfg.strategy.fraction_fit != 1.0:
        raise PrivacyConfigError("privacy.noise=distributed needs strategy.fraction_fit=1.0 (all clients each step)")
    check_delta(delta, total_users)
    q = cfg.privacy.get("sample_rate") or min(1.0, cfg.train.batch_size * num_clients / total_users)
    steps = int(cfg.strategy.num_rounds)
    sigma = noise_multiplier_for_plan(cfg.privacy.epsilon, delta, q, steps, cfg.privacy.accountant)
    # Weights are all 1 (max_weight 1), so the grid step on a value is 2c/Q.
    step = 2 * float(cfg.secagg.clipping_range) / int(cfg.secagg.quantization_range)
    return DistributedPlan(sigma, q, steps, delta, float(cfg.privacy.max_grad_norm),
                           shares_needed(cfg, num_clients), q * total_users, num_clients,
                           math.sqrt(num_params) * step)  # fmt: skip


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
    Gaussian noise of std σC/√t. Returns the arrays (parameter order) and the sample size.

    ``seed=None`` draws sampling and noise from OS entropy (private); a seed is for tests."""
    from opacus import GradSampleModule

    gen = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    chosen = torch.rand(len(sequences), generator=gen) < plan.sample_rate
    batch = [s for s, c in zip(sequences, chosen.tolist()) if c]
    total = [torch.zeros_like(p) for p in params]
    if batch:
        model.train()
        gsm = GradSampleModule(model, loss_reduction="sum")
        neg_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        user_loss(gsm, batch, model.max_len, num_items, num_negatives, neg_gen, device).sum().backward()
        per_user = [p.grad_sample.reshape(len(batch), -1) for p in params]
        norms = torch.cat(per_user, dim=1).norm(dim=1)
        scale = (plan.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for t, p in zip(total, params):
            t += torch.einsum("b,b...->...", scale, p.grad_sample)
        gsm._close()
        model.zero_grad(set_to_none=True)
        for p in params:
            p.grad_sample = None
    noisy = [t + torch.normal(0.0, plan.share_std, t.shape, generator=gen).to(device) for t in total]
    return [n.detach().cpu().numpy() for n in noisy], len(batch)


class ServerOptimizer:
    """Adam on the global adapter, driven by the securely summed noisy gradient."""

    def __init__(self, weights: list[np.ndarray], lr: float) -> None:
        self.params = [torch.nn.Parameter(torch.as_tensor(w).clone()) for w in weights]
        self.opt = torch.optim.Adam(self.params, lr=lr)

    def step(self, gradient: list[np.ndarray]) -> list[np.ndarray]:
        for p, g in zip(self.params, gradient):
            p.grad = torch.as_tensor(g, dtype=p.dtype)
        self.opt.step()
        return [p.detach().numpy().copy() for p in self.params]
