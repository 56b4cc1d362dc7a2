"""Model families, looked up by ``model.name``: one entry per variant instead of
``if model.name == …`` at every call site.

Each family names its builder and its client-side training and evaluation as
``"module:function"``, resolved when first called. So this table imports nothing of the
project: the causal LM's stack (transformers, PEFT) loads only when a causal run asks for it,
and no import circle can form through the registry. Every function of one kind has the same
signature (see :class:`ModelFamily`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RANKING = "ranking"  # full-ranking leave-one-out: NDCG@k, HR@k, MRR over every unseen item
AUC = "auc"  # yes/no prompts scored by AUC (the TALLRec protocol)


@dataclass(frozen=True)
class ModelFamily:
    """One model family.

    - ``build(cfg, run) -> torch.nn.Module``: the model, initialised from torch's current RNG
      (``common.model.factory.build_model`` seeds it).
    - ``train(model, run, rows, seqs, cfg, lr, seed, dp) -> dict``: one client's local work in
      one round (``rows``: its users; ``seqs``: their trainable histories; ``dp``: DP-SGD
      settings or None); returns ``loss``, ``steps`` and Opacus' ``history``.
    - ``evaluate(model, run, rows, cfg) -> (loss, metrics)``: one client's evaluation sums for
      the server to pool (``metrics``) and Flower's loss.
    """

    name: str
    build: str
    train: str
    evaluate: str
    protocol: str
    noise: tuple[str, ...]  # the noise placements it supports
    baselines: tuple[str, ...]  # the baselines that can run it

    def function(self, part: str) -> Callable[..., Any]:
        module, name = getattr(self, part).split(":")
        return getattr(importlib.import_module(module), name)


_TEXT_SEQ = dict(
    train="common.training.local:train_client",
    evaluate="common.evaluation:evaluate_client",
    protocol=RANKING,
    noise=("distributed", "local", "central"),
    baselines=("popularity", "centralized", "local", "sasrec_ids"),
)

FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        # frozen sentence-LM item embeddings -> trainable projection -> user encoder -> dot product
        ModelFamily("projection", build="common.model.factory:build_projection", **_TEXT_SEQ),
        # the same, with PEFT LoRA on the LM's top layer over cached lower-layer states
        ModelFamily("lora", build="common.model.factory:build_lora", **_TEXT_SEQ),
        # LoRA in a causal LM answering "will the user like this item? Yes/No"; its DP-SGD runs
        # inside the LM's own loop, so no pooled step (distributed noise) and no centralized runs
        ModelFamily(
            "causal_lora",
            build="common.causal.build:build_causal_model",
            train="common.causal.task:train_client",
            evaluate="common.causal.task:evaluate_client",
            protocol=AUC,
            noise=("local", "central"),
            baselines=("popularity", "sasrec_ids"),
        ),
    )
}


def family_of(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"model={name!r}: known models are {', '.join(FAMILIES)}") from None
