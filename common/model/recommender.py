"""Item encoder → user encoder → scorer, built only from layers Opacus computes per-sample
gradients for (Linear, LayerNorm, Embedding), so DP-SGD needs no custom grad samplers.

A training step only touches the items of each user (history + sampled negatives), so a DP
step's per-sample work does not grow with the catalogue (with a full softmax, Opacus would
recompute the adapter for every item per sample). The item text representation comes from a
swappable ``text`` module: frozen precomputed LM embeddings (``FrozenText``) or LoRA-tuned
top LM layers (``model=lora``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class FrozenText(nn.Module):
    """Precomputed LM embeddings of every item; a buffer, so it never trains or travels."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("emb", torch.as_tensor(embeddings), persistent=False)

    @property
    def dim(self) -> int:
        return self.emb.shape[1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb[ids]


class ItemAdapter(nn.Module):
    """Trainable map from a frozen text embedding (+ optional item-id embedding) to item space.

    ``text=None`` gives a classic id-only item embedding (SASRec), the context baseline for
    the language-model approach."""

    def __init__(self, text: nn.Module | None, dim: int, num_items: int, item_ids: bool) -> None:
        super().__init__()
        if text is None and not item_ids:
            raise ValueError("an item encoder needs item text, item ids, or both")
        self.text = text
        self.proj = nn.Linear(text.dim, dim) if text is not None else None
        self.norm = nn.LayerNorm(dim)
        # Ids let the model learn what text misses (text + ids measured best on ML-100K).
        self.id_emb = nn.Embedding(num_items, dim) if item_ids else None
        if self.id_emb is not None:
            nn.init.normal_(self.id_emb.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            # Normalised like the text path, so the scorer's 1/sqrt(dim) scale fits both.
            return self.norm(self.id_emb(ids))
        v = self.norm(self.proj(self.text(ids)))
        if self.id_emb is not None:
            v = v + self.id_emb(ids)
        return v


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention from plain Linear layers (Opacus-friendly)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        allowed = causal & ~pad[:, None, None, :]
        # A fully padded row would give NaN; let it attend to itself instead.
        allowed = allowed | torch.eye(n, dtype=torch.bool, device=x.device)
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(att.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 2 * dim)
        self.ff2 = nn.Linear(2 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), pad))
        return x + self.drop(self.ff2(F.gelu(self.ff1(self.norm2(x)))))


class SequenceEncoder(nn.Module):
    """SASRec-style user encoder: the state after position t summarises items 0..t."""

    def __init__(self, dim: int, max_len: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.pos = nn.Embedding(max_len, dim)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, items: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, n, _ = items.shape
        positions = torch.arange(n, device=items.device).expand(b, n)
        x = self.drop(items + self.pos(positions))
        for block in self.blocks:
            x = block(x, pad)
        return self.norm(x)


class MeanEncoder(nn.Module):
    """Parameter-light user encoder: the state after position t is the recency-weighted mean
    of items 0..t (weights ``decay``^(t-j); 1 = plain mean, 0 = the last item alone).

    Under DP-SGD the noise grows with the square root of the trainable dimensions; this
    encoder adds only a LayerNorm to the item adapter, where SASRec's block adds ~33k weights
    at dim 64 that start random and must be learnt through the noise."""

    def __init__(self, dim: int, max_len: int, decay: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"model.decay={decay}: expected a value in [0, 1]")
        steps = torch.arange(max_len)
        lag = (steps[:, None] - steps[None, :]).clamp(min=0).float()
        weights = torch.where(steps[:, None] >= steps[None, :], decay**lag, torch.zeros(()))
        if decay == 0.0:  # 0**0 is 1 in torch, but make the intent explicit
            weights = torch.eye(max_len)
        self.register_buffer("weights", weights, persistent=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, items: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        n = items.shape[1]
        w = self.weights[:n, :n] * (~pad)[:, None, :].to(items.dtype)  # [B, n, n]
        total = w.sum(-1, keepdim=True).clamp(min=1e-6)
        return self.norm(torch.bmm(w, items) / total)


USER_ENCODERS = ("sasrec", "mean")


class TextSeqRec(nn.Module):
    """The recommender adapter: everything trainable that crosses the network."""

    def __init__(
        self,
        text: nn.Module | None,
        num_items: int,
        dim: int = 64,
        max_len: int = 50,
        layers: int = 1,
        heads: int = 2,
        dropout: float = 0.1,
        item_ids: bool = False,
        item_bias: bool = False,
        user_encoder: str = "sasrec",
        decay: float = 1.0,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        # A per-item score offset learns popularity: a strong signal that costs only
        # num_items parameters (cheap under DP noise, which grows with parameter count).
        self.bias = nn.Embedding(num_items, 1) if item_bias else None
        if self.bias is not None:
            nn.init.zeros_(self.bias.weight)
        self.item = ItemAdapter(text, dim, num_items, item_ids)
        if user_encoder == "sasrec":
            self.user = SequenceEncoder(dim, max_len, layers, heads, dropout)
        elif user_encoder == "mean":
            self.user = MeanEncoder(dim, max_len, decay)
        else:
            raise ValueError(f"model.user_encoder={user_encoder!r}: expected one of {', '.join(USER_ENCODERS)}")
        # LayerNorm'd vectors have norm ~sqrt(dim); scale dot products back to O(sqrt(dim)).
        self.scale = 1.0 / math.sqrt(dim)

    def forward(
        self,
        seq_ids: torch.Tensor,  # [B, L] input items, left-padded
        pad: torch.Tensor,  # [B, L] True where padded
        target_ids: torch.Tensor,  # [B, L] the next item after each position
        neg_ids: torch.Tensor,  # [B, N] one user's sampled negatives, shared by positions
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of the true next item [B, L] and of the negatives [B, L, N] at every position."""
        # One item-adapter call over all of the user's items: one set of per-sample activations.
        n_seq, n_tgt = seq_ids.shape[1], target_ids.shape[1]
        v = self.item(torch.cat([seq_ids, target_ids, neg_ids], dim=1))
        h = self.user(v[:, :n_seq], pad)
        pos = (h * v[:, n_seq : n_seq + n_tgt]).sum(-1) * self.scale
        neg = torch.einsum("bld,bnd->bln", h, v[:, n_seq + n_tgt :]) * self.scale
        if self.bias is not None:
            b = self.bias(torch.cat([target_ids, neg_ids], dim=1)).squeeze(-1)
            pos = pos + b[:, :n_tgt]
            neg = neg + b[:, None, n_tgt:]
        return pos, neg

    @torch.no_grad()
    def user_states(self, seq_ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """The state after each user's last real item (sequences are left-padded)."""
        return self.user(self.item(seq_ids), pad)[:, -1]

    @torch.no_grad()
    def item_vectors(self, num_items: int, batch_size: int = 1024) -> torch.Tensor:
        device = next(self.parameters()).device
        ids = torch.arange(num_items, device=device)
        return torch.cat([self.item(ids[i : i + batch_size]) for i in range(0, num_items, batch_size)]) * self.scale

    @torch.no_grad()
    def item_bias(self, num_items: int) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.weight[:num_items, 0]
