"""What one run needs, built from the config: data, split, partition, item embeddings, model,
and each client's DP plan. Used alike by the ClientApp, the ServerApp and the baselines.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from omegaconf import DictConfig, OmegaConf

from common.data import load_dataset
from common.data.partition import partition_users
from common.data.split import leave_one_out
from common.data.types import InteractionData, LeaveOneOutSplit
from common.fairness.groups import FairnessGroups, fairness_groups
from common.model.item_encoder import encode_texts
from common.privacy.canaries import AuditInfo, audit_active, inject_audit

log = logging.getLogger("fedrec")


@dataclass
class RunData:
    data: InteractionData
    split: LeaveOneOutSplit
    partitions: list[np.ndarray]  # split-row indices per client
    item_text: np.ndarray  # [num_items, text_dim] frozen LM embeddings
    audit: AuditInfo | None = None  # canaries and held-out users when cfg.audit is active
    # Fairness groups over ALL users of the run, computed once so that every client and every
    # baseline uses the same activity threshold (see FairnessGroups for the deployment caveat).
    fairness: FairnessGroups | None = None

    @property
    def num_clients(self) -> int:
        return len(self.partitions)


def data_key(cfg: DictConfig) -> str:
    part = {k: cfg.get(k) for k in ("dataset", "partition", "seed")}
    if audit_active(cfg.get("audit")):  # canaries and held-out users change the data
        part["audit"] = cfg.audit
    part["model"] = {"name": cfg.model.name, "lm": cfg.model.get("lm")}
    part["cache_dir"] = cfg.get("cache_dir")
    return json.dumps(OmegaConf.to_container(OmegaConf.create(part), resolve=True), sort_keys=True)


def load_run_data(cfg: DictConfig) -> RunData:
    """Data, split, partition and embeddings for ``cfg``; cached per process, so a simulated
    client reuses them across rounds instead of re-reading and re-encoding."""
    return _load_run_data(data_key(cfg))


@lru_cache(maxsize=4)
def _load_run_data(key: str) -> RunData:
    cfg = OmegaConf.create(json.loads(key))
    ds = cfg.dataset
    extra = {k: v for k, v in ds.items() if k not in ("name", "path")}
    data = load_dataset(ds.name, ds.get("path"), **extra)
    split = leave_one_out(data)
    p = cfg.partition
    partitions = partition_users(
        split,
        scheme=p.scheme,
        num_clients=p.get("num_clients"),
        seed=cfg.seed,
        attributes=data.user_attributes,
        attribute=p.get("attribute"),
        alpha=p.get("alpha", 0.5),
        num_clusters=p.get("num_clusters", 10),
    )
    audit = None
    if audit_active(cfg.get("audit")):
        a = cfg.audit
        data, split, partitions, audit = inject_audit(
            data,
            split,
            partitions,
            int(a.canaries),
            int(a.canary_length),
            float(a.holdout),
            int(a.seed),
            p.scheme == "cross_device",
        )
    lm = cfg.model.get("lm")
    if lm is None:  # model=causal_lora reads item text in its prompts, not as embeddings
        text = np.zeros((data.num_items, 0), dtype=np.float32)
    else:
        text = encode_texts(data.item_text, lm.path, lm.max_length, lm.batch_size, cfg.get("cache_dir"))
    log.info(
        "data %s: %d users (%d dropped with < 3 interactions), %d items, %d clients",
        data.name,
        split.num_users,
        split.stats.get("users_dropped", 0),
        data.num_items,
        len(partitions),
    )
    return RunData(data, split, partitions, text, audit, fairness_groups(split, data.user_attributes))


def training_sequences(split: LeaveOneOutSplit, rows: np.ndarray) -> list[np.ndarray]:
    return [split.train[r] for r in rows]
