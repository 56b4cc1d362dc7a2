"""The server's checkpoint (``RUN_DIR/checkpoint/server_state.safetensors``) and the checks that
decide whether a run's state may carry over: the config and the item catalogue.

After every completed round the ServerApp writes one safetensors file, atomically (temp +
rename): the global adapter, the strategy's optimizer state (distributed noise), and, in the
file's metadata, the round, the strategy's bookkeeping, the wall-clock seconds so far, the
config keys that must not change and the catalogue's fingerprints. ``resume=true`` continues
from it at the next round. The last round counts as completed only once summary.json is
written, so a run killed while writing its result redoes its last round.

Keys that may change on resume (``MAY_CHANGE``): ``resume`` and ``output_dir`` themselves,
``device``, ``cache_dir`` and ``simulation.*`` (where and on what the run executes). Every
other key changes what the remaining rounds compute or what the DP plan is (``num_rounds``
sets the noise multiplier for the whole plan), so resuming with it changed is refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

CHECKPOINT = Path("checkpoint") / "server_state.safetensors"
MAY_CHANGE = ("resume", "output_dir", "device", "cache_dir", "simulation")
_META = "fedrec_checkpoint"
log = logging.getLogger("fedrec")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message is one line naming the file."""


@dataclass
class ServerCheckpoint:
    round: int  # the last completed round
    weights: list[np.ndarray]  # the global adapter after that round (Flower's parameter order)
    strategy: dict = field(default_factory=dict)  # RecommenderFedAvg.state_dict()
    optimizer: dict | None = None  # a torch optimizer's state_dict (distributed noise)
    seconds: float = 0.0  # wall-clock seconds the run has taken so far, all processes
    config: dict = field(default_factory=dict)  # fixed_config() of the run
    catalogue: dict = field(default_factory=dict)  # catalogue_fingerprint() of the run
    resumed_from: list[int] = field(default_factory=list)  # rounds earlier processes resumed from


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT


def save_checkpoint(run_dir: str | Path, ckpt: ServerCheckpoint) -> Path:
    """Write ``ckpt`` atomically: readers (and a resume) see the previous round's or this one's."""
    from safetensors.numpy import save_file

    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"weight.{i:05d}": np.ascontiguousarray(w) for i, w in enumerate(ckpt.weights)}
    opt_meta = None
    if ckpt.optimizer is not None:
        arrays, opt_meta = _flatten_optimizer(ckpt.optimizer)
        tensors.update(arrays)
    meta = {
        "round": ckpt.round,
        "strategy": ckpt.strategy,
        "optimizer": opt_meta,
        "seconds": ckpt.seconds,
        "config": ckpt.config,
        "catalogue": ckpt.catalogue,
        "resumed_from": ckpt.resumed_from,
    }
    from common.tracking.store import replace_durably

    replace_durably(path, lambda tmp: save_file(tensors, str(tmp), metadata={_META: json.dumps(meta, sort_keys=True)}))
    return path


def load_checkpoint(run_dir: str | Path) -> ServerCheckpoint | None:
    """The checkpoint in ``run_dir``, or None if there is none."""
    from safetensors import safe_open

    path = checkpoint_path(run_dir)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "np") as f:
            meta = json.loads((f.metadata() or {})[_META])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # a foreign or damaged file: say which, not a safetensors traceback
        raise CheckpointError(f"{path}: not a readable fedrec checkpoint ({type(e).__name__}: {e})") from None
    weights = [tensors[k] for k in sorted(k for k in tensors if k.startswith("weight."))]
    optimizer = _unflatten_optimizer(tensors, meta["optimizer"]) if meta.get("optimizer") else None
    return ServerCheckpoint(
        int(meta["round"]),
        weights,
        meta["strategy"],
        optimizer,
        float(meta["seconds"]),
        meta["config"],
        meta["catalogue"],
        list(meta.get("resumed_from", [])),
    )


def clear_checkpoint(run_dir: str | Path) -> None:
    """A fresh run in a folder must not leave an older run's checkpoint to be resumed from."""
    checkpoint_path(run_dir).unlink(missing_ok=True)


