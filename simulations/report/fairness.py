"""The fairness part of ``fedrec report`` (see :mod:`simulations.report`): per-run values read
from summary.json's ``fairness`` block (:func:`common.fairness.groups.fairness_block`), the
columns of results.csv and the report's "Fairness" table.

Older summaries have only ``fairness.clients`` (or nothing): their values are None, shown "-".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from simulations.report.format import fmt

if TYPE_CHECKING:
    from simulations.report.runs import Run

ACTIVITY = "activity"  # the activity grouping of common.fairness.groups (ACTIVITY), not an attribute
FAIR_METRIC = "ndcg@10"  # the fairness block has NDCG@10 and HR@10 per group; the report shows NDCG@10
# results.csv column -> path in summary.json's fairness block
PATHS = {
    "activity_adv_ndcg@10": ("users", ACTIVITY, "advantaged", FAIR_METRIC),
    "activity_dis_ndcg@10": ("users", ACTIVITY, "disadvantaged", FAIR_METRIC),
    "activity_gap_ndcg@10": ("users", ACTIVITY, "gap", FAIR_METRIC),
    "clients_worst10_ndcg@10": ("client_distribution", "worst10_mean"),
    "clients_gini_ndcg@10": ("client_distribution", "gini"),
    "coverage@10": ("items", "coverage@10"),
    "long_tail_share@10": ("items", "long_tail_share@10"),
    "exposure_gini@10": ("items", "exposure_gini@10"),
}
WORST = ("worst_attribute", "worst_attribute_gap_ndcg@10")
RERANK = "rerank"  # summary fairness.rerank / metrics.rerank: the lists after UGF re-ranking


def _number(value: Any) -> float | None:
    """A finite number, else None (an empty group's mean is NaN in summary.json)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def worst_attribute(run: Run, block: tuple[str, ...] = ("fairness",)) -> tuple[str | None, float | None]:
    """The user attribute (gender, age…) whose best and worst groups differ most in NDCG@10."""
    users = run.get(*block, "users")
    attributes = [name for name in (users if isinstance(users, dict) else ()) if name != ACTIVITY]
    gaps = {name: _number(run.get(*block, "users", name, "gap", FAIR_METRIC)) for name in attributes}
    gaps = {name: gap for name, gap in gaps.items() if gap is not None}
    if not gaps:
        return None, None
    name = max(gaps, key=gaps.__getitem__)
    return name, gaps[name]


def fairness_values(run: Run) -> dict[str, Any]:
    """The fairness columns of one run (results.csv), None where the summary lacks them; with
    UGF re-ranking (eval.rerank) also the re-ranked lists' NDCG@10 and activity gap."""
    out: dict[str, Any] = {key: _number(run.get("fairness", *path)) for key, path in PATHS.items()}
    out.update(zip(WORST, worst_attribute(run)))
    out["rerank_ndcg@10"] = _number(run.get("metrics", RERANK, FAIR_METRIC))
    out["rerank_activity_gap_ndcg@10"] = _number(run.get("fairness", RERANK, *PATHS["activity_gap_ndcg@10"]))
    return out


def _rerank_values(run: Run) -> dict[str, Any]:
    """The table's values for the run's re-ranked lists (summary fairness.rerank)."""
    out: dict[str, Any] = {key: _number(run.get("fairness", RERANK, *path)) for key, path in PATHS.items()}
    out.update(zip(WORST, worst_attribute(run, ("fairness", RERANK))))
    return out


def column(key: str) -> Callable[[Run], float | None]:
    """Run -> its value of the results.csv column ``key`` (one of PATHS), as
    :func:`simulations.report.group_runs` takes it."""
    return lambda run: _number(run.get("fairness", *PATHS[key]))


def top_share(runs: list[Run]) -> str:
    """The share of advantaged users, as text ("5 %"): the runs' own when they agree, else the
    default of common.fairness.groups."""
    shares = {_number(r.get("fairness", "users", ACTIVITY, "top_share")) for r in runs} - {None}
    return f"{100 * shares.pop():g} %" if len(shares) == 1 else "5 %"


def fairness_blocks(runs: list[Run]) -> list[tuple[str, Any]]:
    """The "Fairness" section: a one-line explanation and one row per complete run."""
    complete = [r for r in runs if r.complete]
    if not complete:
        return []
    values = [fairness_values(r) for r in complete]
    if all(x is None for v in values for x in v.values()):
        return [
            ("h2", "Fairness"),
            (
                "p",
                "No run's summary.json has a fairness block beyond the per-client "
                "results (runs made before fairness existed).",
            ),
        ]
    head = [
        "run",
        "ε",
        "NDCG@10",
        "NDCG@10 advantaged",
        "NDCG@10 disadvantaged",
        "gap",
        "worst attribute gap",
        "clients worst-10 %",
        "clients Gini",
        "coverage@10",
        "long-tail share@10",
        "exposure Gini@10",
    ]
    users, rest = list(PATHS)[:3], list(PATHS)[3:]  # the activity columns, then clients and items

    def row(label: str, r: Run, v: dict[str, Any], ndcg: Any) -> list[str]:
        name, gap = (v[k] for k in WORST)
        worst = "-" if name is None else f"{name} {gap:.4f}"
        return [
            label,
            fmt(r.epsilon, ".2f"),
            fmt(_number(ndcg), ".4f"),
            *(fmt(v[k], ".4f") for k in users),
            worst,
            *(fmt(v[k], ".4f") for k in rest),
        ]

    rows = []
    for r, v in zip(complete, values):
        rows.append(row(r.label, r, v, r.get("metrics", "full", FAIR_METRIC)))
        if isinstance(r.get("fairness", RERANK), dict):
            rows.append(row(f"{r.label} + UGF re-rank", r, _rerank_values(r), r.get("metrics", RERANK, FAIR_METRIC)))
    note = (
        f"Advantaged users = the top {top_share(complete)} most active by training interactions (Li et al., "
        "WWW'21), disadvantaged = the rest; gap = advantaged − disadvantaged NDCG@10. Worst attribute gap = the "
        "largest best-minus-worst group NDCG@10 gap over the user attributes. Clients: mean NDCG@10 of the worst "
        "10 % of clients and the Gini of the clients' NDCG@10. Items: share of the items in some top-10 list "
        "(coverage), share of the top-10 slots given to the long tail (the 80 % least-interacted items in "
        "training), Gini of the items' top-10 exposure. \"+ UGF re-rank\" rows: the same run's lists after each "
        "client re-ranked its users' top-N to narrow the activity gap within a loss of expected NDCG@10 "
        "(eval.rerank). - = not in the run's summary.json (older run)."
    )
    return [("h2", "Fairness"), ("p", note), ("table", (head, rows))]
