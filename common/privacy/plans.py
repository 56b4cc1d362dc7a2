"""Every party's DP plan, fixed before training: the noise placement, δ, each client's DP-SGD plan
(local noise), the federation's pooled plan (distributed noise) and DP-FedAvg's (central).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

from omegaconf import DictConfig, OmegaConf

from common.data.run import RunData, training_sequences
from common.model.factory import build_model
from common.privacy.accounting import PrivacyConfigError, check_delta, noise_multiplier_for_plan
from common.privacy.dp_sgd import DPSettings
from common.privacy.placements import placement_of
from common.training.local import sample_rate, steps_per_epoch, trainable_sequences


def is_distributed(cfg: DictConfig) -> bool:
    """A pooled DP-SGD step per round with noise shares under SecAgg+ (privacy.noise=distributed)."""
    placement = placement_of(cfg)
    return bool(placement and placement.pooled_step)


def is_central(cfg: DictConfig) -> bool:
    """DP-FedAvg: client-side clipping and server noise (privacy.noise=central)."""
    placement = placement_of(cfg)
    return bool(placement and placement.server_noise)


def central_plan_for(cfg: DictConfig, run: RunData):
    from common.privacy.central import central_plan

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
            "num_users": self.num_users,
            "sample_rate": self.sample_rate,
            "steps_per_round": self.steps_per_round,
            "total_steps": self.total_steps,
            "delta": self.delta,
            "noise_multiplier": self.dp.noise_multiplier,
            "max_grad_norm": self.dp.max_grad_norm,
            "secure_mode": self.dp.secure_mode,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ClientPlan":
        dp = DPSettings(float(d["noise_multiplier"]), float(d["max_grad_norm"]), bool(d["secure_mode"]))
        return cls(
            int(d["num_users"]),
            float(d["sample_rate"]),
            int(d["steps_per_round"]),
            int(d["total_steps"]),
            float(d["delta"]),
            dp,
        )


def client_plan(cfg: DictConfig, num_users: int, total_users: int, rounds: int, epochs_per_round: int) -> ClientPlan:
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


_POOLED: dict = {}


def pooled_plan(cfg: DictConfig, run: RunData):
    """The federation-wide DP-SGD plan of privacy.noise=distributed (cached per process)."""
    from common.privacy.distributed import distributed_plan

    key = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True, default=str)
    if key not in _POOLED:
        total = run.split.num_users
        params = sum(p.numel() for p in build_model(cfg, run).parameters() if p.requires_grad)
        largest = max(len(trainable_sequences(training_sequences(run.split, rows))) for rows in run.partitions)
        _POOLED[key] = distributed_plan(
            cfg, total, run.num_clients, run_delta(cfg, total), params, run.data.num_items, largest
        )
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