def _flatten_optimizer(state: dict) -> tuple[dict[str, np.ndarray], dict]:
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if hasattr(value, "detach"):
                arrays[f"opt.{index}.{name}"] = np.ascontiguousarray(value.detach().cpu().numpy())
            else:
                scalars.setdefault(str(index), {})[name] = value
    return arrays, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, np.ndarray], meta: dict) -> dict:
    import torch

    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = torch.as_tensor(value)
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def fixed_config(cfg: DictConfig) -> dict:
    """The resolved config without the keys a resume may change (``MAY_CHANGE``)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in MAY_CHANGE:
        container.pop(key, None)
    return json.loads(json.dumps(container, sort_keys=True, default=str))  # JSON-equal form


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return {k.rstrip("."): v for k, v in out.items()}


def check_config(ckpt: ServerCheckpoint, cfg: DictConfig, run_dir: str | Path, source: Path | None = None) -> None:
    """Refuse to resume with a config that differs in any key outside ``MAY_CHANGE``."""
    old, new = _flat(ckpt.config), _flat(fixed_config(cfg))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>"))
    if changed:
        shown = ", ".join(f"{k}: {old.get(k, '<unset>')} -> {new.get(k, '<unset>')}" for k in changed[:4])
        more = f" (+{len(changed) - 4} more)" if len(changed) > 4 else ""
        where = source or checkpoint_path(run_dir)
        raise CheckpointError(
            f"resume=true: {where} was written with another config: {shown}"
            f"{more}; only {', '.join(MAY_CHANGE)}.* may change on resume"
        )


def check_completed_config(cfg: DictConfig, run_dir: str | Path) -> None:
    """A completed run without a checkpoint (written before checkpoints existed): its
    config.yaml must match, or resume=true would return another config's result as this one's."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(
            f"resume=true: {run_dir} holds a summary.json but neither a checkpoint nor a "
            "config.yaml to check it against; use a new output_dir"
        )
    check_config(ServerCheckpoint(0, [], config=fixed_config(OmegaConf.load(path))), cfg, run_dir, path)


def check_ledgers_survive(cfg: DictConfig) -> None:
    """Per-client ε ledgers kept only in Flower's in-memory state die with the killed process:
    resumed clients would start from ε=0 and under-report the spend. Refuse instead."""
    privacy = cfg.privacy
    per_client = privacy.enabled and privacy.get("noise") in ("local", "distributed")
    deployed = bool((cfg.get("deployment") or {}).get("catalogue"))  # ledgers in each SuperNode's state-dir
    # A simulation keeps them under its run folder by default (common.privacy.ledger.ledger_path).
    if per_client and not deployed and not privacy.get("ledger_dir") and not cfg.get("output_dir"):
        raise CheckpointError(
            "resume=true with privacy on needs privacy.ledger_dir or the run folder (the "
            "clients' ε ledgers on disk); without them their ledgers were lost with the killed "
            "run"
        )


def resume_point(cfg: DictConfig, run_dir: str | Path) -> ServerCheckpoint | None:
    """For ``resume=true``: the checkpoint to continue from (checked against ``cfg``), or None
    when the folder has none (no round completed, so the run starts at round 1)."""
    if not cfg.get("resume"):
        return None
    if not cfg.get("output_dir"):  # a new timestamped folder would silently start over
        raise CheckpointError("resume=true needs output_dir=RUN_DIR, the folder of the run to continue")
    check_ledgers_survive(cfg)
    ckpt = load_checkpoint(run_dir)
    if ckpt is not None:
        check_config(ckpt, cfg, run_dir)
    elif (Path(run_dir) / "summary.json").is_file():
        check_completed_config(cfg, run_dir)
    return ckpt


def is_complete(cfg: DictConfig, run_dir: str | Path) -> bool:
    """Whether ``resume=true`` finds a finished run: summary.json is written only when every
    round completed (and a resumed run removes it before it continues)."""
    return bool(cfg.get("resume")) and (Path(run_dir) / "summary.json").is_file()


def keep_rounds_up_to(path: Path, last_round: int) -> int:
    """Drop the rows of rounds after ``last_round`` from a JSON-lines file (a round the killed
    process had half done), atomically; returns how many rows were dropped."""
    from common.tracking.store import atomic_write

    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for n, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if n < len(lines):  # only the last append can be cut off by a kill
                raise CheckpointError(f"{path}, line {n}: not a JSON row; the file is damaged") from None
            log.warning("%s: dropping a cut-off last line (the killed process was appending it)", path)
    kept = [line for line, row in zip(lines, rows) if int(row.get("round", 0)) <= last_round]
    if len(kept) != len(lines):
        atomic_write(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)
