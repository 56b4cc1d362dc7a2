"""Opacus DP-SGD for one client's training: the mechanism's settings and the private engine."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from common.model.recommender import FrozenText, TextSeqRec


@dataclass(frozen=True)
class DPSettings:
    """The per-client DP-SGD mechanism, fixed once for the whole training plan.

    ``noise_seed=None`` (the default) draws the noise and the Poisson batch sampling from a
    generator seeded with 63 bits of OS entropy per call, so nobody who knows the config can
    regenerate the noise or the batches. A fixed seed makes runs reproducible and is for
    tests and debugging only: it voids the guarantee against anyone who knows the seed.
    """

    noise_multiplier: float
    max_grad_norm: float
    secure_mode: bool = False
    noise_seed: int | None = None


def per_sample_gradient_mode(model: torch.nn.Module) -> str:
    """Opacus ``grad_sample_mode`` for DP-SGD on ``model``.

    "ew" (torch ExpandedWeights) computes only the per-user gradients, where "hooks" lets
    autograd compute the batch gradient as well and then recomputes every per-user gradient
    in Python hooks: measured 1.65x -> see BENCHMARKS.md, "DP overhead per training example".
    Only for the frozen-text/id-only recommender, whose trainable layers are all Linear,
    LayerNorm or Embedding applied batch-first (tests/test_dp_speed.py checks its per-user
    gradients); LoRA text layers run over flattened items, so they keep "hooks".
    """
    text = getattr(getattr(model, "item", None), "text", None)
    if isinstance(model, TextSeqRec) and (text is None or isinstance(text, FrozenText)):
        return "ew"
    return "hooks"


def make_private(model, optimizer, loader, dp: DPSettings, *, grad_sample_mode: str = "hooks"):
    import secrets

    from opacus import PrivacyEngine

    def generator(offset: int) -> torch.Generator:
        seed = secrets.randbits(63) if dp.noise_seed is None else dp.noise_seed + offset
        return torch.Generator().manual_seed(seed)

    with warnings.catch_warnings():
        # Opacus warns about its insecure RNG on every engine; our generators are seeded from
        # OS entropy instead (see DPSettings), and secure_mode is a config choice.
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        engine = PrivacyEngine(secure_mode=dp.secure_mode)
        net, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=True,
            noise_generator=None if dp.secure_mode else generator(1),
            grad_sample_mode=grad_sample_mode,
        )
    if not dp.secure_mode:
        # Without secure_mode Opacus samples batches from torch's global RNG, whose state is
        # predictable (fixed default seed, or a config seed): give the sampler its own.
        loader.batch_sampler.generator = generator(2)
    return engine, net, optimizer, loader
