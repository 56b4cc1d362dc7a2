"""The facts of the privacy audit report (:mod:`simulations.audit.report`): what is protected
(unit of privacy, δ), secure aggregation, each client's budget from its privacy ledger, what
the guarantee does not cover, and the empirical audit (``RUN_DIR/audit/audit.json`` from
``fedrec audit run``: canary ε lower bound, membership-inference AUC, the positive control).
The budget and agreement rules are the client's own (:mod:`common.privacy.ledger`): EXCEEDED
is ``not within_budget(ε, budget)``, and two accountants agree by ``accountants_agree``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.privacy.ledger import REFUSED, TRAINED, accountants_agree, within_budget
from simulations.audit.identity import (
    ReportInputError,
    config_sha256,
    lookup,
    number,
    read_json,
    read_yaml,
    sha256_file,
)

EXHAUSTED_SHARE = 0.99  # a client that spent ≥ 99 % of its budget has no room for another round
VIOLATION_TOLERANCE = 1e-9  # a canary lower bound above ε + this is a violation: anything less is rounding

# What the guarantee does not cover, from docs/threat-model.md "Known limits" and README "What
# this does not cover". (when, text): ``when`` names the setting a limit applies under.
KNOWN_LIMITS: list[tuple[str, str]] = [
    (
        "dp",
        "DP noise and Poisson batch sampling come from torch generators seeded with 63 bits of OS entropy per "
        "round, not a CSPRNG: Opacus' secure_mode needs torchcsprng, which has no build for torch 2.13.",
    ),
    ("dp", "Floating-point attacks on the Gaussian sampler (Mironov 2012) are not mitigated."),
    (
        "always",
        "Each client's user count, mean training loss and evaluation metric sums reach the server in "
        "clear (for weighting and reporting); they are outside the ε accounting.",
    ),
    (
        "always",
        "The server chooses which clients are sampled; a malicious server could sample one honest client "
        "with colluding ones. Minimum-participant checks are the server's own configuration.",
    ),
    (
        "no_secagg",
        "Without secure aggregation the server sees every sampled client's update (with local noise, "
        "each update is itself DP); the network needs TLS, which is the deployment's job.",
    ),
    (
        "secagg",
        "SecAgg+ masks come from the agreed key XOR-folded into 32 bits seeding NumPy's Mersenne "
        "Twister: not cryptographically strong; a server able to search 2^32 seeds per pairwise key "
        "could strip masks.",
    ),
    (
        "secagg",
        "The SecAgg+ collusion threshold holds for a semi-honest server only: Flower's SecAgg+ has no "
        "consistency check, so a malicious server can unmask a single client's vector.",
    ),
    (
        "distributed",
        "Distributed noise: values outside secagg.clipping_range are clamped before quantization; a "
        "clamp is logged on the client and not accounted for.",
    ),
    (
        "distributed",
        "Distributed noise: a server colluding with c clients can subtract their noise shares, leaving "
        "(m−c)/t of the noise on the others' sum (a weaker ε); a client's own share carries 1/t.",
    ),
    (
        "central",
        "Central noise (DP-FedAvg): the server adds the noise itself and sees noise-free clipped "
        "updates (or their sum under SecAgg+): no DP against the server.",
    ),
    (
        "always",
        "The empirical audit measures only the attacks it runs: its ε lower bound cannot prove the "
        "guarantee, only fail to contradict it.",
    ),
]


# ---------------------------------------------------------------- what is protected, secure aggregation


def privacy_block(config: dict, summary: dict) -> dict:
    p = summary.get("privacy") if isinstance(summary.get("privacy"), dict) else {}
    enabled = bool(p.get("enabled", lookup(config, "privacy.enabled")))
    noise = lookup(config, "privacy.noise") if enabled else "none"
    scheme = lookup(config, "partition.scheme")
    data = summary.get("data") if isinstance(summary.get("data"), dict) else {}
    client_level = noise == "central" and scheme != "cross_device"
    units = data.get("clients") if client_level else data.get("users")
    delta = number(p.get("delta"))
    if not enabled:
        unit = "none: this run is not differentially private; nothing bounds what the model reveals about a user."
    elif noise == "central":
        who = (
            "one client is one user (partition=cross_device), so the client-level guarantee is user-level"
            if not client_level
            else "the unit is a whole client (an organisation's entire data set), not a single user: client-level DP"
        )
        unit = (
            f"DP-FedAvg, {who}. Each client's update is clipped and the server adds Gaussian noise to the "
            "mean: (ε, δ) against everyone who sees the model, NOT against the server, which adds the noise."
        )
    elif noise == "distributed":
        unit = (
            "user-level, pooled: one DP-SGD example is one user's whole interaction history, one step per round "
            "over all clients' users; each client adds a share of the noise that only the secure sum reveals: "
            "(ε, δ) for every user against the server and any client (semi-honest)."
        )
        if (p.get("popularity_prior") or {}).get("released"):
            unit += (
                " The ε includes a DP item-popularity prior released once the same way (each user's counts "
                "bounded to L2 norm 1), composed with the training steps in the same accountant."
            )
    else:
        unit = (
            "user-level: one DP-SGD example is one user's whole interaction history at one client, and "
            "per-example clipping bounds each user's influence. Each client's update (and the aggregate and "
            "final model computed from it) is (ε, δ)-DP for each of that client's users, against everyone."
        )
    bound = 1.0 / units if isinstance(units, int) and units > 0 else None
    if delta is None or bound is None:
        delta_note = "δ or the number of units protected is not recorded"
    else:
        delta_note = (
            f"δ = {delta:g} {'<' if delta < bound else '≥'} 1/{units} = {bound:.3g}: δ is the chance "
            "the guarantee may fail, and with δ ≥ 1/n a mechanism that publishes one of the n protected "
            "units' data outright would satisfy (ε, δ)-DP, so δ must be well below 1/n."
        )
    return {
        "enabled": enabled,
        "unit": p.get("unit") if enabled else None,
        "statement": unit,
        "noise": noise,
        "mechanism": p.get("mechanism"),
        "accountant": p.get("accountant") if enabled else None,
        "epsilon_target": p.get("epsilon_target"),
        "epsilon_max": p.get("epsilon_max"),
        "delta": delta,
        "units_protected": units,
        "delta_bound": bound,
        "delta_ok": None if bound is None or delta is None else delta < bound,
        "delta_statement": delta_note,
        "seeded_noise": bool(lookup(config, "privacy.seeded_noise")),
        "secure_mode": bool(lookup(config, "privacy.secure_mode")),
    }


def secagg_block(config: dict, summary: dict) -> dict:
    s = summary.get("secure_aggregation")
    if not lookup(config, "secagg.enabled") and not s:
        return {"enabled": False, "statement": "none: the server sees each client's update"}
    keys = (
        "protocol",
        "num_shares",
        "reconstruction_threshold",
        "clipping_range",
        "quantization_range",
        "modulus_range",
        "update_clip_norm",
    )
    settings = {k: lookup(config, f"secagg.{k}") for k in keys}
    return {
        "enabled": True,
        "statement": "the server sees only the sum of the surviving clients' masked updates",
        "settings": settings,
        "run": s if isinstance(s, dict) else None,
    }


# ---------------------------------------------------------------- the budget per client


def _rel_diff(a: float, b: float) -> float:
    return 0.0 if a == b else abs(a - b) / max(abs(a), abs(b))


def _ledger_rows(ledger: tuple[list[dict], list[int]] | None, metrics: list[dict]) -> tuple[dict, list[str]]:
    """Each client's rows, from the ledger or else metrics.jsonl, and the ledger's problems."""
    rows_by: dict[str, list[dict]] = {}
    problems: list[str] = []
    if ledger is not None:
        rows, bad = ledger
        if bad:
            problems.append(f"privacy_ledger.jsonl: {len(bad)} unreadable line(s): {bad[:10]}")
        for n, r in enumerate(rows, start=1):
            if "client_id" not in r or number(r.get("epsilon")) is None:
                problems.append(f"privacy_ledger.jsonl: row {n} lacks client_id or a numeric epsilon")
                continue
            rows_by.setdefault(str(r["client_id"]), []).append(r)
    else:
        for m in metrics:
            for cid, eps in (m.get("epsilon_per_client") or {}).items():
                if number(eps) is not None:
                    rows_by.setdefault(str(cid), []).append(
                        {"round": m.get("round"), "epsilon": eps, "status": TRAINED}
                    )
    return rows_by, problems


def budget_block(config: dict, summary: dict, ledger: tuple[list[dict], list[int]] | None, metrics: list[dict]) -> dict:
    """Per-client spend, budget status and ε per round, from the ledger when the run has one,
    else from summary.json and metrics.jsonl ("no ledger": refusals are then unknown)."""
    p = summary.get("privacy") if isinstance(summary.get("privacy"), dict) else {}
    per_client = p.get("per_client") if isinstance(p.get("per_client"), dict) else {}
    data = summary.get("data") if isinstance(summary.get("data"), dict) else {}
    budget_cfg = number(lookup(config, "privacy.budget_epsilon"))
    target = number(lookup(config, "privacy.epsilon"))
    budget_default = budget_cfg if budget_cfg is not None else target
    rows_by, problems = _ledger_rows(ledger, metrics)
    ids = sorted(set(per_client) | set(rows_by), key=client_order)
    clients, series = {}, {}
    for cid in ids:
        s, rows = per_client.get(cid) or {}, rows_by.get(cid, [])
        last = rows[-1] if rows else {}
        budget = number(last.get("budget_epsilon")) or number(s.get("budget_epsilon")) or budget_default
        eps = number(last.get("epsilon")) if rows else number(s.get("epsilon"))
        check = number(last.get("epsilon_check")) if ledger is not None else number(s.get("epsilon_check"))
        pairs = [
            (float(r["epsilon"]), float(r["epsilon_check"])) for r in rows if number(r.get("epsilon_check")) is not None
        ]
        if eps is not None and check is not None:
            pairs.append((eps, check))
        diffs = [_rel_diff(a, b) for a, b in pairs]
        disagree = any(not accountants_agree(a, b) for a, b in pairs) or any(r.get("agree") is False for r in rows)
        # The client's own rule: a hair over the budget is rounding, not overspending.
        over = (lambda e: False) if budget is None else (lambda e: not within_budget(e, budget))
        exceeded = [r.get("round") for r in rows if over(float(r["epsilon"]))]
        if eps is not None and over(eps) and not exceeded:
            exceeded = ["final"]
        refused = [r.get("round") for r in rows if r.get("status") == REFUSED] if ledger is not None else None
        if exceeded:
            status = "EXCEEDED"
        elif refused or (budget and eps is not None and eps >= EXHAUSTED_SHARE * budget):
            status = "exhausted"
        else:
            status = "within" if eps is not None and budget is not None else "unknown"
        ledger_eps, summary_eps = eps, number(s.get("epsilon"))
        clients[cid] = {
            "users": s.get("users") if s.get("users") is not None else _client_users(data, cid),
            "steps": last.get("steps_total", s.get("steps")),
            "noise_multiplier": last.get("noise_multiplier", s.get("noise_multiplier")),
            "sample_rate": last.get("sample_rate", s.get("sample_rate")),
            "epsilon": eps,
            "epsilon_check": check,
            "accountant": last.get("accountant", p.get("accountant")),
            "check_accountant": last.get("check_accountant", s.get("check_accountant")),
            "max_relative_difference": max(diffs) if diffs else None,
            "agree": None if not diffs else not disagree,
            "budget_epsilon": budget,
            "status": status,
            "exceeded_rounds": exceeded,
            "refused_rounds": refused,
            "reported_status": s.get("budget_status"),
            "summary_matches_ledger": None
            if ledger is None or ledger_eps is None or summary_eps is None
            else _rel_diff(ledger_eps, summary_eps) <= 1e-9,
        }
        series[cid] = [[r.get("round"), float(r["epsilon"]), r.get("status", TRAINED)] for r in rows]
    exceeded_any = any(c["status"] == "EXCEEDED" for c in clients.values())
    refused_total = sum(len(c["refused_rounds"] or []) for c in clients.values())
    return {
        "source": "privacy_ledger.jsonl" if ledger is not None else "no ledger: summary.json and metrics.jsonl",
        "budget_epsilon": budget_default,
        "budget_source": "privacy.budget_epsilon"
        if budget_cfg is not None
        else "privacy.epsilon (no privacy.budget_epsilon: the target is the budget)",
        "epsilon_target": target,
        "status": "EXCEEDED" if exceeded_any else ("within" if clients else "unknown"),
        "exceeded": exceeded_any,
        "refused_rounds": refused_total if ledger is not None else None,
        "accountants_disagree": [c for c, v in clients.items() if v["agree"] is False],
        "problems": problems,
        "clients": clients,
        "epsilon_per_round": series,
    }


def client_order(cid: str) -> tuple:
    """Client ids in numeric order (JSON sorts "10" before "2")."""
    return (not cid.isdigit(), int(cid) if cid.isdigit() else 0, cid)


def _client_users(data: dict, cid: str) -> int | None:
    users = data.get("client_users")
    if cid.isdigit() and isinstance(users, list) and int(cid) < len(users):
        return users[int(cid)]
    return None


# ---------------------------------------------------------------- what the guarantee does not cover


def known_limits(config: dict, privacy: dict) -> list[str]:
    secagg = bool(lookup(config, "secagg.enabled"))
    applies = {
        "always": True,
        "dp": privacy["enabled"],
        "secagg": secagg,
        "no_secagg": not secagg,
        "distributed": privacy["noise"] == "distributed",
        "central": privacy["noise"] == "central",
    }
    return [text for when, text in KNOWN_LIMITS if applies[when]]


# ---------------------------------------------------------------- the empirical audit


def _audit_file(run_dir: Path) -> tuple[dict | None, Path]:
    path = run_dir / "audit" / "audit.json"
    audit = read_json(path, required=False)
    if audit is not None and not isinstance(audit, dict):
        raise ReportInputError(f"{path}: a JSON object expected")
    return audit, path


def _audit_facts(audit: dict, path: Path) -> dict:
    """The audit's numbers, checked: a field of the wrong type is a one-line error naming it."""
    keys = ("private", "epsilon_theory", "delta", "seconds")
    out: dict[str, Any] = {**{k: audit.get(k) for k in keys}, "sha256": sha256_file(path)}
    can, mia = audit.get("canaries"), audit.get("mia")
    if can is None and mia is None:
        raise ReportInputError(f"{path}: neither 'canaries' nor 'mia' results")
    if can is not None:
        for key in ("epsilon_lower_bound", "confidence"):
            if number(lookup(can, key)) is None:
                raise ReportInputError(f"{path}: field canaries.{key} must be a number")
        out["canaries"] = {k: v for k, v in can.items()}
    if mia is not None:
        if lookup(mia, "auc") is not None and number(lookup(mia, "auc")) is None:  # null = undefined (no members)
            raise ReportInputError(f"{path}: field mia.auc must be a number or null")
        out["mia"] = {k: v for k, v in mia.items() if k != "roc"}  # the curve is in the plot, not the record
    lb, theory = number(lookup(can, "epsilon_lower_bound")), number(audit.get("epsilon_theory"))
    out["violation_computed"] = lb is not None and theory is not None and lb > theory + VIOLATION_TOLERANCE
    out["violation"] = bool(audit.get("violation")) or out["violation_computed"]
    return out


