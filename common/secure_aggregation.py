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


def check_finite(arrays: list[np.ndarray], who: str) -> None:
    """A client never sends a NaN or Inf: the round fails for it (one line) instead."""
    bad = sum(int(np.size(a) - np.isfinite(a).sum()) for a in arrays)
    if bad:
        raise ValueError(f"{who}: the update holds {bad} NaN/Inf value(s): training diverged; not sent "
                         "(lower the learning rate: train.lr, or privacy.lr under DP)")  # fmt: skip


def update_problem(
    arrays: list[np.ndarray], shapes: list[tuple[int, ...]], weight, max_norm: float | None,
    max_weight: int | None,
) -> str | None:
    """Why the server must leave a plain (unmasked) client update out of the average, or None.

    A hostile or broken client can send anything; the mean must not be moved by more than an
    honest client could move it: same shapes, finite values, L2 norm within the bound the
    clients clip to, and a weight (its user count) no larger than the declared cap."""
    if len(arrays) != len(shapes) or any(tuple(np.shape(a)) != tuple(s) for a, s in zip(arrays, shapes)):
        got = [tuple(np.shape(a)) for a in arrays]
        return f"shapes {got[:3]}{'…' if len(got) > 3 else ''} ({len(got)} tensors) are not the adapter's ({len(shapes)})"
    bad = sum(int(np.size(a) - np.isfinite(a).sum()) for a in arrays)
    if bad:
        return f"{bad} NaN/Inf value(s)"
    norm = float(np.sqrt(sum(float(np.sum(np.asarray(a, dtype=np.float64) ** 2)) for a in arrays)))
    if max_norm is not None and norm > max_norm * (1 + 1e-5):
        return f"L2 norm {norm:.4g} > the bound {max_norm:g}"
    if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)) or weight < 1:
        return f"weight (num_examples) {weight!r} is not a positive integer"
    if max_weight is not None and weight > max_weight:
        return f"weight (num_examples) {weight} > the cap {max_weight} (strategy.max_client_weight)"
    return None


def update(local: list[np.ndarray], global_: list[np.ndarray]) -> list[np.ndarray]:
    """What a client sends: local − global (small values, so quantization loses little)."""
    return [a - b for a, b in zip(local, global_)]


def clip_update(delta: list[np.ndarray], max_norm: float) -> tuple[list[np.ndarray], float]:
    """Scale the update down to L2 norm ``max_norm`` if larger; returns it and its norm."""
    norm = float(np.sqrt(sum(float(np.sum(d.astype(np.float64) ** 2)) for d in delta)))
    if norm <= max_norm:
        return delta, norm
    scale = max_norm / norm
    return [d * scale for d in delta], norm


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
