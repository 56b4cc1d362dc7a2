"""Refusals that need the run's data as well as its config: checked before anything trains or is written."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from common.data.run import RunData
from common.privacy.accounting import PrivacyConfigError
from common.privacy.plans import central_plan_for, federated_plan, is_central, is_distributed, pooled_plan
from common.secagg.protocol import check_secagg, check_secagg_round


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
        raise PrivacyConfigError(
            f"privacy.popularity_prior={prior} needs privacy.noise=distributed (its counts are "
            "released through the distributed noise's secure sum); set "
            "privacy.popularity_prior=0"
        )
    if cfg.partition.scheme == "cross_device" and cfg.secagg.enabled and cfg.secagg.num_shares == 1.0:
        raise PrivacyConfigError(
            "partition=cross_device with secagg=secaggplus and secagg.num_shares=1.0: key "
            "agreement between every pair of one-user clients grows with the square of the "
            "users; add secagg=none (DP-FedAvg's server noise gives user-level DP here) or "
            "secagg.num_shares=K"
        )


def check_strategy(cfg: DictConfig) -> None:
    """q-FedAvg re-weights each client's own update, which secure aggregation hides and the
    central/distributed DP mechanisms' sensitivity analysis does not cover."""
    s = cfg.strategy
    if s.name != "qfedavg":
        return
    if not (0 <= float(s.q) < math.inf and 0 < float(s.qffl_lr) < math.inf):
        raise ValueError(f"strategy.q={s.q} must be finite and >= 0, strategy.qffl_lr={s.qffl_lr} finite and > 0")
    if cfg.secagg.enabled:
        raise ValueError(
            "strategy=qfedavg needs each client's update; secagg=secaggplus shows the server only the "
            "sum: add secagg=none"
        )
    if is_central(cfg) or is_distributed(cfg):
        raise ValueError(
            f"strategy=qfedavg with privacy.noise={cfg.privacy.noise}: its noise is sized for equal "
            "client weights; use privacy.noise=local"
        )
