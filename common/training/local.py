"""Local training of the recommender adapter, with or without Opacus DP-SGD.

One training example is one user's whole history (all-positions loss), so per-example
clipping bounds each user's influence: the DP guarantee is user-level.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch
from torch.nn import functional as F

from common.model.recommender import TextSeqRec
from common.privacy.dp_sgd import DPSettings, make_private, per_sample_gradient_mode

log = logging.getLogger(__name__)
# Opacus' per-sample hooks fire on modules whose inputs need no grad (frozen embeddings):
# expected here, and printed once per step in every simulated client otherwise.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


def round_seed(seed: int, round_: int, client: int) -> int:
    """The seed of one client's local work in one round (batch order, negatives, seeded noise).

    Distinct for every (run seed, round, client) in any realistic run, so no two clients or
    rounds share a stream; the benchmarks that replay a client use it too, to match exactly."""
    return int(seed) * 100_003 + int(round_) * 1_009 + int(client)


def train_client(model: TextSeqRec, run, rows, seqs: list[np.ndarray], cfg, lr: float, seed: int, dp) -> dict:
    """One client's round for the text families (``ModelFamily.train``): its local epochs."""
    return train_local(
        model,
        seqs,
        run.data.num_items,
        epochs=cfg.strategy.local_epochs,
        batch_size=cfg.train.batch_size,
        lr=lr,
        num_negatives=cfg.model.num_negatives,
        seed=seed,
        dp=dp,
        weight_decay=cfg.train.weight_decay,
    )


def trainable_sequences(sequences: list[np.ndarray]) -> list[np.ndarray]:
    """Users with at least one (input, next item) pair; the rest contribute no example.

    The DP plan counts exactly these users, so q matches the loader Opacus builds."""
    return [s for s in sequences if len(s) >= 2]


def sample_rate(num_users: int, batch_size: int) -> float:
    """Poisson sampling rate q Opacus uses for a loader of this size (1 / batches per epoch)."""
    return 1.0 / max(1, math.ceil(num_users / batch_size))


def steps_per_epoch(num_users: int, batch_size: int) -> int:
    """Steps Opacus' Poisson sampler takes per epoch: int(1/q), which float rounding makes one
    less than the batch count for some counts (93, 99, 105, ...); the plan must count the same."""
    return int(1 / sample_rate(num_users, batch_size))


def left_pad(seqs: list[np.ndarray], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Last ``length`` items of each sequence, left-padded with item 0; mask True = padding."""
    ids = torch.zeros(len(seqs), length, dtype=torch.long)
    pad = torch.ones(len(seqs), length, dtype=torch.bool)
    for i, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            ids[i, length - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            pad[i, length - len(s) :] = False
    return ids, pad


def user_loss(
    model: torch.nn.Module,
    seqs: list[np.ndarray],
    max_len: int,
    num_items: int,
    num_negatives: int,
    gen: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Per-user sampled-softmax loss averaged over the user's positions, shape [B].

    Negatives are drawn uniformly per user (shared by the user's positions); a negative equal
    to the true next item is masked out.
    """
    inp, pad = left_pad([s[:-1] for s in seqs], max_len)
    tgt, tgt_pad = left_pad([s[1:] for s in seqs], max_len)
    inp, pad, tgt = inp.to(device), pad.to(device), tgt.to(device)
    neg = torch.randint(0, num_items, (len(seqs), num_negatives), generator=gen).to(device)
    pos_s, neg_s = model(inp, pad, tgt, neg)
    neg_s = neg_s.masked_fill(neg[:, None, :] == tgt[:, :, None], float("-inf"))
    logits = torch.cat([pos_s.unsqueeze(-1), neg_s], dim=-1)
    nll = -F.log_softmax(logits, dim=-1)[..., 0]
    valid = (~tgt_pad).to(device).float()
    return (nll * valid).sum(1) / valid.sum(1).clamp(min=1.0)


@torch.no_grad()
def mean_loss(
    model: TextSeqRec, sequences: list[np.ndarray], num_items: int, num_negatives: int, seed: int, batch_size: int = 256
) -> float:
    """The users' mean training loss under ``model`` as it is (no training; fixed negatives):
    q-FFL's F_k, the loss of the received global model on a client's users."""
    seqs = trainable_sequences(sequences)
    if not seqs:
        return float("nan")
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    losses = [
        user_loss(model, seqs[i : i + batch_size], model.max_len, num_items, num_negatives, gen, device)
        for i in range(0, len(seqs), batch_size)
    ]
    return float(torch.cat(losses).mean())


def train_local(
    model: TextSeqRec,
    sequences: list[np.ndarray],
    num_items: int,
    epochs: int,
    batch_size: int,
    lr: float,
    num_negatives: int,
    seed: int,
    dp: DPSettings | None = None,
    weight_decay: float = 0.0,
) -> dict:
    """Train ``model`` in place on users' training sequences.

    With ``dp`` the batches are Poisson-sampled at rate 1/ceil(n/batch_size) and every step
    clips each user's gradient and adds Gaussian noise (Opacus). Returns the loss, the step
    count and, with DP, ``history``: the (noise, q, steps) Opacus' own accountant recorded,
    for the caller's ledger. This function never decides the noise level.
    """
    seqs = trainable_sequences(sequences)
    if not seqs:
        return {"loss": float("nan"), "steps": 0, "users": 0, "history": []}
    # Dropout draws from torch's global RNG: seed it for this call only, so the same seed
    # and config train the same model (the DP noise has its own generators, see DPSettings).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _train(model, seqs, num_items, epochs, batch_size, lr, num_negatives, seed, dp, weight_decay)


def _train(model, seqs, num_items, epochs, batch_size, lr, num_negatives, seed, dp, weight_decay) -> dict:
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    index = torch.utils.data.TensorDataset(torch.arange(len(seqs)))
    loader = torch.utils.data.DataLoader(
        index, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    net: torch.nn.Module = model
    engine = None
    mode = per_sample_gradient_mode(model)
    if dp is not None:
        engine, net, optimizer, loader = make_private(model, optimizer, loader, dp, grad_sample_mode=mode)
    losses, steps = [], 0
    for _ in range(epochs):
        for (batch,) in loader:
            batch_seqs = [seqs[i] for i in batch.tolist()]
            optimizer.zero_grad(set_to_none=True)
            if dp is not None and mode == "ew" and not batch_seqs:
                # ExpandedWeights cannot run a batch of 0; an empty Poisson batch still takes
                # its noise-only step, as the plan counts (hooks mode gets here by itself).
                for p in model.parameters():
                    if p.requires_grad:
                        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
                optimizer.step()
                steps += 1
                continue
            per_user = user_loss(net, batch_seqs, model.max_len, num_items, num_negatives, gen, device)
            loss = per_user.sum() / max(len(batch_seqs), 1)
            loss.backward()
            optimizer.step()
            steps += 1
            if len(batch_seqs):
                losses.append(loss.item())
    history = []
    if engine is not None:
        net._close()  # drop Opacus hooks; ``model`` itself holds the trained weights
        history = [tuple(h) for h in engine.accountant.history]
    return {
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "steps": steps,
        "users": len(seqs),
        "history": history,
    }
