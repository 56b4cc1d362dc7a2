"""Central DP (``privacy.noise=central``): DP-FedAvg with client-side fixed clipping and
server noise, through Flower's ``DifferentialPrivacyClientSideFixedClipping`` wrapper.

Clients train without DP-SGD, clip their update (local − global) to L2 norm C, and send it
with weight 1; the server averages the K sampled updates and adds N(0, (σC/K)²). One
client's whole update moves the mean by at most C/K, so the unit of privacy is the client:
an organisation's whole data set in cross-silo, one user in cross-device (where this is how
user-level DP is obtained; local DP-SGD there would protect single interactions only).
Composes with SecAgg+: clipping happens before masking, noise after unmasking.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from common.privacy.accounting import check_delta, noise_multiplier_for_plan


@dataclass(frozen=True)
class CentralPlan:
    noise_multiplier: float
    clipping_norm: float
    num_sampled: int  # K: clients per round
    sample_rate: float  # K / clients
    steps: int  # rounds
    delta: float
    unit: str  # "user" (cross-device) or "client"


def sampled_clients(cfg: DictConfig, num_clients: int) -> int:
    """Flower FedAvg's sample size for ``num_clients`` available clients."""
    s = cfg.strategy
    return min(num_clients, max(int(num_clients * s.fraction_fit), min(num_clients, s.min_fit_clients)))


def central_plan(cfg: DictConfig, num_clients: int, delta: float) -> CentralPlan:
    check_delta(delta, num_clients)  # the units protected are the clients
    k = sampled_clients(cfg, num_clients)
    q = k / num_clients
    steps = int(cfg.strategy.num_rounds)
    sigma = noise_multiplier_for_plan(cfg.privacy.epsilon, delta, q, steps, cfg.privacy.accountant)
    unit = "user" if cfg.partition.scheme == "cross_device" else "client"
    return CentralPlan(sigma, float(cfg.privacy.max_grad_norm), k, q, steps, delta, unit)
