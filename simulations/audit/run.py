"""Empirical privacy audit of a completed run: ``python -m simulations.audit run RUN_DIR``.

Re-runs RUN_DIR's config with canary users and held-out real users (``audit:`` in conf/) into
RUN_DIR/audit/train/, scores every user by minus the trained model's loss on their training
sequence, and writes RUN_DIR/audit/audit.json: the one-run ε lower bound from the canaries
(Steinke, Nasr & Jagielski 2023) and the loss-threshold MIA's ROC on members vs held-out users.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from common.config import CONF_DIR, compose, parse_overrides
from common.data.types import DataError
from common.model.item_encoder import ModelPathError
from common.privacy.accounting import PrivacyConfigError
from common.privacy.canaries import audit_canaries, roc_auc, roc_curve
from common.tracking.store import atomic_write, json_safe
from simulations.run import app_overrides, completed_summary, execute  # also sets the offline env variables

log = logging.getLogger("fedrec")
GROUPS = ("dataset", "partition", "model", "privacy", "secagg", "strategy", "simulation", "eval")
NO_MODEL = {"popularity": "has no trained model", "local": "trains one model per client, not one shared model"}


class AuditError(ValueError):
    """Bad input for the audit; the message is one line and names the path or setting."""


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a completed run (config.yaml, summary.json)")
    parser.add_argument("--canaries", type=int, default=200, help="canary users, each trained on w.p. 1/2 (200)")
    parser.add_argument("--holdout", type=float, default=0.5, help="share of real users never trained on (0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the canaries, their inclusion and the hold-out")
    parser.add_argument("--canary-length", type=int, default=20, help="items per canary history (default 20)")
    parser.add_argument("--draws", type=int, default=8, help="draws of negatives averaged per user's loss (default 8)")
    parser.add_argument("--retrain", action="store_true", help="train again even if audit/train already holds this run")


def run_from_args(args: argparse.Namespace, prog: str = "fedrec audit run") -> int:
    _setup_logging()
    try:
        report = audit_run(
            args.run_dir, args.canaries, args.holdout, args.seed, args.canary_length, args.draws, args.retrain
        )
    except (AuditError, DataError, PrivacyConfigError, ModelPathError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    c, mia = report["canaries"], report["mia"]
    theory = "none (not private)" if report["epsilon_theory"] is None else f"{report['epsilon_theory']:.2f}"
    print(f"MIA (loss threshold): AUC {mia['auc']:.3f}, {mia['members']} members vs {mia['non_members']} held out")
    print(
        f"canaries: {c['correct']}/{c['guesses']} guesses correct (k+={c['k_plus']}, k-={c['k_minus']}, "
        f"{c['included']}/{c['m']} included): epsilon >= {c['epsilon_lower_bound']:.3f} at {c['confidence']:.0%} "
        f"confidence, delta={report['delta']:g}; epsilon spent: {theory}"
    )
    if report["violation"]:
        bar = "!" * 78
        print(
            f"\n{bar}\n!! PRIVACY AUDIT VIOLATION: the empirical lower bound {c['epsilon_lower_bound']:.3f} exceeds\n"
            f"!! the epsilon the run claims to spend ({report['epsilon_theory']:.3f}). Either a DP bug or an unlucky\n"
            f"!! draw (5 %): re-run with another --seed before trusting this run's guarantee.\n{bar}",
            file=sys.stderr,
        )
    print(f"wrote {Path(report['run']) / 'audit' / 'audit.json'}")
    return 0


def audit_run(
    run_dir: Path,
    canaries: int = 200,
    holdout: float = 0.5,
    seed: int = 0,
    canary_length: int = 20,
    draws: int = 8,
    retrain: bool = False,
) -> dict:
    """Train with canaries into RUN_DIR/audit/train (unless already done), score, write audit.json."""
    start = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    cfg, original = _read_run(run_dir)
    if canaries < 1:
        raise AuditError(f"--canaries must be at least 1, got {canaries}")
    if not 0 < holdout < 1:
        raise AuditError(f"--holdout must be in (0, 1), got {holdout}")
    train_dir = run_dir / "audit" / "train"
    audit_cfg, overrides = audit_config(
        cfg, train_dir, canaries, holdout, seed, canary_length, (original.get("privacy") or {}).get("delta")
    )
    summary = None if retrain else completed_summary(audit_cfg, train_dir)
    if summary is None:
        log.info(
            "fedrec audit: training %s with %d canaries, %.0f %% of users held out -> %s",
            run_dir.name,
            canaries,
            100 * holdout,
            train_dir,
        )
        summary = execute(audit_cfg, overrides, train_dir)
    else:
        log.info("fedrec audit: %s already holds this audit's training run; scoring it", train_dir)
    report = score_run(audit_cfg, summary, train_dir, draws)
    report.update(run=str(run_dir), train_dir="audit/train", seconds=time.perf_counter() - start)
    atomic_write(run_dir / "audit" / "audit.json", json.dumps(json_safe(report), indent=2, sort_keys=True))
    return report


def _read_run(run_dir: Path) -> tuple[DictConfig, dict]:
    if not run_dir.is_dir():
        raise AuditError(f"{run_dir}: no such run folder")
    for name in ("config.yaml", "summary.json"):
        if not (run_dir / name).is_file():
            raise AuditError(f"{run_dir / name} not found (not a completed run folder)")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if cfg.get("baseline") in NO_MODEL:
        raise AuditError(
            f"{run_dir}: baseline={cfg.baseline} {NO_MODEL[cfg.baseline]}; audit a federated or centralized run"
        )
    try:
        return cfg, json.loads((run_dir / "summary.json").read_text())
    except ValueError as e:
        raise AuditError(f"{run_dir / 'summary.json'}: not valid JSON ({e})") from None


def audit_config(
    cfg: DictConfig, out: Path, canaries: int, holdout: float, seed: int, length: int, delta: float | None = None
) -> tuple[DictConfig, list[str]]:
    """RUN_DIR's config with the audit block set, and the Hydra overrides the Flower apps
    compose it from. δ is pinned to the run's (``delta``): the default δ follows the user
    count, which canaries change, and the audit must train under the original plan's δ."""
    want = OmegaConf.to_container(cfg, resolve=True)
    want["audit"] = {"canaries": canaries, "canary_length": length, "holdout": holdout, "seed": seed}
    # The audit's clients are other users: they must not read or spend the audited run's ledgers.
    if want["privacy"].get("ledger_dir"):
        want["privacy"]["ledger_dir"] = None
    if want["privacy"].get("enabled") and want["privacy"].get("delta") is None and delta is not None:
        want["privacy"]["delta"] = float(delta)
    overrides = overrides_for(want)
    audit_cfg = compose(overrides)
    audit_cfg.output_dir = str(out)
    # What the apps will see: app_overrides adds output_dir and rewrites dataset.path.
    try:
        seen = OmegaConf.to_container(compose(parse_overrides(app_overrides(overrides, out))))
    except Exception as e:  # Hydra's parse errors are not ValueErrors; keep it to one line
        raise AuditError(f"the Flower apps cannot compose the audit config: {str(e).splitlines()[0]}") from e
    if seen != OmegaConf.to_container(audit_cfg):
        raise AuditError(f"the Flower apps would not reproduce the audit config from {' '.join(overrides)}")
    return audit_cfg, overrides


