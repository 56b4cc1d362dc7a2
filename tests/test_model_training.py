"""The adapter trains with and without DP-SGD, only through per-user work, and round-trips."""

import numpy as np
import pytest
import torch

from common.data.types import LeaveOneOutSplit
from common.evaluation import evaluate_users
from common.metrics.ranking import MetricSums
from common.model.recommender import FrozenText, TextSeqRec
from common.privacy.dp_sgd import DPSettings
from common.serialization import get_weights, load_adapter, save_adapter, set_weights
from common.training.local import left_pad, sample_rate, steps_per_epoch, train_local

NUM_ITEMS, TEXT_DIM = 60, 16


def _sequences(n_users: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(NUM_ITEMS, size=rng.integers(4, 20), replace=False) for _ in range(n_users)]


TEXT = torch.randn(NUM_ITEMS, TEXT_DIM, generator=torch.Generator().manual_seed(1))


def _model(item_ids: bool = False, dim: int = 16, seed: int = 0, item_bias: bool = True) -> TextSeqRec:
    torch.manual_seed(seed)
    return TextSeqRec(
        FrozenText(TEXT), NUM_ITEMS, dim=dim, max_len=10, item_ids=item_ids, item_bias=item_bias, dropout=0.0
    )


def test_left_pad_keeps_the_most_recent_items_at_the_end():
    ids, pad = left_pad([np.array([1, 2, 3, 4, 5]), np.array([7])], 3)
    assert ids.tolist() == [[3, 4, 5], [0, 0, 7]]
    assert pad.tolist() == [[False, False, False], [True, True, False]]


def test_sample_rate_matches_opacus_loader_length():
    assert steps_per_epoch(94, 32) == 3 and sample_rate(94, 32) == pytest.approx(1 / 3)
    assert sample_rate(10, 32) == 1.0


@pytest.mark.parametrize("item_ids, item_bias", [(False, False), (True, True)])
def test_every_adapter_weight_changes_after_a_dp_step(item_ids, item_bias):
    model = _model(item_ids, item_bias=item_bias)
    before = [w.copy() for w in get_weights(model)]
    out = train_local(
        model,
        _sequences(40),
        NUM_ITEMS,
        epochs=1,
        batch_size=10,
        lr=1e-2,
        num_negatives=8,
        seed=0,
        dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0),
    )
    assert out["steps"] == 4
    after = get_weights(model)
    changed = [not np.array_equal(a, b) for a, b in zip(before, after)]
    assert all(changed), f"unchanged tensors: {[i for i, c in enumerate(changed) if not c]}"
    # Opacus hooks are gone: the plain model still runs a forward/backward.
    assert not hasattr(model, "_forward_counter")


def test_dp_noise_makes_updates_differ_and_training_reduces_loss_without_dp():
    seqs = _sequences(60)
    a, b = _model(), _model()
    train_local(a, seqs, NUM_ITEMS, 1, 20, 1e-2, 8, seed=0, dp=DPSettings(5.0, 1.0))
    train_local(b, seqs, NUM_ITEMS, 1, 20, 1e-2, 8, seed=1, dp=DPSettings(5.0, 1.0))
    assert any(not np.allclose(x, y) for x, y in zip(get_weights(a), get_weights(b)))
    m = _model()
    first = train_local(m, seqs, NUM_ITEMS, 1, 20, 1e-2, 8, seed=0)["loss"]
    later = train_local(m, seqs, NUM_ITEMS, 10, 20, 1e-2, 8, seed=1)["loss"]
    assert later < first


def test_poisson_sampling_survives_empty_batches():
    # q = 1/3 over 3 users: about 30% of the batches are empty.
    model = _model()
    out = train_local(
        model,
        _sequences(3),
        NUM_ITEMS,
        epochs=10,
        batch_size=1,
        lr=1e-2,
        num_negatives=4,
        seed=0,
        dp=DPSettings(1.0, 1.0),
    )
    assert out["steps"] == 30
    assert all(np.isfinite(w).all() for w in get_weights(model))


def test_weights_and_adapter_files_round_trip(tmp_path):
    src, dst = _model(item_ids=True), _model(item_ids=True, seed=5)
    set_weights(dst, get_weights(src))
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(src), get_weights(dst)))
    save_adapter(src, {"dim": 16}, tmp_path / "adapter")
    fresh = _model(item_ids=True, seed=6)
    assert load_adapter(fresh, tmp_path / "adapter") == {"dim": 16}
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(src), get_weights(fresh)))
    with pytest.raises(ValueError, match="shape"):
        set_weights(_model(item_ids=True, dim=8), get_weights(src))


