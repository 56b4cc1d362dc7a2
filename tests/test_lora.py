"""model=lora on a tiny randomly initialised BERT written to a temp dir (no download)."""

import numpy as np
import pytest
import torch

from common.model.lora_text import LoraText, cached_lower_states
from common.model.recommender import TextSeqRec
from common.privacy.dp_sgd import DPSettings
from common.serialization import get_weights, load_adapter, save_adapter
from common.training.local import train_local

WORDS = "space rocket orbit galaxy cake bread oven sugar goal match team ball".split()


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(str(path))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(str(path))
    return str(path)


def _texts(n):
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=4)) for _ in range(n)]


def test_lower_layer_cache_is_exact_and_reused(tiny_lm, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    texts = _texts(5)
    states, mask = cached_lower_states(texts, tiny_lm, top_layers=1, max_length=8, cache_dir=tmp_path)
    lm = AutoModel.from_pretrained(tiny_lm).eval()
    enc = AutoTokenizer.from_pretrained(tiny_lm)(texts, padding="max_length", max_length=8, return_tensors="pt")
    with torch.no_grad():
        want = lm(**enc, output_hidden_states=True).hidden_states[1]
    assert np.allclose(states, want.numpy(), atol=1e-2)  # float16 on disk
    assert mask.tolist() == enc["attention_mask"].bool().tolist()
    assert len(list(tmp_path.glob("lower-*.npz"))) == 1
    again, _ = cached_lower_states(texts, tiny_lm, top_layers=1, max_length=8, cache_dir=tmp_path)
    assert np.array_equal(again, states)


def test_only_lora_and_adapter_weights_train_under_dp_and_round_trip(tiny_lm, tmp_path):
    n_items = 30
    states, mask = cached_lower_states(_texts(n_items), tiny_lm, 1, 8, cache_dir=tmp_path)
    torch.manual_seed(0)
    model = TextSeqRec(
        LoraText(tiny_lm, states, mask, top_layers=1, r=4, alpha=8),
        n_items,
        dim=16,
        max_len=8,
        dropout=0.0,
        item_bias=True,
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    lm_trainable = [n for n in trainable if n.startswith("item.text.")]
    assert lm_trainable and all("lora_" in n for n in lm_trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = [w.copy() for w in get_weights(model)]
    rng = np.random.default_rng(1)
    seqs = [rng.choice(n_items, size=6, replace=False) for _ in range(12)]
    out = train_local(model, seqs, n_items, 1, 6, 1e-2, 4, seed=0, dp=DPSettings(1.0, 1.0))
    assert out["steps"] == 2
    assert all(not np.array_equal(a, b) for a, b in zip(before, get_weights(model)))
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), f"frozen LM weight {n} changed"
    save_adapter(model, {"model": "lora"}, tmp_path / "adapter")
    torch.manual_seed(1)
    fresh = TextSeqRec(
        LoraText(tiny_lm, states, mask, top_layers=1, r=4, alpha=8),
        n_items,
        dim=16,
        max_len=8,
        dropout=0.0,
        item_bias=True,
    )
    load_adapter(fresh, tmp_path / "adapter")
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(model), get_weights(fresh)))