# --- Hydra overrides that reproduce a resolved config (the Flower apps compose from them) ---


def overrides_for(want: dict) -> list[str]:
    """Group choices plus leaf overrides such that ``compose(overrides)`` equals ``want`` on
    every key today's conf/ has (output_dir aside). Keys added to conf/ since the run keep
    their defaults and keys it no longer has are dropped (logged): nothing reads those."""
    want = {k: v for k, v in want.items() if k != "output_dir"}
    choices = [f"{g}={_closest_option(g, want.get(g))}" for g in GROUPS]
    have, need = _flatten(_composed(choices)), _flatten(want)
    overrides = choices + [f"{k}={_value(v)}" for k, v in sorted(need.items()) if k in have and have[k] != v]
    if have.keys() ^ need.keys():
        log.info(
            "fedrec audit: config keys new since the run keep their defaults, removed ones are dropped: %s",
            ", ".join(sorted(have.keys() ^ need.keys())),
        )
    got = _flatten(_composed(overrides))
    diff = sorted(k for k in got.keys() & need.keys() if got[k] != need[k])
    if diff:
        raise AuditError(f"cannot express the run's config as Hydra overrides (differs at {', '.join(diff[:5])})")
    return overrides


def _composed(overrides: list[str]) -> dict:
    cfg = OmegaConf.to_container(compose(overrides), resolve=True)
    cfg.pop("output_dir", None)
    return cfg


