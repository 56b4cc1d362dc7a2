"""DP-SGD of the projection adapter runs on ExpandedWeights ("ew") per-user gradients, the
faster Opacus mode (BENCHMARKS.md, "DP overhead per training example"): the gradients, the
clipping and the planned steps must stay exactly what "hooks" gave."""

import numpy as np
import torch
from torch import nn

import common.training.local as training
from common.model.recommender import FrozenText, TextSeqRec
from common.privacy.dp_sgd import DPSettings, make_private, per_sample_gradient_mode
from common.training.local import left_pad, train_local

NUM_ITEMS, TEXT_DIM = 40, 12
TEXT = torch.randn(NUM_ITEMS, TEXT_DIM, generator=torch.Generator().manual_seed(3))


def _model(item_ids: bool = True) -> TextSeqRec:
    torch.manual_seed(0)
    return TextSeqRec(FrozenText(TEXT), NUM_ITEMS, dim=16, max_len=8, item_ids=item_ids, item_bias=True, dropout=0.0)


def _sequences(n_users: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(NUM_ITEMS, size=rng.integers(3, 14), replace=False) for _ in range(n_users)]


class _TrainableText(nn.Module):
    """Stands in for a tuned text encoder (LoRA): trainable, so "ew" is not proven for it."""

    dim = TEXT_DIM

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(NUM_ITEMS, TEXT_DIM)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids)


def test_only_the_frozen_text_and_id_adapters_use_expanded_weights():
    assert per_sample_gradient_mode(_model()) == "ew"
    assert per_sample_gradient_mode(TextSeqRec(None, NUM_ITEMS, dim=16, item_ids=True)) == "ew"
    assert per_sample_gradient_mode(TextSeqRec(_TrainableText(), NUM_ITEMS, dim=16)) == "hooks"
    assert per_sample_gradient_mode(nn.Linear(3, 3)) == "hooks"  # e.g. common/causal/task.py's models


def _batch(seqs, neg_seed=0):
    inp, pad = left_pad([s[:-1] for s in seqs], 8)
    tgt, tgt_pad = left_pad([s[1:] for s in seqs], 8)
    neg = torch.randint(0, NUM_ITEMS, (len(seqs), 5), generator=torch.Generator().manual_seed(neg_seed))
    return inp, pad, tgt, tgt_pad, neg


def _per_user_loss(net, inp, pad, tgt, tgt_pad, neg) -> torch.Tensor:
    pos, negs = net(inp, pad, tgt, neg)
    nll = -torch.log_softmax(torch.cat([pos.unsqueeze(-1), negs], -1), -1)[..., 0]
    valid = (~tgt_pad).float()
    return (nll * valid).sum(1) / valid.sum(1)


def _private(model, dp, batch_size=4):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(8)), batch_size=batch_size)
    return make_private(model, optimizer, loader, dp, grad_sample_mode="ew")


def test_ew_per_user_gradients_equal_one_backward_per_user():
    """Through make_private as training calls it ("mean" loss over the batch): every
    parameter's per-user gradient is that user's own loss gradient, attention, masks,
    shared item adapter, id embedding and bias included."""
    model = _model()
    seqs = _sequences(4, seed=5)
    inp, pad, tgt, tgt_pad, neg = _batch(seqs)
    expected = []
    for b in range(4):
        model.zero_grad(set_to_none=True)
        _per_user_loss(
            model, inp[b : b + 1], pad[b : b + 1], tgt[b : b + 1], tgt_pad[b : b + 1], neg[b : b + 1]
        ).backward()
        expected.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model.zero_grad(set_to_none=True)
    engine, net, optimizer, _ = _private(model, DPSettings(1.0, 1.0, noise_seed=0))
    (_per_user_loss(net, inp, pad, tgt, tgt_pad, neg).sum() / 4).backward()
    for name, p in model.named_parameters():
        assert p.grad_sample.shape == (4, *p.shape), name
        for b in range(4):
            want = expected[b].get(name, torch.zeros_like(p))
            torch.testing.assert_close(p.grad_sample[b], want, rtol=1e-4, atol=1e-6, msg=f"{name} user {b}")
    net._close()


def test_ew_step_clips_each_user_to_max_grad_norm():
    """σ=0: the step's gradient is exactly the sum of per-user gradients each scaled to norm
    ≤ C (over all parameters together), divided by the expected batch size."""
    model = _model()
    seqs = _sequences(4, seed=6)
    batch = _batch(seqs, neg_seed=1)
    c = 0.05
    engine, net, optimizer, _ = _private(model, DPSettings(0.0, c, noise_seed=0))
    (_per_user_loss(net, *batch).sum() / 4).backward()
    params = [p for p in model.parameters()]
    per_user = torch.cat([p.grad_sample.reshape(4, -1) for p in params], 1)
    norms = per_user.norm(dim=1)
    assert (norms > c).all(), "the test needs users whose gradient gets clipped"
    clipped = per_user * (c / (norms + 1e-6)).clamp(max=1.0)[:, None]
    assert (clipped.norm(dim=1) <= c + 1e-6).all()
    optimizer.pre_step()  # clip, accumulate, (zero) noise, scale: what step() applies
    got = torch.cat([p.grad.reshape(-1) for p in params])
    torch.testing.assert_close(got, clipped.sum(0) / optimizer.expected_batch_size, rtol=1e-4, atol=1e-7)
    net._close()


def test_empty_poisson_batches_still_take_their_planned_noise_steps(monkeypatch):
    """ExpandedWeights cannot run a batch of 0 users: training must skip the forward pass but
    still step (noise only), so the steps and the accountant match the plan."""
    calls = []
    orig = training.user_loss

    def counted(model, seqs, *a, **kw):
        calls.append(len(seqs))
        return orig(model, seqs, *a, **kw)

    monkeypatch.setattr(training, "user_loss", counted)
    model = _model(item_ids=False)
    before = [p.detach().clone() for p in model.parameters()]
    # 3 users, batch 1: q = 1/3, 3 steps an epoch; P(empty batch) = (2/3)^3 per step.
    out = train_local(
        model,
        _sequences(3),
        NUM_ITEMS,
        epochs=10,
        batch_size=1,
        lr=1e-2,
        num_negatives=4,
        seed=0,
        dp=DPSettings(1.0, 1.0, noise_seed=11),
    )
    assert out["steps"] == 30 == sum(s for _, _, s in out["history"])
    assert {(noise, q) for noise, q, _ in out["history"]} == {(1.0, 1 / 3)}
    assert len(calls) < 30, "no empty batch drawn: pick another noise_seed"
    assert all(n > 0 for n in calls)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not any(hasattr(p, "grad_sample") for p in model.parameters()), "Opacus state left on the model"