def test_federated_evaluation_equals_centralized_evaluation():
    seqs = _sequences(50, seed=3)
    split = LeaveOneOutSplit(
        users=np.arange(50),
        train=[s[:-2] for s in seqs],
        valid=np.array([s[-2] for s in seqs]),
        test=np.array([s[-1] for s in seqs]),
        num_items=NUM_ITEMS,
    )
    model = _model()
    train_local(model, split.train, NUM_ITEMS, 2, 10, 1e-2, 8, seed=0)
    rows = np.arange(50)
    central = evaluate_users(model, split, rows, "test", 20, seed=7).means()
    parts = [rows[:7], rows[7:30], rows[30:]]
    merged = MetricSums.aggregate(evaluate_users(model, split, p, "test", 20, seed=7).to_dict() for p in parts).means()
    assert merged.keys() == central.keys()
    for k in central:
        assert merged[k] == pytest.approx(central[k], abs=1e-12), k


def test_opacus_per_user_gradients_equal_single_user_autograd():
    """Clipping is only as good as the per-sample gradients: compare Opacus' hooks on the
    whole model (attention, masks, shared item adapter, bias) to one backward per user."""
    from opacus import GradSampleModule

    model = _model(item_ids=True)
    seqs = _sequences(3, seed=4)
    inp, pad = left_pad([s[:-1] for s in seqs], 10)
    tgt, tgt_pad = left_pad([s[1:] for s in seqs], 10)
    neg = torch.randint(0, NUM_ITEMS, (3, 6), generator=torch.Generator().manual_seed(0))

    def loss_of(net, rows):
        pos, negs = net(inp[rows], pad[rows], tgt[rows], neg[rows])
        logits = torch.cat([pos.unsqueeze(-1), negs], -1)
        nll = -torch.log_softmax(logits, -1)[..., 0] * (~tgt_pad[rows]).float()
        return nll.sum()

    expected = []
    for b in range(3):
        model.zero_grad()
        loss_of(model, [b]).backward()
        expected.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    gsm = GradSampleModule(model, loss_reduction="sum")
    gsm.zero_grad()
    loss_of(gsm, [0, 1, 2]).backward()
    for name, p in model.named_parameters():
        for b in range(3):
            want = expected[b].get(name, torch.zeros_like(p))
            assert torch.allclose(p.grad_sample[b], want, atol=1e-5), (name, b)
    gsm._close()


def test_training_reports_the_mechanism_opacus_accounted():
    model = _model()
    out = train_local(
        model,
        _sequences(40),
        NUM_ITEMS,
        epochs=2,
        batch_size=10,
        lr=1e-2,
        num_negatives=4,
        seed=0,
        dp=DPSettings(1.3, 1.0),
    )
    # One entry per step: σ and q exactly as planned (q = 1/ceil(40/10)), 8 steps in all.
    assert sum(steps for _, _, steps in out["history"]) == out["steps"] == 8
    assert {(noise, q) for noise, q, _ in out["history"]} == {(1.3, 0.25)}


def test_dp_noise_is_unpredictable_unless_explicitly_seeded():
    seqs = _sequences(30)
    runs = {}
    for name, seed in [("a", None), ("b", None), ("c", 7), ("d", 7)]:
        m = _model()
        train_local(m, seqs, NUM_ITEMS, 1, 10, 1e-2, 4, seed=0, dp=DPSettings(1.0, 1.0, noise_seed=seed))
        runs[name] = get_weights(m)
    same = lambda x, y: all(np.array_equal(a, b) for a, b in zip(runs[x], runs[y]))  # noqa: E731
    assert not same("a", "b"), "same config, OS-entropy noise: the updates must differ"
    assert same("c", "d"), "an explicit noise seed reproduces the run"


def test_same_seed_trains_the_same_model_with_dropout():
    seqs = _sequences(30)
    start = get_weights(_model())
    runs = []
    for _ in range(2):
        m = TextSeqRec(FrozenText(TEXT), NUM_ITEMS, dim=16, max_len=10, dropout=0.3, item_bias=True)
        set_weights(m, start)
        torch.manual_seed(123 + len(runs))  # a different global RNG state each time
        train_local(m, seqs, NUM_ITEMS, 2, 10, 1e-2, 4, seed=5)
        runs.append(get_weights(m))
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("users", [32 * 93, 32 * 99 - 5, 32 * 3, 7])
def test_planned_steps_per_epoch_are_the_steps_opacus_takes(users):
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    from common.training.local import sample_rate, steps_per_epoch

    q = sample_rate(users, 32)
    assert steps_per_epoch(users, 32) == len(UniformWithReplacementSampler(num_samples=users, sample_rate=q))
