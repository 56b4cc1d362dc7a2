"""The parameter-light user encoder of the default model."""

import numpy as np
import pytest
import torch

from common.model.recommender import FrozenText, MeanEncoder, TextSeqRec
from common.privacy.dp_sgd import DPSettings
from common.training.local import left_pad, train_local

NUM_ITEMS, TEXT_DIM, DIM = 40, 24, 8


def _items(b: int, n: int) -> torch.Tensor:
    return torch.randn(b, n, DIM, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("decay", [1.0, 0.7, 0.0])
def test_mean_encoder_state_is_the_recency_weighted_mean_of_the_real_items_so_far(decay):
    enc = MeanEncoder(DIM, max_len=6, decay=decay)
    items = _items(2, 6)
    pad = torch.tensor([[True, True, False, False, False, False], [False] * 6])
    out = enc(items, pad)
    for b in range(2):
        real = [j for j in range(6) if not pad[b, j]]
        for t in real:
            seen = [j for j in real if j <= t]
            w = torch.tensor(
                [1.0 if decay == 0.0 and j == t else (0.0 if decay == 0.0 else decay ** (t - j)) for j in seen]
            )
            expected = (w[:, None] * items[b, seen]).sum(0) / w.sum()
            expected = torch.nn.functional.layer_norm(expected, (DIM,))
            assert torch.allclose(out[b, t], expected, atol=1e-5), (b, t)


def test_mean_encoder_is_causal_a_later_item_never_changes_an_earlier_state():
    enc = MeanEncoder(DIM, max_len=5, decay=0.8)
    items = _items(1, 5)
    pad = torch.zeros(1, 5, dtype=torch.bool)
    changed = items.clone()
    changed[0, 4] = torch.randn(DIM, generator=torch.Generator().manual_seed(1)) * 5
    a, b = enc(items, pad), enc(changed, pad)
    assert torch.allclose(a[0, :4], b[0, :4]) and not torch.allclose(a[0, 4], b[0, 4])


def test_mean_encoder_refuses_a_decay_outside_0_1():
    with pytest.raises(ValueError, match="model.decay=1.5"):
        MeanEncoder(DIM, 5, decay=1.5)


def test_unknown_user_encoder_is_named():
    with pytest.raises(ValueError, match="model.user_encoder='gru'"):
        TextSeqRec(FrozenText(torch.zeros(NUM_ITEMS, TEXT_DIM)), NUM_ITEMS, dim=DIM, user_encoder="gru")


def test_mean_encoder_model_trains_under_dp_sgd_and_every_weight_moves():
    torch.manual_seed(0)
    text = torch.randn(NUM_ITEMS, TEXT_DIM)
    model = TextSeqRec(
        FrozenText(text), NUM_ITEMS, dim=DIM, max_len=10, item_bias=True, user_encoder="mean", decay=0.7, dropout=0.0
    )
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    # Only the item adapter, the final LayerNorm and the bias: no sequence-encoder weights.
    assert names == [
        "bias.weight",
        "item.proj.weight",
        "item.proj.bias",
        "item.norm.weight",
        "item.norm.bias",
        "user.norm.weight",
        "user.norm.bias",
    ]
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    rng = np.random.default_rng(0)
    seqs = [rng.choice(NUM_ITEMS, size=rng.integers(4, 12), replace=False) for _ in range(30)]
    train_local(
        model,
        seqs,
        NUM_ITEMS,
        epochs=1,
        batch_size=10,
        lr=1e-2,
        num_negatives=8,
        seed=0,
        dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0),
    )
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    ids, pad = left_pad(seqs[:3], 10)
    assert torch.isfinite(model.user_states(ids, pad)).all()
