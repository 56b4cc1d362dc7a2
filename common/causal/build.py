"""The ``model=causal_lora`` model from a config."""

from __future__ import annotations

from omegaconf import DictConfig

from common.causal.lm import CausalLoraRec, set_lower_cache_budget
from common.model.families import FAMILIES
from common.privacy.placements import placement_of


def check_causal_config(cfg: DictConfig) -> None:
    """Settings the causal path cannot honour, refused before any training."""
    supported = FAMILIES["causal_lora"].noise
    if cfg.privacy.enabled and cfg.privacy.noise not in supported:
        raise ValueError(
            f"model=causal_lora with privacy.noise={cfg.privacy.noise} is not supported; use {' or '.join(supported)}"
        )
    if cfg.partition.scheme == "cross_device":
        # Each client would send its one user's score histogram: that user's held-out label in clear.
        raise ValueError(
            "model=causal_lora with partition=cross_device is not supported: a one-user client's "
            "AUC histogram reveals its user's held-out label"
        )
    if cfg.strategy.name == "qfedavg":
        raise ValueError("model=causal_lora with strategy=qfedavg is not supported (no pre-training loss)")
    placement = placement_of(cfg)
    if cfg.model.gradient_checkpointing and placement is not None and placement.client_dp_sgd:
        # Recomputation re-fires Opacus' forward hooks and would pair stale activations with
        # the wrong backward pass.
        raise ValueError("model.gradient_checkpointing=true cannot be combined with DP-SGD (privacy.noise=local)")


def build_causal_model(cfg: DictConfig, run=None) -> CausalLoraRec:  # noqa: ARG001 - the family signature
    """The model for ``model=causal_lora`` (LoRA initialised from the caller's seeded RNG)."""
    check_causal_config(cfg)
    m = cfg.model
    if m.get("cache_lower", True):
        set_lower_cache_budget(int(m.get("lower_cache_mb", 2048)))
    return CausalLoraRec(
        m.path,
        int(m.lora_r),
        int(m.lora_alpha),
        tuple(m.lora_targets),
        int(m.top_layers),
        int(m.max_tokens),
        bool(m.gradient_checkpointing),
        cfg.get("cache_dir"),
        bool(m.get("cache_lower", True)),
        m.get("lower_cache_dir"),
    )
