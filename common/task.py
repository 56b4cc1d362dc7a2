"""What one run needs, built from the config: data, split, partition, item embeddings, model,
and each client's DP plan. Used alike by the ClientApp, the ServerApp and the baselines.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from common.data import load_dataset
from common.data.partition import partition_users
from common.data.split import leave_one_out
from common.data.types import InteractionData, LeaveOneOutSplit
from common.fairness_eval import FairnessGroups, fairness_groups
from common.model.item_encoder import encode_texts
from common.model.recommender import FrozenText, TextSeqRec
from common.privacy.accounting import PrivacyConfigError, check_delta, noise_multiplier_for_plan
from common.privacy.audit import AuditInfo, audit_active, inject_audit
from common.secure_aggregation import check_secagg, check_secagg_round
from common.training import DPSettings, sample_rate, steps_per_epoch, trainable_sequences

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


def _data_key(cfg: DictConfig) -> str:
    part = {k: cfg.get(k) for k in ("dataset", "partition", "seed")}
    if audit_active(cfg.get("audit")):  # canaries and held-out users change the data
        part["audit"] = cfg.audit
    part["model"] = {"name": cfg.model.name, "lm": cfg.model.get("lm")}
    part["cache_dir"] = cfg.get("cache_dir")
    return json.dumps(OmegaConf.to_container(OmegaConf.create(part), resolve=True), sort_keys=True)


def load_run_data(cfg: DictConfig) -> RunData:
    """Data, split, partition and embeddings for ``cfg``; cached per process, so a simulated
    client reuses them across rounds instead of re-reading and re-encoding."""
    return _load_run_data(_data_key(cfg))


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
        data, split, partitions, audit = inject_audit(data, split, partitions, int(a.canaries), int(a.canary_length),
                                                      float(a.holdout), int(a.seed), p.scheme == "cross_device")  # fmt: skip
    lm = cfg.model.get("lm")
    if lm is None:  # model=causal_lora reads item text in its prompts, not as embeddings
        text = np.zeros((data.num_items, 0), dtype=np.float32)
    else:
        text = encode_texts(data.item_text, lm.path, lm.max_length, lm.batch_size, cfg.get("cache_dir"))
    log.info(
        "data %s: %d users (%d dropped with < 3 interactions), %d items, %d clients",
        data.name, split.num_users, split.stats.get("users_dropped", 0), data.num_items, len(partitions),
    )  # fmt: skip
    return RunData(data, split, partitions, text, audit, fairness_groups(split, data.user_attributes))


def build_model(cfg: DictConfig, run: RunData) -> TextSeqRec:
    """The recommender for ``cfg.model``, initialised identically by every party (seeded)."""
    # A private RNG for initialisation: re-seeding torch's global RNG would make every later
    # global draw predictable from the config.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _build_model(cfg, run)


def _build_model(cfg: DictConfig, run: RunData) -> TextSeqRec:
    m = cfg.model
    if m.name == "causal_lora":
        from common.causal_task import build_causal_model

        return build_causal_model(cfg)
    if m.name == "projection":
        text = FrozenText(torch.as_tensor(run.item_text)) if m.get("item_text", True) else None
    elif m.name == "lora":
        from common.model.lora_text import LoraText

        states, mask = _lower_states(cfg, run)
        text = LoraText(m.lm.path, states, mask, m.top_layers, m.lora_r, m.lora_alpha, tuple(m.lora_targets))
    else:
        raise ValueError(f"model={m.name!r}: known models are projection, lora, causal_lora")
    return TextSeqRec(
        text,
        num_items=run.data.num_items,
        dim=m.dim,
        max_len=m.max_len,
        layers=m.layers,
        heads=m.heads,
        dropout=m.dropout,
        item_ids=m.item_ids,
        item_bias=m.get("item_bias", False),
        user_encoder=m.get("user_encoder", "sasrec"),
        decay=float(m.get("decay", 1.0)),
    )


_LOWER: dict = {}


def _lower_states(cfg: DictConfig, run: RunData):
    """Lower-layer token states, read from the disk cache once per process."""
    from common.model.lora_text import cached_lower_states

    m = cfg.model
    key = (_data_key(cfg), m.top_layers, m.lm.max_length, m.lm.batch_size)
    if key not in _LOWER:
        _LOWER.clear()  # one catalogue at a time: the states are large
        _LOWER[key] = cached_lower_states(run.data.item_text, m.lm.path, m.top_layers, m.lm.max_length,
                                          m.lm.batch_size, cfg.get("cache_dir"))  # fmt: skip
    return _LOWER[key]


def adapter_config(cfg: DictConfig, run: RunData) -> dict:
    """What a reader needs to rebuild the model around a saved adapter."""
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "num_items": run.data.num_items,
        "text_dim": int(run.item_text.shape[1]),
        "dataset": run.data.name,
        "items_sha256": items_fingerprint(run.data.item_ids),
    }


def items_fingerprint(item_ids) -> str:
    """sha256 of the catalogue's item ids in index order: an adapter's item rows (ids, bias)
    mean nothing over another catalogue, even one of the same size."""
    import hashlib

    return hashlib.sha256("\n".join(map(str, item_ids)).encode()).hexdigest()


def training_sequences(split: LeaveOneOutSplit, rows: np.ndarray) -> list[np.ndarray]:
    return [split.train[r] for r in rows]


def is_distributed(cfg: DictConfig) -> bool:
    """privacy.noise=distributed: pooled DP-SGD with noise shares under SecAgg+."""
    return bool(cfg.privacy.enabled and cfg.privacy.noise == "distributed")


def is_central(cfg: DictConfig) -> bool:
    """privacy.noise=central: DP-FedAvg, client-side clipping and server noise."""
    return bool(cfg.privacy.enabled and cfg.privacy.noise == "central")


def central_plan_for(cfg: DictConfig, run: RunData):
    from common.central_dp import central_plan

    n = run.num_clients
    delta = float(cfg.privacy.delta) if cfg.privacy.delta is not None else default_delta(n)
    return central_plan(cfg, n, delta)


def learning_rate(cfg: DictConfig) -> float:
    """privacy.lr under DP-SGD when set, else train.lr (central DP trains without DP-SGD)."""
    if cfg.privacy.enabled and not is_central(cfg) and cfg.privacy.get("lr") is not None:
        return float(cfg.privacy.lr)
    return float(cfg.train.lr)


def default_delta(num_users: int) -> float:
    """The largest power of ten at or below 1/(10·users): comfortably under 1/users."""
    return 10.0 ** math.floor(math.log10(1.0 / (10.0 * num_users)))


def run_delta(cfg: DictConfig, num_users: int) -> float | None:
    if not cfg.privacy.enabled:
        return None
    return float(cfg.privacy.delta) if cfg.privacy.delta is not None else default_delta(num_users)


@dataclass(frozen=True)
class ClientPlan:
    """One client's DP-SGD plan: fixed before training, never recomputed per round."""

    num_users: int
    sample_rate: float
    steps_per_round: int
    total_steps: int
    delta: float
    dp: DPSettings

    def to_dict(self) -> dict:
        """Flat scalars, to keep the plan in a Flower ConfigRecord."""
        return {
            "num_users": self.num_users, "sample_rate": self.sample_rate,
            "steps_per_round": self.steps_per_round, "total_steps": self.total_steps,
            "delta": self.delta, "noise_multiplier": self.dp.noise_multiplier,
            "max_grad_norm": self.dp.max_grad_norm, "secure_mode": self.dp.secure_mode,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> "ClientPlan":
        dp = DPSettings(float(d["noise_multiplier"]), float(d["max_grad_norm"]), bool(d["secure_mode"]))
        return cls(int(d["num_users"]), float(d["sample_rate"]), int(d["steps_per_round"]),
                   int(d["total_steps"]), float(d["delta"]), dp)  # fmt: skip


def client_plan(
    cfg: DictConfig, num_users: int, total_users: int, rounds: int, epochs_per_round: int
) -> ClientPlan:
    """The noise multiplier that spends exactly ``privacy.epsilon`` over the whole plan
    (every round the client could be sampled in × local steps). Raises PrivacyConfigError for
    a δ too large for the client's users or an ε no noise level reaches."""
    delta = run_delta(cfg, total_users)
    # δ bounds the chance the guarantee fails for any of the users protected: all of them.
    check_delta(delta, total_users)
    if cfg.privacy.secure_mode:
        _require_csprng()
    if num_users < 1:
        raise PrivacyConfigError("a client has no user with at least 2 training items to train on")
    per_round = epochs_per_round * steps_per_epoch(num_users, cfg.train.batch_size)
    total = per_round * rounds
    q = sample_rate(num_users, cfg.train.batch_size)
    sigma = _noise_multiplier(float(cfg.privacy.epsilon), delta, q, total, cfg.privacy.accountant)
    dp = DPSettings(sigma, float(cfg.privacy.max_grad_norm), bool(cfg.privacy.secure_mode))
    return ClientPlan(num_users, q, per_round, total, delta, dp)


def _require_csprng() -> None:
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        raise PrivacyConfigError(
            "privacy.secure_mode=true needs the torchcsprng package, which has no release for "
            "torch 2.13; leave it false (noise is then seeded from OS entropy, see README)"
        ) from None


@lru_cache(maxsize=256)
def _noise_multiplier(epsilon: float, delta: float, q: float, steps: int, accountant: str) -> float:
    # The search takes seconds; clients of equal size share one plan.
    return noise_multiplier_for_plan(epsilon, delta, q, steps, accountant)


def check_plans(cfg: DictConfig, run: RunData) -> None:
    """Refuse a bad δ, an unreachable ε, or privacy or secure-aggregation settings that
    cannot work, before any training."""
    check_secagg(cfg)
    check_strategy(cfg)
    check_placement(cfg)
    if is_distributed(cfg):
        pooled_plan(cfg, run)
    elif is_central(cfg):
        central_plan_for(cfg, run)
        if cfg.secagg.enabled and cfg.privacy.max_grad_norm > cfg.secagg.clipping_range:
            raise PrivacyConfigError(
                f"privacy.max_grad_norm={cfg.privacy.max_grad_norm} (the update clip) exceeds "
                f"secagg.clipping_range={cfg.secagg.clipping_range}"
            )
    elif cfg.privacy.enabled:
        for client in range(run.num_clients):
            federated_plan(cfg, run, client)
    check_secagg_round(cfg, run.num_clients)


def check_placement(cfg: DictConfig) -> None:
    """Settings that only one noise placement can carry out."""
    prior = float(cfg.privacy.get("popularity_prior") or 0.0)
    if prior and not is_distributed(cfg):
        raise PrivacyConfigError(f"privacy.popularity_prior={prior} needs privacy.noise=distributed (its counts are "
                                 "released through the distributed noise's secure sum); set "
                                 "privacy.popularity_prior=0")  # fmt: skip
    if cfg.partition.scheme == "cross_device" and cfg.secagg.enabled and cfg.secagg.num_shares == 1.0:
        raise PrivacyConfigError("partition=cross_device with secagg=secaggplus and secagg.num_shares=1.0: key "
                                 "agreement between every pair of one-user clients grows with the square of the "
                                 "users; add secagg=none (DP-FedAvg's server noise gives user-level DP here) or "
                                 "secagg.num_shares=K")  # fmt: skip


def check_strategy(cfg: DictConfig) -> None:
    """q-FedAvg re-weights each client's own update, which secure aggregation hides and the
    central/distributed DP mechanisms' sensitivity analysis does not cover."""
    s = cfg.strategy
    if s.name != "qfedavg":
        return
    if not (0 <= float(s.q) < math.inf and 0 < float(s.qffl_lr) < math.inf):
        raise ValueError(f"strategy.q={s.q} must be finite and >= 0, strategy.qffl_lr={s.qffl_lr} finite and > 0")
    if cfg.secagg.enabled:
        raise ValueError("strategy=qfedavg needs each client's update; secagg=secaggplus shows the server only the "
                         "sum: add secagg=none")  # fmt: skip
    if is_central(cfg) or is_distributed(cfg):
        raise ValueError(f"strategy=qfedavg with privacy.noise={cfg.privacy.noise}: its noise is sized for equal "
                         "client weights; use privacy.noise=local")  # fmt: skip


_POOLED: dict = {}


def pooled_plan(cfg: DictConfig, run: RunData):
    """The federation-wide DP-SGD plan of privacy.noise=distributed (cached per process)."""
    from common.distributed_dp import distributed_plan

    key = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True, default=str)
    if key not in _POOLED:
        total = run.split.num_users
        params = sum(p.numel() for p in build_model(cfg, run).parameters() if p.requires_grad)
        largest = max(len(trainable_sequences(training_sequences(run.split, rows))) for rows in run.partitions)
        _POOLED[key] = distributed_plan(cfg, total, run.num_clients, run_delta(cfg, total), params,
                                        run.data.num_items, largest)  # fmt: skip
    return _POOLED[key]


def federated_plan(cfg: DictConfig, run: RunData, client: int) -> ClientPlan:
    """Client ``client``'s plan in a federated run: every round × strategy.local_epochs."""
    if cfg.partition.scheme == "cross_device":
        raise PrivacyConfigError(
            "privacy=dp with partition=cross_device: local DP-SGD on a one-user client protects "
            "single interactions, not users; use privacy.noise=central (DP-FedAvg) for "
            "user-level DP there"
        )
    users = len(trainable_sequences(training_sequences(run.split, run.partitions[client])))
    return client_plan(
        cfg,
        users,
        run.split.num_users,
        cfg.strategy.num_rounds,
        cfg.strategy.local_epochs,
    )