def audit_block(run_dir: Path, control: Path | None) -> tuple[dict, dict]:
    """The audit results (or that none was run) and the ROC curves for the plot."""
    audit, path = _audit_file(run_dir)
    rocs: dict[str, Any] = {}
    if audit is None:
        block: dict[str, Any] = {
            "run": False,
            "statement": f"not run: no audit/audit.json (run `fedrec audit run {run_dir}` first)",
        }
    else:
        block = {"run": True, "file": "audit/audit.json", **_audit_facts(audit, path)}
        rocs["this run"] = lookup(audit, "mia.roc")
    if control is not None:
        c_audit, c_path = _audit_file(control)
        if c_audit is None:
            raise ReportInputError(f"{c_path}: not found (run `fedrec audit run {control}` for the positive control)")
        cfg = read_yaml(control / "config.yaml", required=False)
        block["control"] = {
            "run_dir": str(control.resolve()),
            "config_sha256": config_sha256(cfg) if cfg else None,
            **_audit_facts(c_audit, c_path),
        }
        rocs["positive control"] = lookup(c_audit, "mia.roc")
    block["interpretation"] = _interpretation(block)
    return block, {k: v for k, v in rocs.items() if isinstance(v, dict)}


def _interpretation(block: dict) -> str:
    if not block["run"]:
        return "No empirical audit: the report rests on the accounting alone."
    lb, conf = lookup(block, "canaries.epsilon_lower_bound"), lookup(block, "canaries.confidence")
    theory, auc = block.get("epsilon_theory"), lookup(block, "mia.auc")
    parts = []
    if lb is not None and number(theory) is None:
        parts.append(
            f"The canary audit shows ε ≥ {lb:.3g} with {conf:.0%} confidence; this run has no DP guarantee "
            "to compare it with (ε = ∞)."
        )
    elif lb is not None:
        if block["violation"]:
            parts.append(
                f"VIOLATION: the canary audit shows ε ≥ {lb:.3g} with {conf:.0%} confidence, above the "
                f"theoretical ε = {_g(theory)}: the implementation or its accounting is wrong."
            )
        else:
            parts.append(
                f"The canary audit shows ε ≥ {lb:.3g} with {conf:.0%} confidence, against a theoretical "
                f"ε = {_g(theory)}: consistent with the guarantee. A lower bound below ε is not a proof of "
                "privacy: it only says these attacks could not show more leakage."
            )
    if auc is not None:
        parts.append(f"Membership inference AUC {auc:.3f} (0.5 = chance).")
    c = block.get("control")
    if c:
        c_lb, c_auc = lookup(c, "canaries.epsilon_lower_bound"), lookup(c, "mia.auc")
        shows = any(x is not None and y is not None and x > y for x, y in ((c_lb, lb), (c_auc, auc)))
        parts.append(
            f"The positive control (same audit, run {Path(c['run_dir']).name}) gives ε ≥ {_g(c_lb)} and "
            f"AUC {_g(c_auc)}: "
            + (
                "the audit does detect leakage where there is no DP."
                if shows
                else "no more than this run, so the audit may lack power at this size; read its bound as weak evidence."
            )
        )
    return " ".join(parts)


def _g(value: Any) -> str:
    return format(value, ".3g") if number(value) is not None else str(value)


def spent_note(audit: dict, privacy: dict) -> str:
    """A sentence for the interpretation when the audit's theoretical ε is not what this run's
    largest client spent (by the ledger's agreement rule), else ""."""
    theory, spent = number(audit.get("epsilon_theory")), number(privacy["epsilon_max"])
    if theory is None or spent is None or accountants_agree(theory, spent):
        return ""
    return (
        f" The audit retrains this run's config with canaries, so its theoretical ε ({theory:.4g}) is what that "
        f"training spent; this run's largest client spent {spent:.4g}."
    )
