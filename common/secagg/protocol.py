"""Settings and client-side helpers for secure aggregation of adapter updates.

Flower's SecAgg+ quantizes each client's weighted update over [-clipping_range,
clipping_range] and clips values outside it silently, so the client bounds its update's L2
norm first: |Δ_i| <= ||Δ||_2 <= update_clip_norm <= clipping_range for every coordinate.
"""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig


class SecAggConfigError(ValueError):
    """Secure-aggregation settings that cannot work."""


def check_secagg(cfg: DictConfig) -> None:
    s = cfg.secagg
    if not s.enabled:
        return
    if cfg.privacy.get("noise") != "distributed" and not 0 < s.update_clip_norm <= s.clipping_range:
        raise SecAggConfigError(
            f"secagg.update_clip_norm={s.update_clip_norm} must be in (0, secagg.clipping_range="
            f"{s.clipping_range}]: a coordinate of a clipped update can be as large as its norm"
        )
    if not 0.0 <= s.simulate_dropout < 1.0:
        raise SecAggConfigError(f"secagg.simulate_dropout={s.simulate_dropout} must be in [0, 1)")
    if s.on_failure not in ("continue", "stop"):
        raise SecAggConfigError(f"secagg.on_failure={s.on_failure!r}: expected continue or stop")


def sampled_clients(cfg: DictConfig, num_clients: int) -> int:
    """Clients sampled per round, by Flower FedAvg's rule and the server's min_fit_clients."""
    min_fit = min(num_clients, max(int(cfg.strategy.min_fit_clients), 1))
    return min(num_clients, max(int(num_clients * float(cfg.strategy.fraction_fit)), min_fit))


def protocol_sizes(cfg: DictConfig, sampled: int) -> tuple[int, int]:
    """(shares per client, unmasking threshold) as Flower's SecAgg+ workflow computes them."""
    s = cfg.secagg
    if isinstance(s.num_shares, float):
        shares = round(s.num_shares * sampled)
        if shares < sampled and shares % 2 == 0:
            shares += 1
        if shares <= 2:
            shares = sampled
    else:
        shares = int(s.num_shares)
    t = s.reconstruction_threshold
    threshold = max(round(t * shares), 2) if isinstance(t, float) else int(t)
    return shares, threshold


def check_secagg_round(cfg: DictConfig, num_clients: int) -> None:
    """Refuse a SecAgg+ set-up under which no round could ever aggregate: every round would
    fail and the run would end with the untrained model."""
    if not cfg.secagg.enabled:
        return
    sampled = sampled_clients(cfg, num_clients)
    if sampled < 2:
        raise SecAggConfigError(
            f"secagg=secaggplus needs at least 2 clients per round; this run samples {sampled} of its "
            f"{num_clients} (partition.num_clients={num_clients}, strategy.fraction_fit="
            f"{cfg.strategy.fraction_fit}): add clients or secagg=none"
        )
    shares, threshold = protocol_sizes(cfg, sampled)
    if threshold > min(shares, sampled):
        raise SecAggConfigError(
            f"secagg.reconstruction_threshold={cfg.secagg.reconstruction_threshold} asks for {threshold} "
            f"shares to unmask, but each client shares with only {min(shares, sampled)} of the {sampled} "
            "clients sampled per round: no round could aggregate"
        )


def dropout_clients(num_clients: int, share: float, seed: int, server_round: int) -> set[int]:
    """Which partition ids a simulated dropout removes in ``server_round`` (deterministic)."""
    k = int(round(share * num_clients))
    rng = np.random.default_rng([seed, server_round, 7919])
    return set(rng.choice(num_clients, size=k, replace=False).tolist()) if k else set()


def quantization_error_bound(cfg: DictConfig, weights: list[float]) -> float:
    """Largest per-coordinate error of the SecAgg+ weighted mean vs the exact weighted mean.

    Each client's weighted value r_i·x_i is stochastically rounded to a grid of step
    2c/Q (c = clipping_range, Q = quantization_range), an error below one step; the weight
    ratio r_i = w_i/max_weight is itself rounded to a multiple of 1/Q. The server divides the
    sum by Σ r̃_i, so the mean is off by at most (n · 2c/Q + 2c · Σ|r_i − r̃_i|) / Σ r̃_i.
    """
    s = cfg.secagg
    c, q = float(s.clipping_range), int(s.quantization_range)
    max_w = float(s.max_weight or max(weights))
    r = np.asarray(weights, dtype=np.float64) / max_w
    r_q = np.round(r * q) / q
    return float((len(weights) * 2 * c / q + 2 * c * np.abs(r - r_q).sum()) / r_q.sum())
