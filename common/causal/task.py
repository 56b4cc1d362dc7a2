"""``model=causal_lora``: examples per user, user-level DP training and AUC evaluation.

One DP example is one user: each step, every sampled user contributes
``model.candidates_per_user`` prompts (random targets from their training prefix, each with
up to ``model.max_history`` preceding items as history), and Opacus' per-prompt gradients are
summed per user before clipping, so clipping bounds a user's whole contribution. The users
counted are those with at least 2 training items, the same set ``federated_plan`` counts, and
``train_causal`` returns Opacus' own (σ, q, steps) history like ``train_local``.

Evaluation (the TALLRec AUC protocol on our leave-one-out split): for each user, the held-out
item (test or validation) is the target, its label is rating > 3, and the history is the
``max_history`` items before it. Clients return an :class:`AucHistogram` of the scores.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import torch
from omegaconf import DictConfig
from torch.nn import functional as F

from common.causal.lm import CausalLoraRec
from common.causal.prompts import PromptBuilder, user_ratings
from common.causal.rerank import evaluate_rerank, rerank_settings
from common.metrics.auc import AucHistogram
from common.privacy.dp_sgd import DPSettings, make_private

warnings.filterwarnings("ignore", message="Full backward hook is firing")


def train_causal(
    model: CausalLoraRec,
    run,
    rows: np.ndarray,
    cfg: DictConfig,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    dp: DPSettings | None = None,
) -> dict:
    """Train the LoRA adapters in place on the users of split rows ``rows``; same return
    value as ``train_local`` (loss, steps, users, Opacus history)."""
    users = [(run.split.train[r], user_ratings(run, r)[: len(run.split.train[r])]) for r in rows]
    users = [(s, y) for s, y in users if len(s) >= 2]
    if not users:
        return {"loss": float("nan"), "steps": 0, "users": 0, "history": []}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        build = PromptBuilder(run.data.item_text, int(cfg.model.max_history))
        return _train(model, users, build, cfg, epochs, batch_size, lr, seed, dp)


def train_client(model: CausalLoraRec, run, rows, seqs, cfg: DictConfig, lr: float, seed: int, dp) -> dict:  # noqa: ARG001
    """One client's round (``ModelFamily.train``): its users' yes/no prompts; ``seqs`` unused."""
    return train_causal(model, run, rows, cfg, cfg.strategy.local_epochs, cfg.train.batch_size, lr, seed, dp)


def evaluate_client(model: CausalLoraRec, run, rows, cfg: DictConfig) -> tuple[float, dict]:
    """One client's evaluation (``ModelFamily.evaluate``): a score histogram per label for the
    server's pooled AUC, and its log-loss."""
    metrics, loss = evaluate_causal(
        model, run, rows, int(cfg.model.max_history), cfg.eval.split, int(cfg.model.eval_batch_size), cfg=cfg
    )
    return loss, metrics


def user_rng(seed: int, step: int, items: np.ndarray) -> np.random.Generator:
    """The generator that picks one user's training prompts in one step: keyed by public values
    and the user's own history only, so no other user in the batch can change which prompts
    (hence which clipped gradient) this user contributes."""
    return np.random.default_rng([seed, step, zlib.crc32(np.asarray(items, dtype=np.int64).tobytes())])


def target_pool(items: np.ndarray, train_targets: int) -> np.ndarray:
    """Training target positions of a user's training items: every position ≥ 1, or with
    ``train_targets = K > 0`` the last K only (a fixed pool whose prompts recur)."""
    return np.arange(max(1, len(items) - train_targets) if train_targets > 0 else 1, len(items))


def eval_example(run, build: PromptBuilder, row: int, which: str) -> tuple[str, bool]:
    """(prompt, liked) for split row ``row``'s held-out ``which`` item, the items before it as history."""
    liked = user_ratings(run, row)
    held = [int(run.split.valid[row])] + ([int(run.split.test[row])] if which == "test" else [])
    items = np.concatenate([run.split.train[row], np.asarray(held, dtype=np.int64)])
    t = len(items) - 1
    return build(items, liked[: len(items)], t), bool(liked[t])


