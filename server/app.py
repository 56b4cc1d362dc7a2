"""fedrec ServerApp: FedAvg of the adapter over Flower's legacy workflow path.

The legacy ``LegacyContext`` + ``DefaultWorkflow`` path is the one Flower's SecAgg+ workflow
plugs into, so secure aggregation only swaps the fit workflow.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key
from flwr.server.workflow.default_workflows import default_evaluate_workflow, default_fit_workflow

from common.config import compose, to_yaml
from common.console import quiet_third_party
from common.data.catalogue import catalogue_fingerprint, catalogue_source, check_catalogue
from common.deployment.node import check_server_plans, is_deployment, load_server_data
from common.model.factory import adapter_config, build_model
from common.privacy.plans import central_plan_for, is_central, is_distributed
from common.serialization import get_weights, num_bytes, save_adapter, set_weights
from common.tracking.checkpoint import (
    ServerCheckpoint,
    clear_checkpoint,
    fixed_config,
    is_complete,
    keep_rounds_up_to,
    resume_point,
    save_checkpoint,
)
from common.tracking.progress import RunProgress
from common.tracking.store import RunStore, atomic_write
from server.secure import distributed_noise, fit_workflow
from server.strategy import RecommenderFedAvg
from server.summary import central_ledger, central_privacy, federated_summary

log = logging.getLogger("fedrec")
quiet_third_party()  # FEDREC_VERBOSE=1 shows Flower's per-round INFO lines again
app = ServerApp()


def output_dir(cfg) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    return Path("runs") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


@app.main()
def main(grid: Grid, context: Context) -> None:
    started = time.perf_counter()
    cfg = compose(str(context.run_config.get("overrides", "")))
    store = RunStore(output_dir(cfg))
    ckpt = resume_point(cfg, store.dir)  # refuses a checkpoint written with another config
    if is_complete(cfg, store.dir):
        log.info("fedrec: %s already holds a completed run; resume=true has nothing to do", store.dir)
        return
    run = load_server_data(cfg)  # the whole data set; in a deployment only the item catalogue
    catalogue = catalogue_fingerprint(run.data)
    start_or_resume(cfg, store, run, ckpt)
    check_server_plans(cfg, run)  # refuse a bad δ or unreachable ε before any client trains
    model = build_model(cfg, run)
    initial = get_weights(model) if ckpt is None else ckpt.weights
    done = ckpt.round if ckpt is not None else 0
    s = cfg.strategy
    n = run.num_clients
    min_fit = min(n, max(s.min_fit_clients, 1))
    if is_distributed(cfg):
        min_fit = n  # every client's noise share in every step (clients check it too)
    central = central_plan_for(cfg, run) if is_central(cfg) else None
    strategy = RecommenderFedAvg(
        store=store,
        server_ledger=central_ledger(cfg, central, len(resumed_rounds(ckpt))) if central is not None else None,
        qffl=(float(s.q), 1.0 / float(s.qffl_lr)) if s.name == "qfedavg" else None,
        num_rounds=s.num_rounds,
        evaluate_every=s.evaluate_every,
        tolerate_dropouts=bool(cfg.secagg.enabled),
        **distributed_noise(cfg, run, initial),
        stop_on_failed_round=bool(cfg.secagg.enabled and cfg.secagg.on_failure == "stop"),
        fraction_fit=s.fraction_fit,
        fraction_evaluate=s.fraction_evaluate,
        min_fit_clients=min_fit,
        min_evaluate_clients=min_fit,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters(initial),
        progress=RunProgress(s.num_rounds, "round", "federated"),
        catalogue=catalogue,
        checkpoint=checkpointer(cfg, store, catalogue, started, ckpt),
        update_bound=float(central.clipping_norm) if central is not None else s.get("max_update_norm"),
        max_client_weight=max_client_weight(cfg, run),
        median_norm_ratio=s.get("median_norm_ratio"),
    )
    if ckpt is not None:
        strategy.load_state_dict(ckpt.strategy)
        if strategy.server_optimizer is not None:
            strategy.server_optimizer.opt.load_state_dict(ckpt.optimizer)
    workflow_strategy = strategy
    if central is not None:
        # Flower's DP-FedAvg wrapper: sends the clip norm, adds N(0, (σC/K)²) to the mean.
        workflow_strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, central.noise_multiplier, central.clipping_norm, central.num_sampled
        )
    # Flower numbers rounds 1..num_rounds: after round `done` it runs the rest, shifted.
    config = ServerConfig(num_rounds=s.num_rounds - done)
    legacy = LegacyContext(context=context, config=config, strategy=workflow_strategy)
    log.info(
        "fedrec: %d clients, rounds %d..%d, privacy=%s, secagg=%s",
        n,
        done + 1,
        s.num_rounds,
        "dp" if cfg.privacy.enabled else "none",
        cfg.secagg.protocol,
    )
    try:
        DefaultWorkflow(
            fit_workflow=shifted(fit_workflow(cfg, run) or default_fit_workflow, done),
            evaluate_workflow=shifted(default_evaluate_workflow, done),
        )(grid, legacy)
    except RuntimeError as e:  # the strategy's own stops (a failed secure round, failing clients)
        raise store.fail(str(e).strip().splitlines()[0]) from e
    finally:
        strategy.progress.close()

    weights = parameters_to_ndarrays(strategy.latest_parameters)
    check_trained(store, strategy, weights, s.num_rounds)
    set_weights(model, weights)
    save_adapter(model, adapter_config(cfg, run), store.dir / "adapter")
    if strategy.final_eval is None or strategy.rounds_completed < s.num_rounds:
        raise store.fail(f"run stopped after {strategy.rounds_completed}/{s.num_rounds} rounds; no summary written")
    seconds = (ckpt.seconds if ckpt is not None else 0.0) + time.perf_counter() - started
    summary = federated_summary(cfg, run, strategy, num_bytes(initial), seconds)
    resumes = resumed_rounds(ckpt)
    summary["timing"].update(resumed_from_round=resumes[-1] if resumes else None, resumed_from_rounds=resumes)
    if cfg.privacy.enabled and not is_central(cfg):
        # A round redone after a kill can push a client over its budget (README, Resuming): count refusals.
        summary["privacy"]["rounds_refused"] = sum(
            int(e.get("refused_rounds", 0)) for e in strategy.client_privacy.values()
        )
    if central is not None:
        summary["privacy"].update(central_privacy(cfg, central, s.num_rounds, len(resumes)))
        summary["privacy"]["resumes_counted"] = len(resumes)
    store.write_summary(summary)
    strategy.checkpoint(strategy, final=True)  # the last round completes with its summary


def max_client_weight(cfg, run) -> int | None:
    """The largest weight (user count) a plain update may claim: strategy.max_client_weight, else
    in a simulation the largest client's user count; a deployment's server knows no sizes."""
    if cfg.strategy.get("max_client_weight") is not None:
        return int(cfg.strategy.max_client_weight)
    if is_deployment(cfg):
        return None
    return max(len(rows) for rows in run.partitions)


def check_trained(store: RunStore, strategy: RecommenderFedAvg, weights: list[np.ndarray], rounds: int) -> None:
    """A run whose model never aggregated, or is not finite, must not look like a result: no
    adapter, no summary, one line (failed.txt) and a non-zero exit in the harness."""
    bad = [i for i, w in enumerate(weights) if not np.isfinite(w).all()]
    if bad:
        raise store.fail(
            f"the final model is not finite ({len(bad)} of {len(weights)} tensors hold NaN or Inf): "
            "training diverged; lower the learning rate (train.lr, or privacy.lr under DP)"
        )
    aggregated = strategy.rounds_completed - len(strategy.rounds_failed)
    if strategy.rounds_completed >= rounds and aggregated <= 0:
        raise store.fail(
            f"no round aggregated: {len(strategy.rounds_failed)} of {rounds} rounds failed secure "
            "aggregation, so the model is the untrained one; see the round warnings above"
        )


def start_or_resume(cfg, store: RunStore, run, ckpt: ServerCheckpoint | None) -> None:
    """A fresh run clears the folder; a resumed one keeps what its completed rounds wrote and
    drops the metrics of the round the killed process had half done. (Its privacy-ledger rows
    stay: the clients spent that ε and their own ledgers keep it too.)"""
    if ckpt is None:
        if cfg.get("resume"):
            # Nothing completed yet (or never started): resuming is starting, e.g. in a sweep.
            log.warning("fedrec: resume=true but %s holds no checkpoint; starting at round 1", store.dir)
        store.start(cfg)
        clear_checkpoint(store.dir)
        return
    check_catalogue(ckpt.catalogue, run.data, catalogue_source(cfg), "resume=true")
    store.summary_path.unlink(missing_ok=True)
    atomic_write(store.dir / "config.yaml", to_yaml(cfg))
    dropped = keep_rounds_up_to(store.dir / "metrics.jsonl", ckpt.round)
    log.info(
        "fedrec: resuming %s after round %d/%d (%d metrics row(s) of an unfinished round dropped)",
        store.dir,
        ckpt.round,
        cfg.strategy.num_rounds,
        dropped,
    )


def resumed_rounds(ckpt: ServerCheckpoint | None) -> list[int]:
    return [*ckpt.resumed_from, ckpt.round] if ckpt is not None else []


def checkpointer(cfg, store: RunStore, catalogue: dict, started: float, ckpt: ServerCheckpoint | None):
    """The strategy's end-of-round hook: the server state after every completed round. The
    last round is saved only after summary.json (``final=True``), so a process killed while
    writing its result redoes that round rather than leaving a run without a result."""
    prior = ckpt.seconds if ckpt is not None else 0.0
    config = fixed_config(cfg)

    def save(strategy: RecommenderFedAvg, final: bool = False) -> None:
        if strategy.rounds_completed >= strategy.num_rounds and not final:
            return
        opt = strategy.server_optimizer.opt.state_dict() if strategy.server_optimizer is not None else None
        save_checkpoint(
            store.dir,
            ServerCheckpoint(
                strategy.rounds_completed,
                parameters_to_ndarrays(strategy.latest_parameters),
                strategy.state_dict(),
                opt,
                prior + time.perf_counter() - started,
                config,
                catalogue,
                resumed_rounds(ckpt),
            ),
        )
        if os.environ.get("FEDREC_KILL_AFTER_ROUND") == str(strategy.rounds_completed):
            # Fault injection for the kill -9 test: die right after this round's checkpoint,
            # before the next round is sent (an outside kill would race the clients' training).
            os.kill(os.getpid(), signal.SIGKILL)

    return save


def shifted(workflow, done: int):
    """``workflow`` seeing the true round number when Flower counts from 1 after round ``done``
    (SecAgg+ and the clients' seeds and ledgers use it)."""
    if done == 0:
        return workflow

    def run_round(grid: Grid, context) -> None:
        record = context.state.config_records[MAIN_CONFIGS_RECORD]
        counted = int(record[Key.CURRENT_ROUND])
        record[Key.CURRENT_ROUND] = counted + done
        try:
            workflow(grid, context)
        finally:
            record[Key.CURRENT_ROUND] = counted

    return run_round
