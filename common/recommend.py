"""Top-K recommendations for one user from a trained run's adapter (``fedrec recommend``).

A run folder holds ``adapter/`` (``adapter_model.safetensors`` + ``adapter_config.json``, with
the model block, ``num_items``, ``text_dim`` and the data set's name) and ``config.yaml`` (the
resolved config). :class:`Recommender` loads the data with the run's own ``dataset`` block
(``data_dir`` overrides ``dataset.path``; ``dataset=synthetic`` is regenerated from its block
and takes no folder), encodes the item texts with the same cached encoder, rebuilds the model
and loads the adapter — once; ``.recommend(user_id, k)`` then scores every item for the
user's most recent ``model.max_len`` interactions and leaves out every item the user has ever
interacted with (train + valid + test: a recommendation at serving time is for the future).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from common.data import load_dataset
from common.data.catalogue import items_fingerprint
from common.device import resolve_device
from common.metrics.ranking import rankable
from common.model.item_encoder import encode_texts
from common.serialization import load_adapter

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


class RecommendError(ValueError):
    """A request or a run folder we cannot serve; the message is one line."""


def resolve_adapter_dir(path: str | Path) -> tuple[Path, Path]:
    """(adapter folder, run folder) for either a run folder or its ``adapter/`` subfolder."""
    path = Path(path).expanduser()
    for adapter in (path / "adapter", path):
        if all((adapter / f).is_file() for f in ADAPTER_FILES):
            return adapter, adapter.parent
    raise RecommendError(f"{path}: no trained adapter ({' + '.join(ADAPTER_FILES)}) here or in {path / 'adapter'}")


def _run_config(run_dir: Path, adapter_dir: Path) -> DictConfig:
    for cfg_path in (run_dir / "config.yaml", adapter_dir / "config.yaml"):
        if cfg_path.is_file():
            return OmegaConf.load(cfg_path)
    raise RecommendError(f"{run_dir}: no config.yaml next to the adapter (pass the run folder's config instead)")


def _data_label(cfg: DictConfig) -> str:
    path = cfg.dataset.get("path")
    return str(path) if path else f"dataset={cfg.dataset.name} (generated, no folder)"


class Recommender:
    """A trained adapter loaded once, serving ``.recommend(user_id, k)`` many times.

    ``data`` is the data folder (overrides the run's ``dataset.path``; must be None for
    ``dataset=synthetic``, which needs no files), or a config (DictConfig/dict) whose
    keys (e.g. ``dataset``, ``cache_dir``) replace the run's own — a bare dataset block is
    accepted too — or None for the run's own data.
    """

    def __init__(
        self, adapter_dir: str | Path, data: str | Path | Mapping | None = None, device: str | None = None
    ) -> None:
        self.adapter_dir, run_dir = resolve_adapter_dir(adapter_dir)
        cfg = _run_config(run_dir, self.adapter_dir)
        if isinstance(data, Mapping):
            given = data if isinstance(data, DictConfig) else OmegaConf.create(dict(data))
            if "dataset" not in given and "name" in given:  # a bare dataset block
                given = OmegaConf.create({"dataset": given})
            cfg = OmegaConf.merge(cfg, given)
        elif data is not None:
            if cfg.dataset.name == "synthetic":
                raise RecommendError(
                    f"the run used dataset=synthetic, which is generated and has no folder: leave out the data "
                    f"folder (got {data})"
                )
            cfg.dataset.path = str(Path(data).expanduser().resolve())
        ds = cfg.dataset
        extra = {k: v for k, v in ds.items() if k not in ("name", "path")}
        self.data = load_dataset(ds.name, ds.get("path"), **extra)
        self.data_label = _data_label(cfg)

        stored = json.loads((self.adapter_dir / "adapter_config.json").read_text())
        for key in ("model", "num_items", "text_dim"):
            if key not in stored:
                raise RecommendError(
                    f"{self.adapter_dir / 'adapter_config.json'}: no {key!r} (not a fedrec run adapter?)"
                )
        if self.data.num_items != int(stored["num_items"]):
            raise RecommendError(
                f"catalogue mismatch: the adapter was trained on {stored['num_items']} items "
                f"(dataset {stored.get('dataset')}), the data in {self.data_label} has {self.data.num_items}"
            )
        if "items_sha256" in stored and stored["items_sha256"] != items_fingerprint(self.data.item_ids):
            raise RecommendError(
                f"catalogue mismatch: the data in {self.data_label} has the adapter's {stored['num_items']} items "
                "but not the same item ids in the same order"
            )
        cfg.model = OmegaConf.create(stored["model"])  # the model exactly as the adapter was built
        lm = cfg.model.lm
        text = encode_texts(self.data.item_text, lm.path, lm.max_length, lm.batch_size, cfg.get("cache_dir"))
        if text.shape[1] != int(stored["text_dim"]):
            raise RecommendError(
                f"text-embedding mismatch: the adapter expects text_dim {stored['text_dim']}, "
                f"the item encoder {lm.path or 'all-MiniLM-L6-v2'} gives {text.shape[1]}"
            )
        self.cfg = cfg
        self.device = resolve_device(device if device is not None else cfg.get("device", "auto"))
        self.model = self._build(cfg, text)
        self.model.eval()
        with torch.no_grad():
            self.item_vectors = self.model.item_vectors(self.data.num_items)
            self.bias = self.model.item_bias(self.data.num_items)
        self._users = {u: i for i, u in enumerate(self.data.user_ids)}

    def _build(self, cfg: DictConfig, text: np.ndarray):
        from common.data.run import RunData
        from common.model.factory import build_model

        # build_model reads only the data and the item text; no split or partition is needed.
        run = RunData(data=self.data, split=None, partitions=[], item_text=text)
        model = build_model(cfg, run)
        try:
            load_adapter(model, self.adapter_dir)
        except ValueError as e:
            raise RecommendError(str(e).splitlines()[0]) from None
        return model.to(self.device)

    @property
    def num_items(self) -> int:
        return self.data.num_items

    def history(self, user_id: str) -> np.ndarray:
        """The user's whole interaction history (item indices, time order)."""
        u = self._users.get(str(user_id))
        if u is None:
            raise RecommendError(f"unknown user id {user_id!r}: not in the data of {self.data_label}")
        return self.data.sequences[u]

    @torch.no_grad()
    def scores(self, user_id: str) -> np.ndarray:
        """The model's score of every item for the user's next interaction."""
        from common.evaluation import user_scores

        hist = self.history(user_id)
        return user_scores(self.model, self.item_vectors, [hist], self.bias)[0].cpu().numpy()

    def recommend(self, user_id: str, k: int = 10) -> list[dict]:
        """Top-``k`` unseen items, best first: ``{"rank", "item_id", "text", "score"}``."""
        hist = self.history(user_id)
        seen = np.unique(hist)
        unseen = self.num_items - len(seen)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= unseen:
            raise RecommendError(
                f"k={k!r}: must be between 1 and {unseen} (the items user {user_id!r} has not interacted with)"
            )
        scores = rankable(self.scores(user_id)[None], [hist])[0]
        # Stable sort: equal scores keep catalogue order, so the answer is deterministic.
        top = np.argsort(-scores, kind="stable")[:k]
        return [
            {"rank": r + 1, "item_id": self.data.item_ids[i], "text": self.data.item_text[i], "score": float(scores[i])}
            for r, i in enumerate(top)
        ]


def recommend(
    adapter_dir: str | Path, data_dir_or_cfg: str | Path | Mapping | None, user_id: str, k: int = 10
) -> list[dict]:
    """One-off top-``k`` for ``user_id``; loads the model each call (use :class:`Recommender`
    to serve many requests)."""
    return Recommender(adapter_dir, data_dir_or_cfg).recommend(user_id, k)