def _train(model, users, build, cfg, epochs, batch_size, lr, seed, dp) -> dict:
    m = cfg.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=float(cfg.train.weight_decay))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.arange(len(users))),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    net, engine = model, None
    if dp is not None:
        engine, net, optimizer, loader = make_private(model, optimizer, loader, dp)
    losses, steps = [], 0
    for _ in range(epochs):
        for (batch,) in loader:
            optimizer.zero_grad(set_to_none=True)
            chosen = batch.tolist()
            if chosen:
                texts, labels, owner = [], [], []
                for k, u in enumerate(chosen):
                    items, liked = users[u]
                    # train_targets > 0: a fixed pool (the last K positions), so the same prompts
                    # recur across steps and rounds and their lower-layer states stay cached.
                    pool = target_pool(items, int(m.get("train_targets", 0)))
                    n = min(int(m.candidates_per_user), len(pool))
                    for t in user_rng(seed, steps, items).choice(pool, size=n, replace=False):
                        texts.append(build(items, liked, int(t)))
                        labels.append(float(liked[t]))
                        owner.append(k)
                owner_t = torch.as_tensor(owner)
                per_user = torch.bincount(owner_t, minlength=len(chosen)).float()
                diff = net(*model.inputs(texts, int(m.eval_batch_size)))
                nll = F.binary_cross_entropy_with_logits(diff, torch.as_tensor(labels), reduction="none")
                weights = 1.0 / per_user[owner_t]  # each user's prompts average to one example
                if dp is not None:
                    # Opacus ("mean" reduction) multiplies each row's gradient by the row count:
                    # dividing by it leaves row gradients of weight/user, summed per user below.
                    loss = (nll * weights).sum() / len(texts)
                else:
                    loss = (nll * weights).sum() / len(chosen)
                loss.backward()
                if dp is not None:
                    _sum_per_user(params, owner_t, len(chosen))
                losses.append(float((nll.detach() * weights).sum()) / len(chosen))
            elif dp is not None:
                # An empty Poisson batch still takes a (noise-only) step, as the plan counts.
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            else:
                continue
            optimizer.step()
            steps += 1
    history = []
    if engine is not None:
        net._close()
        history = [tuple(h) for h in engine.accountant.history]
    return {
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "steps": steps,
        "users": len(users),
        "history": history,
    }


def _sum_per_user(params: list[torch.Tensor], owner: torch.Tensor, num_users: int) -> None:
    """Per-prompt gradient samples -> per-user sums: the DP example is the user."""
    for p in params:
        gs = p.grad_sample
        gs = torch.cat(gs) if isinstance(gs, list) else gs
        summed = torch.zeros((num_users, *gs.shape[1:]), dtype=gs.dtype, device=gs.device)
        p.grad_sample = summed.index_add_(0, owner, gs)


def evaluate_causal(
    model: CausalLoraRec,
    run,
    rows: np.ndarray,
    max_history: int,
    which: str = "test",
    batch_size: int = 16,
    cfg: DictConfig | None = None,
) -> tuple[dict, float]:
    """AUC histogram metrics of this client's users and their mean log-loss; with
    ``cfg.model.rerank_run`` also full-ranking sums (:func:`evaluate_rerank`).

    Target = the held-out ``which`` item (test: history = train + validation items)."""
    if which not in ("test", "valid"):
        raise ValueError(f"eval.split={which!r}: choose test or valid")
    build = PromptBuilder(run.data.item_text, max_history)
    texts, labels = [], []
    for r in rows:
        text, label = eval_example(run, build, r, which)
        texts.append(text)
        labels.append(label)
    hist = AucHistogram()
    if not texts:
        return {"count": 0, **hist.to_metrics()}, float("nan")
    scores = model.score(texts, batch_size).numpy()
    y = np.asarray(labels)
    hist.add(scores, y)
    nll = float(F.binary_cross_entropy_with_logits(torch.as_tensor(scores), torch.as_tensor(y, dtype=torch.float64)))
    out = {"count": len(texts), "auc_logloss_sum": nll * len(texts), **hist.to_metrics()}
    if cfg is not None and rerank_settings(cfg) is not None:
        out.update(evaluate_rerank(model, run, rows, cfg, which))  # its "count" is the same users
    return out, nll


def fixed_prompts(run, rows: np.ndarray, cfg: DictConfig, which: tuple[str, ...] = ("valid", "test")) -> list[str]:
    """Every prompt a run over split rows ``rows`` can build: the evaluation prompts of the
    ``which`` splits and, with ``model.train_targets = K > 0``, each user's training pool."""
    k = int(cfg.model.get("train_targets", 0))
    if k <= 0:
        raise ValueError(
            "model.train_targets=0 draws training targets from every position; "
            "set model.train_targets=K to fix each user's pool of K prompts"
        )
    build = PromptBuilder(run.data.item_text, int(cfg.model.max_history))
    out = [eval_example(run, build, r, w)[0] for w in which for r in rows]
    for r in rows:
        items = run.split.train[r]
        if len(items) >= 2:
            liked = user_ratings(run, r)[: len(items)]
            out += [build(items, liked, int(t)) for t in target_pool(items, k)]
    return out
