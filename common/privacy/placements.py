"""Noise placements (``privacy.noise``), looked up by name: where the DP noise is added, and
what that asks of the clients, the server and secure aggregation.

Call sites read a placement's properties (``pooled_step``, ``server_noise``…) instead of
comparing ``privacy.noise`` with a name; adding a placement is one entry here plus the code its
new properties need. ``auto`` is resolved to one of these when the config is composed
(``common.config.default_noise``). Imports nothing of the project.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NoisePlacement:
    name: str
    pooled_step: bool  # one DP-SGD step per round over all clients' users; the server takes it
    client_dp_sgd: bool  # clients run DP-SGD and keep per-client ledgers
    server_noise: bool  # the server adds the noise to the mean of clipped client updates
    needs_secagg: bool  # the guarantee against the server holds only under secure aggregation
    mechanism: str  # how the run's summary names it (privacy.mechanism)


PLACEMENTS: dict[str, NoisePlacement] = {
    p.name: p
    for p in (
        NoisePlacement(
            "distributed",
            pooled_step=True,
            client_dp_sgd=True,
            server_noise=False,
            needs_secagg=True,
            mechanism="dp-sgd over all clients' users, noise shares summed under secagg+ (distributed)",
        ),
        NoisePlacement(
            "local",
            pooled_step=False,
            client_dp_sgd=True,
            server_noise=False,
            needs_secagg=False,
            mechanism="dp-sgd per client (local noise)",
        ),
        NoisePlacement(
            "central",
            pooled_step=False,
            client_dp_sgd=False,
            server_noise=True,
            needs_secagg=False,
            mechanism="dp-fedavg: client-side fixed clipping + server gaussian noise (central)",
        ),
    )
}


def placement_of(cfg) -> NoisePlacement | None:
    """The run's placement; None when it is not private."""
    p = cfg.privacy
    if not p.get("enabled"):
        return None
    try:
        return PLACEMENTS[p.noise]
    except KeyError:
        raise ValueError(f"privacy.noise={p.noise!r}: expected one of auto, {', '.join(PLACEMENTS)}") from None
