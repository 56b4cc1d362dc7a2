"""The result table printed at the end of a run."""

from __future__ import annotations


def _fmt(value, spec: str) -> str:
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return format("-", f">{width}") if value is None else format(value, spec)


def format_table(rows: list[tuple[str, dict]]) -> str:
    """One line per (name, summary): full-ranking NDCG@10, HR@10, MRR, ε spent, s/round."""
    header = f"{'run':<22} {'NDCG@10':>8} {'HR@10':>8} {'MRR':>8} {'epsilon':>8} {'s/round':>8} {'users':>6}"
    lines = [header, "-" * len(header)]
    for name, s in rows:
        full = s["metrics"]["full"]
        eps = s["privacy"].get("epsilon_max")
        lines.append(
            f"{name:<22} {_fmt(full.get('ndcg@10'), '8.4f')} {_fmt(full.get('hr@10'), '8.4f')} "
            f"{_fmt(full.get('mrr'), '8.4f')} {_fmt(eps, '8.2f') if eps is not None else 'inf':>8} "
            f"{_fmt(s['timing'].get('seconds_per_round'), '8.1f')} {s.get('eval_users', 0):>6}"
        )
    return "\n".join(lines)


def protection_line(summary: dict) -> str:
    """Which guarantee the run had, in one line: noise placement, ε/δ, secure aggregation."""
    p = summary.get("privacy") or {}
    sa = summary.get("secure_aggregation")
    if p.get("enabled"):
        placement = p.get("noise_placement") or "local"
        prior = " + DP popularity prior" if (p.get("popularity_prior") or {}).get("released") else ""
        eps, delta = p.get("epsilon_max"), p.get("delta")
        spent = f"ε={eps:.2f}, δ={delta:.0e}" if eps is not None and delta is not None else "nothing spent yet"
        dp = f"user-level DP ({spent}), {placement} noise{prior}"
    else:
        dp = "no differential privacy"
    if sa:
        t, n = sa.get("threshold_clients"), sa.get("num_shares_clients")
        agg = f"{sa.get('protocol', 'secagg+').replace('secagg+', 'SecAgg+')} (server sees only the sum" + (
            f"; unmasks with {t} of {n} clients)" if t and n else ")"
        )
    else:
        agg = "plain FedAvg (server sees each client's update)" if summary.get("kind") == "federated" else None
    return "privacy: " + dp + (f"; aggregation: {agg}" if agg else "")
