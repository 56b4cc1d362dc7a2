"""fedrec ServerApp: FedAvg of the adapter over Flower's legacy workflow path.

The legacy ``LegacyContext`` + ``DefaultWorkflow`` path is the one Flower's SecAgg+ workflow
plugs into (DESIGN.md), so secure aggregation only swaps the fit workflow.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

from flwr.app import Context
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow

from common.config import compose
from common.run_store import RunStore, data_block, split_metrics
from common.serialization import get_weights, num_bytes, save_adapter, set_weights
from common.task import adapter_config, build_model, check_plans, load_run_data
from server.strategy import RecommenderFedAvg

log = logging.getLogger("fedrec")
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
    store.start(cfg)
    run = load_run_data(cfg)
    check_plans(cfg, run)  # refuse a bad δ or unreachable ε before any client trains
    model = build_model(cfg, run)
    initial = get_weights(model)
    s = cfg.strategy
    n = run.num_clients
    min_fit = min(n, max(s.min_fit_clients, 1))
    strategy = RecommenderFedAvg(
        store=store,
        num_rounds=s.num_rounds,
        evaluate_every=s.evaluate_every,
        fraction_fit=s.fraction_fit,
        fraction_evaluate=s.fraction_evaluate,
        min_fit_clients=min_fit,
        min_evaluate_clients=min_fit,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters(initial),
    )
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=s.num_rounds), strategy=strategy)
    log.info("fedrec: %d clients, %d rounds, privacy=%s", n, s.num_rounds, "dp" if cfg.privacy.enabled else "none")
    DefaultWorkflow()(grid, legacy)

    set_weights(model, parameters_to_ndarrays(strategy.latest_parameters))
    save_adapter(model, adapter_config(cfg, run), store.dir / "adapter")
    if strategy.final_eval is None or strategy.rounds_completed < s.num_rounds:
        raise RuntimeError(f"run stopped after {strategy.rounds_completed}/{s.num_rounds} rounds; no summary written")
    store.write_summary(federated_summary(cfg, run, strategy, num_bytes(initial), time.perf_counter() - started))


def federated_summary(cfg, run, strategy: RecommenderFedAvg, adapter_bytes: int, seconds: float) -> dict:
    per_client = {str(k): v for k, v in sorted(strategy.client_privacy.items())}
    eps = [v["epsilon"] for v in strategy.client_privacy.values()]
    rounds = strategy.round_seconds
    return {
        "kind": "federated",
        "metrics": split_metrics(strategy.final_eval.means()),
        "eval_users": strategy.final_eval.counts.get("", 0),
        "privacy": {
            "unit": "user",
            "enabled": bool(cfg.privacy.enabled),
            "mechanism": "dp-sgd (per client, local noise)" if cfg.privacy.enabled else "none",
            "accountant": cfg.privacy.accountant if cfg.privacy.enabled else None,
            "epsilon_target": cfg.privacy.epsilon if cfg.privacy.enabled else None,
            "delta": next(iter(strategy.client_privacy.values()))["delta"] if eps else None,
            "epsilon_max": max(eps) if eps else None,
            "per_client": per_client,
        },
        "fairness": {"clients": {str(k): v for k, v in sorted(strategy.client_eval.items())}},
        "timing": {
            "seconds_total": seconds,
            "seconds_per_round": sum(rounds) / len(rounds) if rounds else None,
            "rounds": strategy.rounds_completed,
        },
        "communication": {"adapter_bytes": adapter_bytes, "adapter_parameters": adapter_bytes // 4},
        "data": data_block(run),
    }
