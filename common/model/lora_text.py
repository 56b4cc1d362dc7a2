"""``model=lora``: LoRA (PEFT) on the top layers of the item-text LM, lower layers cached.

The frozen lower layers' token states of every item are computed once and cached on disk
(exact: they do not depend on the trainable part). Training runs only the top ``top_layers``
BERT-style layers with LoRA on ``query``/``value``. The layers are run here on 4-D input
[users, items, tokens, hidden] rather than through the HF module, so that every LoRA Linear
sees the user as its first dimension and Opacus gets per-user gradients from its standard
Linear hooks.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.model.item_encoder import default_cache_dir, resolve_lm_path

log = logging.getLogger(__name__)


def cached_lower_states(
    texts: list[str],
    lm_path: str | None,
    top_layers: int,
    max_length: int,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Token states after the frozen lower layers [items, tokens, hidden] (float16 on disk)
    and the attention mask [items, tokens]."""
    path = resolve_lm_path(lm_path)
    h = hashlib.sha256(f"{path.name}|{top_layers}|{max_length}".encode())
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    file = Path(cache_dir or default_cache_dir()) / f"lower-{path.name}-{h.hexdigest()[:24]}.npz"
    if file.is_file():
        with np.load(file) as z:
            return z["states"].astype(np.float32), z["mask"]
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    lm = AutoModel.from_pretrained(str(path)).eval()
    n_layers = lm.config.num_hidden_layers
    if not 0 < top_layers <= n_layers:
        raise ValueError(f"model.top_layers={top_layers}: the LM has {n_layers} layers")
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    states = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            out = lm(
                input_ids=enc["input_ids"][i : i + batch_size],
                attention_mask=enc["attention_mask"][i : i + batch_size],
                output_hidden_states=True,
            )
            states.append(out.hidden_states[n_layers - top_layers])
    states_np = torch.cat(states).numpy().astype(np.float16)
    mask = enc["attention_mask"].numpy().astype(np.bool_)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, states=states_np, mask=mask)
    os.replace(tmp, file)
    return states_np.astype(np.float32), mask


@lru_cache(maxsize=2)
def _top_layers(path: str, top_layers: int) -> tuple[nn.ModuleList, int]:
    """The LM's top layers, read from disk once per process (a model is built every round)."""
    from transformers import AutoModel

    lm = AutoModel.from_pretrained(path)
    return nn.ModuleList(lm.encoder.layer[-top_layers:]), lm.config.num_attention_heads


class TopLayers(nn.Module):
    """The LM's top encoder layers, applied to [..., tokens, hidden] with any leading dims."""

    def __init__(self, layers: nn.ModuleList, num_heads: int) -> None:
        super().__init__()
        self.layers = layers
        self.heads = num_heads

    def _layer(self, layer: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        att = layer.attention
        *lead, t, d = x.shape

        def split(y):  # noqa: E306
            return y.view(*lead, t, self.heads, d // self.heads).transpose(-2, -3)

        q, k, v = split(att.self.query(x)), split(att.self.key(x)), split(att.self.value(x))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[..., None, None, :])
        a = a.transpose(-2, -3).reshape(*lead, t, d)
        x = att.output.LayerNorm(att.output.dense(a) + x)
        ff = layer.output.dense(layer.intermediate(x))
        return layer.output.LayerNorm(ff + x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self._layer(layer, x, mask)
        return x


class LoraText(nn.Module):
    """Item text vectors from LoRA-tuned top layers over cached lower-layer states."""

    def __init__(
        self,
        lm_path: str | None,
        states: np.ndarray,
        mask: np.ndarray,
        top_layers: int = 1,
        r: int = 8,
        alpha: int = 16,
        target_modules: tuple[str, ...] = ("query", "value"),
    ) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model

        layers, heads = _top_layers(str(resolve_lm_path(lm_path)), top_layers)
        top = copy.deepcopy(layers)  # PEFT modifies the modules it wraps
        for p in top.parameters():
            p.requires_grad_(False)
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target_modules))
        # PEFT wraps only the named Linear layers; everything else stays frozen.
        self.peft = get_peft_model(TopLayers(top, heads), config)
        self.register_buffer("states", torch.as_tensor(states), persistent=False)
        self.register_buffer("mask", torch.as_tensor(mask), persistent=False)
        self.dim = states.shape[-1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x, m = self.states[ids], self.mask[ids]
        h = self.peft(x, m)
        w = m.unsqueeze(-1).to(h.dtype)
        return F.normalize((h * w).sum(-2) / w.sum(-2).clamp(min=1.0), dim=-1)
