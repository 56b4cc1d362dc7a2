"""What the ServerApp writes when a run completes: the summary's privacy, secure-aggregation
and data blocks (the run's own figures; the shared format is common.tracking.summary)."""

from __future__ import annotations

from dataclasses import asdict

from common.deployment.node import deployment_data_block, is_deployment
from common.fairness.groups import fairness_block
from common.fairness.rerank_eval import add_rerank_block
from common.privacy.distributed import shares_needed
from common.privacy.ledger import central_row
from common.privacy.placements import placement_of
from common.tracking.summary import build_summary
from server.secure import max_weight
from server.strategy import RecommenderFedAvg


def secagg_summary(cfg, run, strategy: RecommenderFedAvg) -> dict | None:
    if not cfg.secagg.enabled:
        return None
    s = cfg.secagg
    return {
        "protocol": s.protocol,
        "num_shares": s.num_shares,
        "threshold": s.reconstruction_threshold,
        # As Flower resolves the fractions when every client shares with every other.
        "num_shares_clients": run.num_clients if s.num_shares == 1.0 else None,
        "threshold_clients": shares_needed(cfg, run.num_clients) if s.num_shares == 1.0 else None,
        "clipping_range": s.clipping_range,
        "quantization_range": s.quantization_range,
        "modulus_range": s.modulus_range,
        "max_weight": max_weight(cfg, run),
        "update_clip_norm": s.update_clip_norm,
        "rounds_completed": strategy.rounds_completed - len(strategy.rounds_failed),
        "rounds_failed": strategy.rounds_failed,
        "clients_dropped": strategy.clients_dropped,  # in rounds that completed
    }


def central_ledger(cfg, plan, resumes: int = 0):
    """The server's own ledger for DP-FedAvg, one row per round started (ledger format).
    Every resume counts one more release: the round in progress at the kill may already have
    sent its noisy aggregate to the clients, and the redone round releases another."""

    def row(rounds: int) -> dict:
        entry = asdict(
            central_row(rounds + resumes, plan.noise_multiplier, plan.sample_rate, plan.delta, cfg.privacy.accountant)
        )
        entry["round"] = rounds  # the round number; steps_total counts the resumes' releases too
        return entry

    return row


def central_privacy(cfg, plan, rounds: int, resumes: int = 0) -> dict:
    """The server's accountant for DP-FedAvg: every round that started counts, plus one
    possible release per resume (see central_ledger)."""
    r = central_ledger(cfg, plan, resumes)(rounds)
    eps = r["epsilon"]
    entry = {
        "epsilon": eps,
        "delta": plan.delta,
        "noise_multiplier": plan.noise_multiplier,
        "sample_rate": plan.sample_rate,
        "steps": rounds + resumes,
        "clipping_norm": plan.clipping_norm,
        "epsilon_check": r["epsilon_check"],
        "check_accountant": r["check_accountant"],
        "agree": r["agree"],
    }
    return {
        "unit": plan.unit,
        "delta": plan.delta,
        "epsilon_max": eps,
        "per_client": {"server": entry},
        "accountant": cfg.privacy.accountant,
    }


def mechanism(cfg) -> str:
    placement = placement_of(cfg)
    if placement is None:
        return "none"
    prior = " + dp popularity prior" if placement.pooled_step and cfg.privacy.get("popularity_prior") else ""
    return placement.mechanism + prior


def federated_summary(cfg, run, strategy: RecommenderFedAvg, adapter_bytes: int, seconds: float) -> dict:
    per_client = {str(k): v for k, v in sorted(strategy.client_privacy.items())}
    summary = build_summary(
        "federated",
        cfg,
        run,
        strategy.final_eval,
        per_client,
        mechanism(cfg),
        seconds,
        strategy.round_seconds,
        strategy.rounds_completed,
        bool(cfg.privacy.enabled),
    )
    clients = {str(k): v for k, v in sorted(strategy.client_eval.items())}
    fair = strategy.final_fairness
    summary["fairness"] = fairness_block(fair, clients, run.fairness) if fair is not None else {"clients": clients}
    if is_deployment(cfg):  # the server holds no users: what the clients reported
        summary["data"] = deployment_data_block(cfg, run, clients)
    add_rerank_block(
        summary,
        cfg.eval.get("rerank"),
        strategy.final_rerank_fairness,
        {str(k): v for k, v in sorted(strategy.client_rerank.items())},
        run.fairness,
    )
    summary["communication"] = {"adapter_bytes": adapter_bytes, "adapter_parameters": adapter_bytes // 4}
    summary["secure_aggregation"] = secagg_summary(cfg, run, strategy)
    summary["privacy"]["noise_placement"] = cfg.privacy.noise if cfg.privacy.enabled else None
    if strategy.prior is not None:
        p = strategy.prior
        summary["privacy"]["popularity_prior"] = {
            "share_of_epsilon": p.share,
            "noise_multiplier": p.noise_multiplier,
            "sensitivity": p.sensitivity,
            "released": not strategy.prior_pending,
        }
    return summary
