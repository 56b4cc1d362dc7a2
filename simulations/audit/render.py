"""Rendering of the privacy audit report (:mod:`simulations.audit.report`): the signed
document as neutral blocks, then Markdown and a standalone HTML page, plus the two plots.

Rendering is a pure function of the document (payload + signature), never of the clock or the
run folder, so ``verify`` can re-render and detect an edited report.md / report.html.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

from common.privacy.ledger import AGREEMENT, RESOLUTION
from simulations.audit.facts import EXHAUSTED_SHARE, client_order
from simulations.audit.signing import payload_sha256
from simulations.report.render import render_html as _render_basic_html
from simulations.report.render import render_markdown as _render_basic_markdown

ALARM = ("EXCEEDED", "NO ", "VIOLATION", "UNSIGNED", "NOT ")  # table cells shown red in HTML
LABEL = {"red": "RED FLAG", "warn": "Warning", "ok": "OK"}


def _fmt(value: Any, spec: str = ".4g") -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, (int, float)):
        return "∞" if value == math.inf else format(value, spec)
    return str(value)


def _short(digest: Any) -> str:
    return f"{digest[:16]}…" if isinstance(digest, str) else "-"


def _rounds(rounds: Any) -> str:
    if rounds is None:
        return "unknown (no ledger)"
    return ", ".join(map(str, rounds)) if rounds else "none"


def build_blocks(document: dict) -> list[tuple[str, Any]]:
    p, sig = document["payload"], document.get("signature")
    run, pv, bud, aud = p["run"], p["privacy"], p["budget"], p["audit"]
    blocks: list[tuple[str, Any]] = [("h1", "fedrec privacy audit report")]
    if sig:
        blocks.append(
            (
                "p",
                f"Signed ({sig['algorithm']}) by the key with public-key sha256 "
                f"{sig['public_key_sha256']}. Only report.json is signed; check it and this rendering "
                "with `fedrec audit verify report.json PUBLIC_KEY.pem`.",
            )
        )
    else:
        blocks.append(
            (
                "flag",
                (
                    "red",
                    "UNSIGNED: this report carries no signature; anyone could have written "
                    "or changed it. Sign it: `fedrec audit report RUN_DIR --key KEY.pem`.",
                ),
            )
        )
    blocks.append(
        (
            "p",
            f"Run {run['dir']} — report written {p['generated_at']} — payload sha256 "
            f"{payload_sha256(p)} ({p['format']}).",
        )
    )

    blocks.append(("h2", "Findings"))
    blocks += [("flag", (f["level"], f["text"])) for f in p["findings"]]

    blocks.append(("h2", "Run identity"))
    code, data = run["code"], run["data"]
    dirty = {True: " (uncommitted changes)", False: " (clean)", None: ""}[code.get("dirty")]
    rows = [
        ["run folder", run["dir"]],
        ["kind", _fmt(run["kind"])],
        ["config sha256", f"{run['config_sha256']} (canonical JSON of config.yaml)"],
        ["code", f"{code.get('commit')}{dirty} — {code.get('scope', 'as recorded by the run')}"],
        ["fedrec version", _fmt(code.get("fedrec_version"))],
        [
            "data",
            f"{_fmt(data.get('dataset'))}: sha256 {_fmt(data.get('sha256'))} over {data.get('method')}"
            + (f" ({len(data['files'])} files under {data['path']})" if data.get("files") is not None else "")
            + (f" — {data['note']}" if data.get("note") else ""),
        ],
        ["seed, partition", f"{_fmt(run['seed'])}, {_fmt(run['partition'])}"],
        ["clients, users, rounds", f"{_fmt(run['clients'])}, {_fmt(run['users'])}, {_fmt(run['rounds'])}"],
    ]
    blocks.append(("table", (["", ""], rows)))
    blocks.append(
        (
            "table",
            (
                ["file the report was built from", "sha256"],
                [[n, _fmt(d) if d else "absent"] for n, d in run["inputs"].items()],
            ),
        )
    )

    blocks += [("h2", "What is protected: unit of privacy"), ("p", pv["statement"])]
    rows = [
        ["mechanism", _fmt(pv["mechanism"])],
        ["noise", _fmt(pv["noise"])],
        ["unit (summary.json)", _fmt(pv["unit"])],
        ["accountant", _fmt(pv["accountant"])],
        ["ε target", _fmt(pv["epsilon_target"])],
        ["ε spent (largest client)", _fmt(pv["epsilon_max"])],
        ["δ", _fmt(pv["delta"], "g")],
        ["units protected (δ bound)", f"{_fmt(pv['units_protected'])} (1/n = {_fmt(pv['delta_bound'], '.3g')})"],
        ["noise seeded from the config", "NOT PRIVATE (privacy.seeded_noise=true)" if pv["seeded_noise"] else "no"],
        ["Opacus secure_mode (CSPRNG)", _fmt(pv["secure_mode"])],
    ]
    blocks += [("table", (["", ""], rows)), ("p", pv["delta_statement"])]

    tm = p["threat_model"]
    blocks.append(("h2", "Against whom: threat model"))
    if tm.get("sha256"):
        blocks.append(
            (
                "p",
                f"Quoted from {tm['path']} (sha256 {_short(tm['sha256'])}) for this run's settings; "
                "read that document for the full model.",
            )
        )
        blocks += [("quote", q) for q in tm["quotes"]]
    else:
        blocks.append(("flag", ("warn", tm.get("note", "threat model not found"))))

    sa = p["secure_aggregation"]
    blocks += [("h2", "Secure aggregation"), ("p", sa["statement"])]
    if sa.get("settings"):
        blocks.append(("table", (["secagg.*", "value"], [[k, _fmt(v, "g")] for k, v in sa["settings"].items()])))
    if sa.get("run"):
        r = sa["run"]
        blocks.append(
            (
                "p",
                f"This run: {_fmt(r.get('rounds_completed'))} rounds aggregated securely, failed rounds "
                f"{r.get('rounds_failed') or 'none'}, clients dropped {_fmt(r.get('clients_dropped'))}; "
                f"threshold {_fmt(r.get('threshold_clients'))} of {_fmt(r.get('num_shares_clients'))} "
                "clients.",
            )
        )

    blocks.append(("h2", "Privacy budget per client"))
    if not pv["enabled"]:
        blocks.append(("p", "No differential privacy: no budget applies (ε = ∞)."))
    else:
        n, used_up = len(bud["clients"]), sum(c["status"] == "exhausted" for c in bud["clients"].values())
        overall = "EXCEEDED" if bud["exceeded"] else f"within budget ({used_up} of {n} clients exhausted it)"
        refused = "unknown (no ledger)" if bud["refused_rounds"] is None else bud["refused_rounds"]
        blocks.append(
            (
                "p",
                f"Source: {bud['source']}. Budget: ε = {_fmt(bud['budget_epsilon'])} from "
                f"{bud['budget_source']}; ε target {_fmt(bud['epsilon_target'])}. Overall: "
                f"{overall}; refused rounds: {refused}. "
                "'exceeded' = ε above budget × (1 + 1e-9) in any round (the client's own rule); "
                f"'exhausted' = a refused round or ≥ {EXHAUSTED_SHARE * 100:g} % spent; accountants "
                f"must agree within {AGREEMENT * 100:g} % (or {RESOLUTION:g}).",
            )
        )
        if bud["exceeded"]:
            blocks.append(("flag", ("red", "Budget EXCEEDED: at least one client spent more ε than its budget.")))
        head = [
            "client",
            "users",
            "steps",
            "noise σ",
            "sample rate q",
            "ε spent",
            "ε check",
            "agree",
            "budget ε",
            "spent",
            "status",
            "refused in rounds",
            "exceeded in rounds",
        ]
        rows = []
        # The run's own status per client, when it recorded one: shown so a disagreement is visible.
        reported = any(c.get("reported_status") is not None for c in bud["clients"].values())
        for cid, c in sorted(bud["clients"].items(), key=lambda kv: client_order(kv[0])):
            diff = c["max_relative_difference"]
            agree = "-" if c["agree"] is None else f"{'yes' if c['agree'] else 'NO'} ({diff:.2%})"
            eps, budget = c["epsilon"], c["budget_epsilon"]
            finite = isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0
            spent = f"{eps / budget:.1%}" if isinstance(eps, (int, float)) and finite else "-"
            check = "-" if c["epsilon_check"] is None else f"{_fmt(c['epsilon_check'])} ({_fmt(c['check_accountant'])})"
            rows.append(
                [
                    cid,
                    _fmt(c["users"]),
                    _fmt(c["steps"]),
                    _fmt(c["noise_multiplier"]),
                    _fmt(c["sample_rate"]),
                    f"{_fmt(eps)} ({_fmt(c['accountant'])})",
                    check,
                    agree,
                    _fmt(budget),
                    spent,
                    c["status"],
                    _rounds(c["refused_rounds"]),
                    ", ".join(map(str, c["exceeded_rounds"])) or "none",
                ]
            )
            if reported:
                rows[-1].append(_fmt(c.get("reported_status")))
        blocks.append(("table", (head + (["status (summary.json)"] if reported else []), rows)))
        for problem in bud["problems"]:
            blocks.append(("flag", ("red", problem)))
    blocks.append(
        _img(
            p,
            "epsilon_per_round",
            "ε per round per client",
            "ε spent so far after each round, one line per client; dashed red = budget, dotted grey = "
            "target; x = a refused round.",
        )
    )

    blocks.append(("h2", "Empirical audit"))
    if not aud["run"]:
        blocks.append(("flag", ("warn", f"The audit was {aud['statement']}.")))
    else:
        cols = [("this run", aud)] + ([("positive control", aud["control"])] if aud.get("control") else [])
        rows = [[label, *(_fmt(get(a)) for _, a in cols)] for label, get in AUDIT_ROWS]
        blocks.append(("table", (["", *(name for name, _ in cols)], rows)))
    blocks.append(("p", aud["interpretation"]))
    if aud["run"]:
        blocks.append(
            _img(
                p,
                "mia_roc",
                "membership inference ROC",
                "ROC of the membership-inference attack (members vs non-members); the diagonal is "
                "guessing; the positive control is dashed when given.",
            )
        )

    blocks += [
        ("h2", "Known limits"),
        ("ul", p["known_limits"]),
        ("p", f"The authoritative list is 'Known limits' in {tm['path']} and 'What this does not cover' in README.md."),
    ]
    return blocks


def _audit_get(*path: str):
    def get(block: dict) -> Any:
        node: Any = block
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    return get


AUDIT_ROWS = [
    ("private run", _audit_get("private")),
    (
        "theoretical ε",
        lambda a: (
            "∞ (no DP)"
            if a.get("private") is False and a.get("epsilon_theory") in (None, "inf")
            else _fmt(a.get("epsilon_theory"))
        ),
    ),
    ("δ", _audit_get("delta")),
    ("canaries (m, included)", lambda a: _pair(a, "canaries", "m", "included")),
    ("guesses (correct / made)", lambda a: _pair(a, "canaries", "correct", "guesses")),
    ("confidence", _audit_get("canaries", "confidence")),
    ("ε lower bound", _audit_get("canaries", "epsilon_lower_bound")),
    ("method", _audit_get("canaries", "method")),
    ("MIA members / non-members", lambda a: _pair(a, "mia", "members", "non_members")),
    ("MIA AUC", _audit_get("mia", "auc")),
    ("violation", lambda a: "VIOLATION" if a.get("violation") else "no"),
    ("seconds", _audit_get("seconds")),
    ("audit.json sha256", lambda a: _short(a.get("sha256"))),
]


def _pair(block: dict, part: str, a: str, b: str) -> str:
    sub = block.get(part) or {}
    return f"{_fmt(sub.get(a))} / {_fmt(sub.get(b))}"


def _img(payload: dict, name: str, alt: str, caption: str) -> tuple[str, Any]:
    plot = (payload.get("plots") or {}).get(name) or {}
    if not plot.get("file"):
        return ("p", f"{name}.png not drawn: {plot.get('not_drawn', 'no data')}.")
    return ("img", (plot["file"], alt, f"{caption} (sha256 {_short(plot.get('sha256'))})"))


def render_markdown(document: dict) -> str:
    basic = []
    for kind, body in build_blocks(document):
        if kind == "flag":
            level, text = body
            basic.append(("p", f"**{LABEL[level]}: {text}**" if level == "red" else f"**{LABEL[level]}:** {text}"))
        elif kind == "quote":
            basic.append(("p", f"> {body}"))
        else:
            basic.append((kind, body))
    return _render_basic_markdown(basic)


AUDIT_CSS = (
    ".flag{padding:4px 8px;margin:4px 0;border-left:6px solid}.red{background:#fde2e2;border-color:#c00;"
    "font-weight:bold}.warn{background:#fff4d6;border-color:#d90}.ok{background:#e6f4e6;border-color:#393}"
    "td.alarm{background:#fde2e2;color:#900;font-weight:bold}blockquote{color:#444;border-left:3px solid #ccc;"
    "margin:6px 0;padding-left:10px}"
)


def render_html(document: dict) -> str:
    e = html.escape

    def extra(kind: str, body) -> str | None:
        if kind == "flag":
            level, text = body
            return f'<p class="flag {level}">{e(LABEL[level])}: {e(text)}</p>'
        if kind == "quote":
            return f"<blockquote>{e(body)}</blockquote>"
        return None

    def cell(c: str) -> str:
        return f'<td class="alarm">{e(c)}</td>' if c.startswith(ALARM) else f"<td>{e(c)}</td>"

    return _render_basic_html(build_blocks(document), AUDIT_CSS, extra, cell)


# ---------------------------------------------------------------- plots (None = drawn, else why not)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    # Fixed metadata: matplotlib otherwise stamps its version only, but keep PNGs byte-stable.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    os.replace(tmp, path)


def epsilon_plot(budget: dict, path: Path) -> str | None:
    series = {c: s for c, s in sorted(budget["epsilon_per_round"].items(), key=lambda kv: client_order(kv[0])) if s}
    if not series:
        return "no ε per round recorded (no ledger rows, no epsilon_per_client in metrics.jsonl)"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    many = len(series) > 12  # past a dozen clients a legend entry per client is noise
    cmap = plt.get_cmap("tab10")
    use_rounds = all(
        all(isinstance(r[0], int) for r in s) and [r[0] for r in s] == sorted({r[0] for r in s})
        for s in series.values()
    )  # a ledger spanning several runs repeats rounds
    marked = False
    for i, (cid, rows) in enumerate(series.items()):
        xs = [r[0] if use_rounds else n for n, r in enumerate(rows, start=1)]
        ys = [r[1] for r in rows]
        style = (
            {"color": "#4477aa", "alpha": 0.4, "linewidth": 0.8}
            if many
            else {
                "color": cmap(i % 10),
                "linestyle": ("-", "--", "-.", ":")[i // 10 % 4],
                "marker": "o",
                "markersize": 3,
            }
        )
        ax.plot(xs, ys, label=None if many else f"client {cid}", **style)
        refused = [(x, y) for x, y, r in zip(xs, ys, rows) if r[2] == "refused_budget"]
        if refused:
            ax.scatter(
                *zip(*refused), marker="x", color="#c00", s=40, zorder=3, label=None if marked else "refused round"
            )
            marked = True
    if many:
        ax.plot([], [], color="#4477aa", label=f"{len(series)} clients")
    budgets = sorted({c["budget_epsilon"] for c in budget["clients"].values()} - {None})
    target = budget.get("epsilon_target")
    for b in budgets:
        same = " (= target)" if b == target else ""
        ax.axhline(b, color="#c00", linestyle="--", linewidth=1.2, label=f"budget ε = {b:g}{same}")
    if isinstance(target, (int, float)) and math.isfinite(target) and target not in budgets:
        ax.axhline(target, color="#777", linestyle=":", linewidth=1.2, label=f"target ε = {target:g}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round" if use_rounds else "ledger row (rounds repeat: the ledger spans several runs)")
    ax.set_ylabel("ε spent so far")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("privacy budget spent per client")
    _save(fig, path)
    return None


def roc_plot(rocs: dict, audit: dict, path: Path) -> str | None:
    if not audit.get("run"):
        return "the audit was not run"
    curves = {}
    for name, roc in rocs.items():
        fpr, tpr = roc.get("fpr"), roc.get("tpr")
        if isinstance(fpr, list) and isinstance(tpr, list) and len(fpr) == len(tpr) > 1:
            curves[name] = (fpr, tpr)
    if "this run" not in curves:
        return "audit.json has no mia.roc curve (fpr and tpr lists of equal length)"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5))
    aucs = {
        "this run": (audit.get("mia") or {}).get("auc"),
        "positive control": ((audit.get("control") or {}).get("mia") or {}).get("auc"),
    }
    for name, (fpr, tpr) in curves.items():
        auc = aucs.get(name)
        label = f"{name} (AUC {auc:.3f})" if isinstance(auc, (int, float)) else name
        ax.plot(fpr, tpr, linestyle="-" if name == "this run" else "--", linewidth=1.6, label=label)
    ax.plot([0, 1], [0, 1], color="#999", linestyle=":", label="chance")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="membership inference ROC",
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)
    return None
