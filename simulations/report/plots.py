"""The PNG plots of ``fedrec report`` (see :mod:`simulations.report`).

Each function draws one figure to ``path`` and returns None, or returns why it drew nothing.
"""

from __future__ import annotations

import math
import os
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator, NullFormatter  # noqa: E402

from simulations.report.fairness import column, top_share  # noqa: E402
from simulations.report.render import display_name as _name  # noqa: E402

if TYPE_CHECKING:
    from simulations.report.runs import Group, Run

DPI = 120
LOSS_LABEL = "training loss (sampled softmax, nats per user)"
ROUND_LABEL = "round (epoch for centralized/local baselines)"
# Activity group -> (its results.csv column, its line in group_ndcg_vs_epsilon): the marker
# tells the groups apart where only the dotted joins to ε = ∞ are drawn.
ACTIVITY_GROUPS = {
    "advantaged": ("activity_adv_ndcg@10", {"linestyle": "-", "marker": "o"}),
    "disadvantaged": ("activity_dis_ndcg@10", {"linestyle": "--", "marker": "s", "markerfacecolor": "white"}),
}


def _styles(n: int) -> list[dict]:
    # tab10 stays distinguishable; past 10 lines the line style changes instead of the shade.
    cmap = plt.get_cmap("tab10")
    return [{"color": cmap(i % 10), "linestyle": ("-", "--", "-.", ":")[i // 10 % 4]} for i in range(n)]


def _save(fig, path: Path) -> None:
    # bbox_inches="tight" keeps legends placed outside the axes inside the image.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def _legend(ax, entries: int) -> None:
    if entries > 6:
        # Below the axes: beside them, long labels would squeeze the plot to a sliver.
        ax.legend(fontsize=7 if entries > 10 else 8, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    else:
        ax.legend(fontsize=8, loc="best")


def _epsilon_axis(ax, finite: list[float]) -> float:
    """A log ε axis over the ``finite`` ε values with a separate ∞ (no DP) slot on the right;
    returns the x of that slot. Call before drawing: the x limits are fixed here."""
    lo, hi = min(finite), max(finite)
    x_inf = hi * 4  # a log-spaced gap, so the ∞ slot never touches the finite range
    ax.set_xscale("log")
    ax.set_xlim(lo / 2, x_inf * 1.6)
    ax.axvline(math.sqrt(hi * x_inf), color="0.8", linewidth=1)
    distinct = _tick_values(finite)
    # Few ε values (a sweep over 1,4,8): tick exactly those; many: a 1-2-5 series.
    series = [t * 10.0**e for e in range(-3, 5) for t in (1, 2, 5)]
    ticks = distinct if len(distinct) <= 8 else [t for t in series if lo <= t <= hi]
    ax.xaxis.set_major_locator(FixedLocator([*ticks, x_inf]))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticklabels([f"{t:g}" for t in ticks] + ["∞ (no DP)"])
    ax.set_xlabel("ε spent (largest over clients, at each run's δ; log scale)")
    ax.grid(True, which="major", alpha=0.3)
    return x_inf


def _epsilon_curve(ax, groups: list[Group], x_inf: float, label: str | None, marker: str = "o", **line) -> None:
    """One setting's groups: mean over seeds against ε with min–max bars; ε = ∞ at ``x_inf``,
    joined dotted (∞ is not on the scale of the finite points). ``line``: color, linestyle and
    more keywords of the line and its markers."""
    points = sorted(groups, key=lambda g: g.epsilon)
    xs = [x_inf if math.isinf(g.epsilon) else g.epsilon for g in points]
    ys = [g.mean for g in points]
    err = np.array([[g.mean - min(g.values) for g in points], [max(g.values) - g.mean for g in points]])
    fin = [i for i, x in enumerate(xs) if x != x_inf]
    if fin:
        ax.errorbar(
            [xs[i] for i in fin], [ys[i] for i in fin], yerr=err[:, fin], label=label, marker=marker, capsize=3, **line
        )
    if len(fin) < len(xs):
        ax.errorbar(
            [x_inf],
            [ys[-1]],
            yerr=err[:, -1:],
            marker=marker,
            capsize=3,
            **{**line, "linestyle": "none"},
            label=None if fin else label,
        )
        if fin:
            ax.plot([xs[fin[-1]], x_inf], [ys[fin[-1]], ys[-1]], color=line["color"], linestyle=":")


def utility_vs_epsilon(runs: list[Run], groups: list[Group], metric: str, path: Path) -> str | None:
    """Metric vs ε spent per setting; ε = ∞ at a separate slot on the right; popularity dashed."""
    if not groups:
        return f"no complete run reports {metric}"
    finite = [g.epsilon for g in groups if g.epsilon is not None and math.isfinite(g.epsilon)]
    if not finite:
        return "no run spent a finite ε (no differentially private run completed)"
    fig, ax = plt.subplots(figsize=(9, 5.5))
    x_inf = _epsilon_axis(ax, finite)
    curves = [g for g in groups if g.kind != "popularity" and g.epsilon is not None]
    settings = list(dict.fromkeys(g.setting for g in curves))
    for setting, line in zip(settings, _styles(len(settings))):
        _epsilon_curve(ax, [g for g in curves if g.setting == setting], x_inf, setting, **line)
    for g, color in zip((g for g in groups if g.kind == "popularity"), ["0.35", "0.55", "0.7"] * 10):
        ax.axhline(g.mean, color=color, linestyle="--", label=f"{g.name} (reference, no training)")
    ax.set_ylabel(f"{_name(metric, True)}, leave-one-out")
    ax.set_title(f"Privacy–utility trade-off: {_name(metric)} vs ε")
    _legend(ax, len(settings) + sum(g.kind == "popularity" for g in groups))
    fig.tight_layout()
    _save(fig, path)
    return None


def group_ndcg_vs_epsilon(runs: list[Run], groups: list[Group], metric: str, path: Path) -> str | None:
    """NDCG@10 of the advantaged (solid) and disadvantaged (dashed) users vs ε spent, one colour
    per setting, seeds averaged; beside it, for the settings with an ε = ∞ run, each group's
    NDCG@10 relative to its own value there (DP's disparate impact, Bagdasaryan et al. 2019)."""
    from simulations.report.runs import group_runs

    by_group = {
        name: [g for g in group_runs(runs, column(key)) if g.kind != "popularity" and g.epsilon is not None]
        for name, (key, _) in ACTIVITY_GROUPS.items()
    }
    if not any(by_group.values()):
        return "no run reports NDCG@10 per activity group (summary.json fairness.users.activity; older runs lack it)"
    finite = [g.epsilon for gs in by_group.values() for g in gs if math.isfinite(g.epsilon)]
    if not finite:
        return "no run with activity groups spent a finite ε (no differentially private run completed)"
    relative: dict[str, list[Group]] = {}
    for name, gs in by_group.items():
        base = {g.setting: g.mean for g in gs if math.isinf(g.epsilon) and g.mean > 0}
        relative[name] = [replace(g, values=[v / base[g.setting] for v in g.values]) for g in gs if g.setting in base]
    panels = 2 if any(relative.values()) else 1
    fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 5.5), squeeze=False)
    settings = list(dict.fromkeys(g.setting for gs in by_group.values() for g in gs))
    colors = [style["color"] for style in _styles(len(settings))]
    for ax, data in zip(axes[0], (by_group, relative)):
        x_inf = _epsilon_axis(ax, finite)
        for name, (_, style) in ACTIVITY_GROUPS.items():
            for setting, color in zip(settings, colors):
                points = [g for g in data[name] if g.setting == setting]
                label = setting if name == "advantaged" else None
                if points:
                    _epsilon_curve(ax, points, x_inf, label, color=color, **style)
    left, share = axes[0][0], top_share(runs)
    notes = {"advantaged": f"the top {share} most active", "disadvantaged": "the others"}
    for name, (_, style) in ACTIVITY_GROUPS.items():  # the line styles, once, first in the legend
        left.plot([], [], color="0.3", **style, label=f"{name} users ({notes[name]})")
    left.set_ylabel(f"{_name('ndcg@10', True)} of the user group, leave-one-out")
    left.set_title("NDCG@10 of advantaged vs disadvantaged users, vs ε")
    if panels == 2:
        right = axes[0][1]
        right.axhline(1.0, color="0.5", linewidth=1)
        right.set_ylabel("NDCG@10 / same group's NDCG@10 without DP")
        right.set_title("DP disparate impact: each group vs its own non-private result")
    fig.tight_layout()  # before the legend: one below the left panel would squash both panels
    _legend(left, len(settings) + len(ACTIVITY_GROUPS))
    _save(fig, path)
    return None


def metric_per_round(runs: list[Run], groups: list[Group], metric: str, path: Path) -> str | None:
    """Training loss per round and the metric per round for runs that evaluated more than once."""
    key = f"eval_{metric}"
    fig, (loss_ax, eval_ax) = plt.subplots(1, 2, figsize=(13, 5))
    drawn_loss, drawn_eval = 0, 0
    handles = {}
    for run, style in zip(runs, _styles(len(runs))):
        name = run.label + ("" if run.complete else " (incomplete)")
        loss, evals = _series(run.rows, "train_loss"), _series(run.rows, key)
        if loss:
            (handles[name],) = loss_ax.plot(*zip(*loss), marker=".", label=name, **style)
            drawn_loss += 1
        if len({x for x, _ in evals}) > 1:
            (handles[name],) = eval_ax.plot(*zip(*evals), marker=".", label=name, **style)
            drawn_eval += 1
    for ax, drawn, text in (
        (loss_ax, drawn_loss, "no training loss logged"),
        (eval_ax, drawn_eval, "evaluated only at the end"),
    ):
        ax.set_xlabel(ROUND_LABEL)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(True, alpha=0.3)
        if not drawn:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4", fontsize=12)
    loss_ax.set_ylabel(LOSS_LABEL)
    loss_ax.set_title("Training loss per round")
    eval_ax.set_ylabel(_name(metric, True))
    eval_ax.set_title(f"{_name(metric)} per evaluated round")
    fig.tight_layout()
    if handles:
        small = len(handles) > 10
        fig.legend(
            handles.values(),
            handles.keys(),
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=2 if len(handles) > 4 else 1,
            fontsize=7 if small else 8,
            frameon=False,
        )
    _save(fig, path)
    return None


def _series(rows: list[dict], key: str) -> list[tuple[float, float]]:
    ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    return sorted((r["round"], r[key]) for r in rows if ok(r.get("round")) and ok(r.get(key)))


def per_client(runs: list[Run], groups: list[Group], metric: str, path: Path) -> str | None:
    """One horizontal box per run over its clients' metric, with every client as a dot."""
    data = [(r, r.client_values(metric)) for r in runs if r.complete and r.client_values(metric)]
    if not data:
        return f"no run has per-client {metric} (summary.json fairness.clients)"
    # Horizontal boxes: long run labels read left to right instead of rotated.
    fig, ax = plt.subplots(figsize=(11, max(3.0, 0.6 * len(data) + 1.6)))
    positions = np.arange(1, len(data) + 1)
    ax.boxplot(
        [v for _, v in data],
        positions=positions,
        orientation="horizontal",
        widths=0.6,
        showfliers=False,
        medianprops={"color": "black"},
    )
    rng = np.random.default_rng(0)  # fixed jitter: the same report looks the same twice
    for pos, (run, values) in zip(positions, data):
        ax.scatter(values, pos + rng.uniform(-0.18, 0.18, len(values)), s=14, alpha=0.6, color="tab:blue", zorder=3)
    overall = [(p, r.metric(metric)) for p, (r, _) in zip(positions, data) if r.metric(metric) is not None]
    if overall:
        ax.scatter(
            [v for _, v in overall],
            [p for p, _ in overall],
            marker="D",
            s=40,
            color="tab:red",
            zorder=4,
            label="all users (run's overall result)",
        )
        ax.scatter([], [], s=14, color="tab:blue", alpha=0.6, label="one client (its own users)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_yticks(positions, [textwrap.fill(r.label, 42) for r, _ in data], fontsize=8)
    ax.invert_yaxis()  # same top-to-bottom order as the report's table
    ax.set_xlabel(f"{_name(metric, True)} over each client's own users")
    ax.set_title(f"Per-client {_name(metric)}: one box per run (quartiles, whiskers 1.5 IQR)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return None


def _tick_values(values: list[float]) -> list[float]:
    """Distinct ε ticks: values within 5 % of each other (0.99 and 1.0 from one sweep point)
    share one tick, labelled with the shortest of them."""
    ticks: list[list[float]] = []
    for v in sorted(float(f"{e:.2g}") for e in values):
        if ticks and v <= ticks[-1][0] * 1.05:
            ticks[-1].append(v)
        else:
            ticks.append([v])
    return [min(cluster, key=lambda t: (len(f"{t:g}"), t)) for cluster in ticks]
