"""A differentially private item-popularity prior (``privacy.popularity_prior``).

Popularity is the strongest single signal in most interaction logs, and DP-SGD learns it
badly: the item-bias gradient is spread over one coordinate per item, each with its own noise.
So the federation releases item counts once, with the Gaussian mechanism, in the first round:

- each user contributes ``x_u = 1[i in history] / sqrt(n_u)`` over its n_u distinct training
  items, so ``||x_u||_2 = 1`` whatever the history's length: adding or removing one user moves
  the summed counts by at most 1 in L2 (plus SecAgg+'s rounding slack, as for the gradients);
- each client adds ``N(0, (σ_p·S)² / t)`` to its own counts (t = the SecAgg+ threshold) and
  SecAgg+ reveals only the sum, whose noise has variance at least ``(σ_p·S)²``;
- σ_p is the noise that spends ``popularity_prior × ε`` on its own at δ; the training noise is
  then chosen so that the composition of both spends ε (one accountant: the prior is one more
  (σ_p, q = 1, 1 step) entry of every client's ledger).

The server turns the noisy counts ĉ into ``log(max(ĉ, 0) + σ_p·S)`` (items under the noise
floor share one value), centred, and adds it to the model's item bias. Popularity is a softmax
over log-counts, so this is on the scale of the model's logits: the model starts at
popularity and training learns what popularity misses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from common.privacy.accounting import HistoryEntry, PrivacyConfigError, noise_multiplier_for_plan

PRIOR_KEY = "popularity_prior"  # fit config flag: the server asks the clients for their count shares
SIGMAS_OF_HEADROOM = 6.0  # SecAgg+ range kept free for a client's noise share, in its std


@dataclass(frozen=True)
class PopularityPriorPlan:
    share: float  # of the run's ε, spent by the prior on its own
    noise_multiplier: float  # σ_p
    sensitivity: float  # S = 1 + rounding slack
    noise_shares: int  # t
    scale: float  # clients send counts / scale, to fit SecAgg+'s clipping range

    @property
    def share_std(self) -> float:
        return self.noise_multiplier * self.sensitivity / math.sqrt(self.noise_shares)

    @property
    def floor(self) -> float:
        """The noise std of the revealed sum (at least): counts below it are indistinguishable."""
        return self.noise_multiplier * self.sensitivity

    def history(self) -> list[HistoryEntry]:
        return [(self.noise_multiplier, 1.0, 1)]


def popularity_prior_plan(
    cfg: DictConfig, delta: float, num_items: int, max_client_users: int, noise_shares: int
) -> PopularityPriorPlan | None:
    """The prior's mechanism for ``cfg`` (None when ``privacy.popularity_prior`` is 0)."""
    share = float(cfg.privacy.get("popularity_prior") or 0.0)
    if share == 0.0:
        return None
    if not 0.0 < share < 1.0:
        raise PrivacyConfigError(f"privacy.popularity_prior={share} must be a share of ε in [0, 1)")
    if not cfg.model.get("item_bias"):
        raise PrivacyConfigError(
            "privacy.popularity_prior needs model.item_bias=true: the prior is added to the "
            "item bias (or set privacy.popularity_prior=0)"
        )
    sigma = noise_multiplier_for_plan(share * float(cfg.privacy.epsilon), delta, 1.0, 1, cfg.privacy.accountant)
    c, levels = float(cfg.secagg.clipping_range), int(cfg.secagg.quantization_range)
    # A client's count of one item is at most its number of users (each adds <= 1); its noise
    # share's std is σ_p·S/√t with S a little above 1 (the slack below; clamping is logged).
    std = 1.1 * sigma / math.sqrt(noise_shares)
    scale = (max(max_client_users, 1) + SIGMAS_OF_HEADROOM * std) / c
    slack = math.sqrt(num_items) * scale * 2 * c / levels  # one grid step per coordinate, in counts
    return PopularityPriorPlan(share, sigma, 1.0 + slack, noise_shares, scale)


def user_counts(sequences: list[np.ndarray], num_items: int) -> np.ndarray:
    """Σ_u x_u over these users' training items: each user's vector has L2 norm 1."""
    counts = np.zeros(num_items, dtype=np.float64)
    for seq in sequences:
        items = np.unique(np.asarray(seq, dtype=np.int64))
        if len(items):
            counts[items] += 1.0 / math.sqrt(len(items))
    return counts


def noisy_share(counts: np.ndarray, plan: PopularityPriorPlan, gen: np.random.Generator) -> np.ndarray:
    """What one client sends, scaled into SecAgg+'s range: (counts + its noise share) / scale."""
    noisy = counts + gen.normal(0.0, plan.share_std, counts.shape)
    return (noisy / plan.scale).astype(np.float32)


def prior_logits(scaled_sum: np.ndarray, plan: PopularityPriorPlan) -> np.ndarray:
    """The item-bias offset from the securely summed shares: centred log noisy counts."""
    counts = np.asarray(scaled_sum, dtype=np.float64) * plan.scale
    logits = np.log(np.maximum(counts, 0.0) + plan.floor)
    return (logits - logits.mean()).astype(np.float32)