_MISSING = object()
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_/.:\-]*\Z")


def _closest_option(group: str, node) -> str:
    """The conf/<group>/ option sharing most keys and values with the run's ``group`` node."""
    target = _flatten(node or {})
    options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))

    def distance(option: str) -> int:
        have = _flatten(OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml")))
        return sum(have.get(k, _MISSING) != target.get(k, _MISSING) for k in have.keys() | target.keys())

    return min(options, key=distance)


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _value(v) -> str:
    """A value in Hydra's override grammar."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_value(x)}" for k, x in v.items()) + "}"
    s = str(v)
    if _PLAIN.match(s) and s.lower() not in ("true", "false", "null", "inf", "nan"):
        return s  # unquoted, so that app_overrides still recognises dataset.path=PATH
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --- scoring -------------------------------------------------------------------------------


def score_run(cfg: DictConfig, summary: dict, train_dir: Path, draws: int = 8) -> dict:
    """The audit.json body for a finished audit training run (without run/train_dir/seconds)."""
    from common.data.run import load_run_data
    from common.device import resolve_device
    from common.model.factory import build_model
    from common.privacy.plans import default_delta
    from common.serialization import load_adapter

    run = load_run_data(cfg)
    info = run.audit
    adapter = train_dir / "adapter"
    if info is None or not (adapter / "adapter_model.safetensors").is_file():
        raise AuditError(f"{adapter}: no trained adapter with audit canaries to score")
    saved = json.loads((adapter / "adapter_config.json").read_text())
    model_cfg = cfg.copy()
    model_cfg.model = saved["model"]  # e.g. sasrec_ids trains with its own model settings
    model = build_model(model_cfg, run)
    load_adapter(model, adapter)
    model.to(resolve_device(cfg.device))
    # A one-item history has no (input, next item) pair: no loss, and it was never trained on.
    members = [run.split.train[r] for r in info.member_rows if len(run.split.train[r]) >= 2]
    outsiders = [s for s in info.holdout_train if len(s) >= 2]
    seqs = [*info.canary_train, *members, *outsiders]
    scores = membership_scores(model, seqs, run.data.num_items, int(cfg.model.num_negatives), draws, seed=int(cfg.seed))
    m, k = len(info.canary_train), len(members)
    canary, member, outsider = scores[:m], scores[m : m + k], scores[m + k :]
    privacy = summary.get("privacy", {})
    private = bool(privacy.get("enabled", privacy.get("epsilon_max") is not None))
    theory = privacy.get("epsilon_max") if private else None
    # Not private: no δ was promised; use the one a DP run on the same users would, so bounds compare.
    real_users = len(info.member_rows) + len(info.holdout_users)
    delta = float(privacy["delta"]) if private and privacy.get("delta") else default_delta(real_users)
    bound = audit_canaries(canary, info.included, delta)
    fpr, tpr = roc_curve(member, outsider)
    return {
        "private": private,
        "epsilon_theory": theory,
        "delta": delta,
        "canaries": bound,
        "mia": {
            "members": int(len(member)),
            "non_members": int(len(outsider)),
            "auc": roc_auc(member, outsider),
            "roc": {"fpr": fpr, "tpr": tpr},
            "score": "minus the per-user training loss",
        },
        "violation": bool(theory is not None and bound["epsilon_lower_bound"] > theory),
    }


@torch.no_grad()
def membership_scores(
    model, seqs: list[np.ndarray], num_items: int, num_negatives: int, draws: int = 8, seed: int = 0, batch: int = 256
) -> np.ndarray:
    """Minus each user's training loss (the loss DP-SGD minimised), averaged over ``draws``
    draws of sampled negatives from a fixed generator; dropout off."""
    from common.training.local import user_loss

    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    total = np.zeros(len(seqs))
    for _ in range(max(1, draws)):
        for i in range(0, len(seqs), batch):
            loss = user_loss(model, seqs[i : i + batch], model.max_len, num_items, num_negatives, gen, device)
            total[i : i + batch] += loss.cpu().numpy()
    return -total / max(1, draws)


def _setup_logging() -> None:
    logging.getLogger("flwr").propagate = False  # Flower prints its own lines (as simulations.run does)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's state DB set-up chatter
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.audit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_arguments(sub.add_parser("run", help="audit one completed run folder"))
    args = parser.parse_args(argv)
    return run_from_args(args, prog="simulations.audit run")


if __name__ == "__main__":
    sys.exit(main())
