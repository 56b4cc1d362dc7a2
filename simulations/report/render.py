"""Rendering of the comparison report (``simulations.report``): neutral blocks, then the same
content as Markdown and as a standalone HTML page (inline CSS, no scripts, no external files)."""

from __future__ import annotations

import html
import statistics
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from simulations.report.format import fmt
from simulations.report.runs import FIXED_METRICS, Group, Run


def _mb(value: float | None) -> str:
    return fmt(None if value is None else value / 1e6, ".3f")


def build_blocks(
    root: Path, runs: list[Run], groups: list[Group], metric: str, plots: dict[str, str | None]
) -> list[tuple[str, Any]]:
    """The report as neutral blocks, rendered to Markdown and HTML alike."""
    complete = [r for r in runs if r.complete]
    incomplete = [r for r in runs if not r.complete]
    blocks: list[tuple[str, Any]] = [
        ("h1", "fedrec comparison report"),
        (
            "p",
            f"Runs under {root.resolve()} — {len(complete)} complete, {len(incomplete)} incomplete; "
            f"written {datetime.now().strftime('%Y-%m-%d %H:%M')}.",
        ),
        (
            "p",
            "Accuracy is full-ranking leave-one-out on each run's evaluation users; ε is the largest ε "
            "any client spent (∞ = no differential privacy); MB = 10^6 bytes per client per round.",
        ),
    ]
    extra = [] if metric in FIXED_METRICS else [metric]
    head = [
        "run",
        "kind",
        "ε",
        "δ",
        "NDCG@10",
        "HR@10",
        "MRR",
        *map(display_name, extra),
        "s/round",
        "total s",
        "adapter bytes",
        "MB up / down",
    ]
    table = []
    for r in complete:
        up, down = r.row_mean("bytes_up_per_client"), r.row_mean("bytes_down_per_client")
        table.append(
            [
                r.label,
                r.kind,
                fmt(r.epsilon, ".2f"),
                fmt(r.get("privacy", "delta"), "g"),
                *(fmt(r.metric(m), ".4f") for m in (*FIXED_METRICS, *extra)),
                fmt(r.get("timing", "seconds_per_round"), ".2f"),
                fmt(r.get("timing", "seconds_total"), ".2f"),
                fmt(r.get("communication", "adapter_bytes"), ",.0f"),
                "-" if up is None and down is None else f"{_mb(up)} / {_mb(down)}",
            ]
        )
    blocks += [("h2", "Runs"), ("table", (head, table))] if table else [("p", "No run has completed.")]
    from simulations.report.fairness import fairness_blocks  # it formats cells with fmt above

    blocks += fairness_blocks(runs)
    seeded = [g for g in groups if len(g.values) > 1]
    if seeded:
        blocks += [
            ("h2", f"Mean over seeds ({display_name(metric)})"),
            (
                "table",
                (
                    ["runs averaged", "n", "ε", "mean", "std", "min – max"],
                    [
                        [
                            g.name,
                            str(len(g.values)),
                            fmt(g.epsilon, ".2f"),
                            f"{g.mean:.4f}",
                            f"{statistics.stdev(g.values):.4f}",
                            f"{min(g.values):.4f} – {max(g.values):.4f}",
                        ]
                        for g in seeded
                    ],
                ),
            ),
        ]
    if incomplete:
        items = []
        for r in incomplete:
            state = f"metrics logged up to round {r.last_round}" if r.rows else "no metrics logged"
            note = f"; {r.note}" if r.note else ""
            items.append(f"{r.label} ({r.rel}): incomplete, no summary.json; {state}{note}")
        blocks += [("h2", "Incomplete runs"), ("ul", items)]
    blocks.append(("h2", "Plots"))
    m = display_name(metric)
    captions = {
        "utility_vs_epsilon": (
            f"{m} vs ε",
            f"{display_name(metric, True)} against the ε spent, one line per setting "
            "(mean over seeds, bars = min–max); ∞ = no DP; dashed = popularity reference.",
        ),
        "metric_per_round": (
            f"loss and {m} per round",
            f"Training loss per round (epoch for baselines), and {m} "
            "per round for the runs evaluated at more than one round.",
        ),
        "per_client": (
            f"per-client {m}",
            f"{m} of each client's own users, one box per run (dots = clients, "
            "diamond = the run's result over all users).",
        ),
        "group_ndcg_vs_epsilon": (
            "NDCG@10 of the activity groups vs ε",
            "Left: NDCG@10 (full ranking) of the "
            "advantaged (solid) and disadvantaged (dashed) users against the ε spent, one colour "
            "per setting (mean over seeds, bars = min–max). Right: each group's NDCG@10 relative "
            "to its own value without DP in the same setting (DP's disparate impact, "
            "Bagdasaryan et al. 2019); below 1 = lost to DP.",
        ),
    }
    for name, (alt, caption) in captions.items():
        skipped = plots.get(name)
        img = ("img", (f"plots/{name}.png", alt, caption))
        blocks.append(("p", f"{name}.png not drawn: {skipped}.") if skipped else img)
    return blocks


def display_name(metric: str, protocol: bool = False) -> str:
    """ndcg@10 -> NDCG@10, sampled_hr@10 -> sampled HR@10; with the ranking protocol if asked."""
    sampled = metric.startswith("sampled_")
    name = ("sampled " if sampled else "") + metric.removeprefix("sampled_").upper()
    return f"{name} ({'1 positive + sampled negatives' if sampled else 'full ranking'})" if protocol else name


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(blocks: list[tuple[str, Any]]) -> str:
    out = []
    for kind, body in blocks:
        if kind in ("h1", "h2"):
            out.append(f"{'#' * int(kind[1])} {body}")
        elif kind == "p":
            out.append(body)
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in body))
        elif kind == "table":
            head, rows = body
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{body[1]}]({body[0]})\n\n*{body[2]}*")
    return "\n\n".join(out) + "\n"


CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}"
    "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "td:first-child,td:nth-child(2),th{text-align:left}th{background:#eee}tr:nth-child(even){background:#f8f8f8}"
    "img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;margin-bottom:2em}"
)


def render_html(
    blocks: list[tuple[str, Any]],
    css_extra: str = "",
    extra: Callable[[str, Any], str | None] | None = None,
    cell: Callable[[str], str] | None = None,
) -> str:
    """A standalone page; ``extra`` renders block kinds of its own (None = not mine) and
    ``cell`` a table cell (the audit report marks alarms)."""
    e = html.escape
    td = cell or (lambda c: f"<td>{e(c)}</td>")
    out = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(blocks[0][1])}</title>'
        f"<style>{CSS}{css_extra}</style></head><body>"
    ]
    for kind, body in blocks:
        custom = extra(kind, body) if extra is not None else None
        if custom is not None:
            out.append(custom)
        elif kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{e(body)}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in body) + "</ul>")
        elif kind == "table":
            head, rows = body
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
            out += ["<tr>" + "".join(td(c) for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        elif kind == "img":
            src, alt, caption = map(e, body)
            out.append(f'<figure><img src="{src}" alt="{alt}"><figcaption>{caption}</figcaption></figure>')
    return "\n".join(out) + "\n</body></html>\n"
