"""What a client sends (local − global), clipped and checked; and the server's check of a plain update."""

from __future__ import annotations

import numpy as np


class RoundRefused(ValueError):
    """A client's deliberate "no update from me this round", with the one-line reason: its
    ClientApp answers with an error reply (a dropout to SecAgg+, a failure to FedAvg) rather
    than crashing, which would print a traceback and restart its Ray actor."""


def check_finite(arrays: list[np.ndarray], who: str) -> None:
    """A client never sends a NaN or Inf: the round fails for it (one line) instead."""
    bad = sum(int(np.size(a) - np.isfinite(a).sum()) for a in arrays)
    if bad:
        raise RoundRefused(
            f"{who}: the update holds {bad} NaN/Inf value(s): training diverged; not sent "
            "(lower the learning rate: train.lr, or privacy.lr under DP)"
        )


def update_problem(
    arrays: list[np.ndarray],
    shapes: list[tuple[int, ...]],
    weight,
    max_norm: float | None,
    max_weight: int | None,
) -> str | None:
    """Why the server must leave a plain (unmasked) client update out of the average, or None.

    A hostile or broken client can send anything; the mean must not be moved by more than an
    honest client could move it: same shapes, finite values, L2 norm within the bound the
    clients clip to, and a weight (its user count) no larger than the declared cap."""
    if len(arrays) != len(shapes) or any(tuple(np.shape(a)) != tuple(s) for a, s in zip(arrays, shapes)):
        got = [tuple(np.shape(a)) for a in arrays]
        return (
            f"shapes {got[:3]}{'…' if len(got) > 3 else ''} ({len(got)} tensors) are not the adapter's ({len(shapes)})"
        )
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
