"""The model a config asks for, built identically by every party, and what a reader needs to rebuild it."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from common.data.catalogue import items_fingerprint
from common.data.run import RunData, data_key
from common.model.families import family_of
from common.model.recommender import FrozenText, TextSeqRec


def build_model(cfg: DictConfig, run: RunData) -> torch.nn.Module:
    """The recommender for ``cfg.model``, initialised identically by every party (seeded)."""
    # A private RNG for initialisation: re-seeding torch's global RNG would make every later
    # global draw predictable from the config.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return family_of(cfg.model.name).function("build")(cfg, run)


def build_projection(cfg: DictConfig, run: RunData) -> TextSeqRec:
    """``model=projection``: frozen sentence-LM item vectors -> trainable projection."""
    text = FrozenText(torch.as_tensor(run.item_text)) if cfg.model.get("item_text", True) else None
    return _text_seq(cfg, run, text)


def build_lora(cfg: DictConfig, run: RunData) -> TextSeqRec:
    """``model=lora``: PEFT LoRA on the sentence LM's top layer over its cached lower layers."""
    from common.model.lora_text import LoraText

    m = cfg.model
    states, mask = _lower_states(cfg, run)
    return _text_seq(
        cfg, run, LoraText(m.lm.path, states, mask, m.top_layers, m.lora_r, m.lora_alpha, tuple(m.lora_targets))
    )


def _text_seq(cfg: DictConfig, run: RunData, text) -> TextSeqRec:
    """Item text encoder -> user encoder -> dot product, the rest of both text families."""
    m = cfg.model
    return TextSeqRec(
        text,
        num_items=run.data.num_items,
        dim=m.dim,
        max_len=m.max_len,
        layers=m.layers,
        heads=m.heads,
        dropout=m.dropout,
        item_ids=m.item_ids,
        item_bias=m.get("item_bias", False),
        user_encoder=m.get("user_encoder", "sasrec"),
        decay=float(m.get("decay", 1.0)),
    )


_LOWER: dict = {}


def _lower_states(cfg: DictConfig, run: RunData):
    """Lower-layer token states, read from the disk cache once per process."""
    from common.model.lora_text import cached_lower_states

    m = cfg.model
    key = (data_key(cfg), m.top_layers, m.lm.max_length, m.lm.batch_size)
    if key not in _LOWER:
        _LOWER.clear()  # one catalogue at a time: the states are large
        _LOWER[key] = cached_lower_states(
            run.data.item_text, m.lm.path, m.top_layers, m.lm.max_length, m.lm.batch_size, cfg.get("cache_dir")
        )
    return _LOWER[key]


def adapter_config(cfg: DictConfig, run: RunData) -> dict:
    """What a reader needs to rebuild the model around a saved adapter."""
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "num_items": run.data.num_items,
        "text_dim": int(run.item_text.shape[1]),
        "dataset": run.data.name,
        "items_sha256": items_fingerprint(run.data.item_ids),
    }
