"""A run's summary.json: metrics split by protocol, timing, data statistics."""

from __future__ import annotations

from omegaconf import DictConfig


def split_metrics(means: dict[str, float]) -> dict[str, dict[str, float]]:
    """{"full": {...}, "sampled": {...}} from flat means with "sampled_" prefixes, plus
    "rerank" (the re-ranked lists' "rerank_" means) when eval.rerank is on."""
    out: dict[str, dict[str, float]] = {"full": {}, "sampled": {}}
    for k, v in means.items():
        prefix = next((p for p in ("sampled_", "rerank_") if k.startswith(p)), "")
        out.setdefault(prefix.rstrip("_") or "full", {})[k.removeprefix(prefix)] = v
    return out


def build_summary(
    kind: str,
    cfg: DictConfig,
    run,
    sums,
    per_client: dict[str, dict],
    mechanism: str,
    seconds: float,
    round_seconds: list[float],
    rounds: int,
    private: bool | None = None,
) -> dict:
    """The summary.json every run writes (the documented contract); callers add their own blocks.

    ``per_client`` maps a client (or "central"/"server") to its privacy entry with at least
    ``epsilon`` and ``delta``; ``private`` defaults to whether there is any entry."""
    eps = [v["epsilon"] for v in per_client.values()]
    private = bool(per_client) if private is None else private
    return {
        "kind": kind,
        "metrics": {**split_metrics(sums.means()), **_auc_metrics(sums)},
        "eval_users": sums.counts.get("", 0),
        "privacy": {
            "unit": "user",
            "enabled": private,
            "mechanism": mechanism,
            "accountant": cfg.privacy.accountant if private else None,
            "epsilon_target": cfg.privacy.epsilon if private else None,
            "delta": next(iter(per_client.values()))["delta"] if per_client else None,
            "epsilon_max": max(eps) if eps else None,
            "per_client": per_client,
        },
        "fairness": {},
        "timing": {
            "seconds_total": seconds,
            "seconds_per_round": sum(round_seconds) / len(round_seconds) if round_seconds else None,
            "rounds": rounds,
        },
        "data": data_block(run),
    }


def _auc_metrics(sums) -> dict:
    """model=causal_lora: ``metrics.auc`` (TALLRec protocol) from the pooled score histogram."""
    hist = getattr(sums, "auc", None)
    if hist is None:
        return {}
    return {
        "auc": hist.auc(),
        "auc_tie_bound": hist.tie_bound(),
        "auc_users": hist.count,
        "auc_positives": int(hist.pos.sum()),
    }


def data_block(run) -> dict:
    """The summary's ``data`` block: sizes, drops and the share of tied test timestamps."""
    s = run.split.stats
    return {
        "dataset": run.data.name,
        "users": run.split.num_users,
        "items": run.data.num_items,
        "interactions": int(sum(len(x) for x in run.data.sequences)),
        "users_dropped": int(s.get("users_dropped", 0)),
        "test_timestamp_tied_share": s.get("test_timestamp_tied_share"),
        "clients": run.num_clients,
        "client_users": [int(len(p)) for p in run.partitions],
    }
