"""Item text is encoded once by the bundled MiniLM and cached on disk."""

import numpy as np
import pytest

from common.model import item_encoder
from common.model.item_encoder import ModelPathError, encode_texts, resolve_lm_path


def test_items_are_encoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    texts = ["Toy Story (1995). Genres: Animation, Comedy", "Heat (1995). Genres: Action, Crime"]
    first = encode_texts(texts, cache_dir=tmp_path)
    assert first.shape == (2, 384) and np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert len(list(tmp_path.glob("items-*.npy"))) == 1

    def no_lm(*args, **kwargs):
        raise AssertionError("the language model ran again instead of using the cache")

    monkeypatch.setattr(item_encoder, "_run_lm", no_lm)
    assert np.array_equal(encode_texts(texts, cache_dir=tmp_path), first)
    # A changed catalogue is a new cache entry, never a stale hit.
    with pytest.raises(AssertionError, match="ran again"):
        encode_texts([*texts, "Casino (1995). Genres: Drama"], cache_dir=tmp_path)


def test_a_model_path_that_does_not_exist_is_named_in_the_error(tmp_path):
    with pytest.raises(ModelPathError, match=str(tmp_path / "nope")):
        resolve_lm_path(str(tmp_path / "nope"))
    assert (resolve_lm_path(None) / "config.json").is_file()
