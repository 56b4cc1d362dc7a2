"""fedrec ClientApp: local DP-SGD training of the shared adapter and local evaluation.

Thin wiring; the logic lives in ``common/``. The client's privacy ledger (every round's
steps, noise and ε) lives in its Flower ``context.state``, or on disk when a state directory
is given, so ε persists across rounds and restarts and is never reset; a client whose next
round would exceed ``privacy.budget_epsilon`` refuses to train.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Error, Message, MessageType
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from common.config import compose
from common.console import quiet_third_party
from common.data.catalogue import catalogue_source, check_catalogue
from common.data.run import load_run_data, training_sequences
from common.deployment.node import client_id_of, is_deployed_node, is_deployment, load_client_data, node_device
from common.device import resolve_device
from common.model.factory import build_model
from common.model.families import family_of
from common.privacy.accounting import PrivacyConfigError
from common.privacy.distributed import check_protocol, noisy_gradient_sum
from common.privacy.ledger import (
    PRIOR,
    REFUSED,
    TRAINED,
    LedgerRow,
    PrivacyLedger,
    budget_of,
    check_server_record,
    cross_checked,
    epsilon_after,
    ledger_path,
    within_budget,
)
from common.privacy.plans import ClientPlan, federated_plan, is_central, is_distributed, learning_rate, pooled_plan
from common.privacy.popularity_prior import PRIOR_KEY, noisy_share, user_counts
from common.secagg.protocol import dropout_clients
from common.serialization import get_weights, set_weights
from common.training.local import mean_loss, round_seed, trainable_sequences
from common.training.updates import RoundRefused, check_finite, clip_update, update

log = logging.getLogger("fedrec")
quiet_third_party()  # FEDREC_VERBOSE=1 shows Flower's per-round INFO lines again
LEDGER_KEY = "dp_ledger"
PLAN_KEY = "dp_plan"


@lru_cache(maxsize=8)
def _config(overrides: str):
    return compose(overrides)


@lru_cache(maxsize=8)
def _run_data(overrides: str):
    # A client object lives for one message: without this, every message re-derived
    # load_run_data's cache key from the config (~8 ms; 6,040 one-user clients pay it each).
    return load_run_data(_config(overrides))


class RecommenderClient(NumPyClient):
    def __init__(self, context: Context) -> None:
        self.cfg = _config(str(context.run_config.get("overrides", "")))
        node = context.node_config
        if is_deployed_node(node):  # a SuperNode on premises: its own data folder only
            self.client_id = client_id_of(node)
            self.partition = 0
            self.run = load_client_data(self.cfg, node)
        elif is_deployment(self.cfg):
            raise ValueError(
                "deployment.catalogue is set but this SuperNode has no node-config data-path (see docs/deployment.md)"
            )
        else:
            self.client_id = self.partition = int(node["partition-id"])
            self.run = _run_data(str(context.run_config.get("overrides", "")))
        if self.partition >= self.run.num_clients:
            raise ValueError(f"partition-id {self.client_id} but the partition has {self.run.num_clients} clients")
        self.rows = self.run.partitions[self.partition]
        self.family = family_of(self.cfg.model.name)
        self.state = context.state
        self.ledger_path = ledger_path(self.cfg, node, self.client_id)
        self.device = resolve_device(node_device(self.cfg, node))
        self.items_file = catalogue_source(self.cfg, node)  # named when the catalogue differs

    def _model(self, parameters: list[np.ndarray]):
        model = build_model(self.cfg, self.run)
        set_weights(model, parameters)
        return model.to(self.device)

    def _ledger(self) -> PrivacyLedger:
        record = self.state.config_records.get(LEDGER_KEY)
        return PrivacyLedger.open(self.ledger_path, str(record["rows"]) if record is not None else None)

    def _record(
        self, ledger: PrivacyLedger, server_round: int, status: str, steps: int, noise: float, q: float, delta: float
    ) -> dict:
        """Append this round to the ledger (ε by both accountants) and return the fit metrics
        that report it."""
        state = ledger.accountant().add(noise, q, steps)  # the rows so far plus this round
        accountant = self.cfg.privacy.accountant
        eps, check, check_name, agree = cross_checked(state, delta, accountant)
        budget = budget_of(self.cfg.privacy)
        row = ledger.append(
            LedgerRow(
                server_round,
                status,
                steps,
                state.steps,
                q,
                noise,
                eps,
                check,
                accountant,
                check_name,
                agree,
                delta,
                budget,
            )
        )
        # Mirrored in the Flower state even with a file: a file that later holds fewer rows
        # than the state remembers is refused (see PrivacyLedger.open).
        self.state.config_records[LEDGER_KEY] = ConfigRecord({"rows": ledger.to_json()})
        if not agree:
            log.warning(
                "client %d: accountants disagree: %s ε=%.4f, %s ε=%.4f",
                self.client_id,
                accountant,
                eps,
                check_name,
                check,
            )
        metrics = {k: v for k, v in row.items() if v is not None and k not in ("round", "status", "steps")}
        metrics["ledger_status"] = status
        return metrics

    def _plan(self) -> ClientPlan:
        """The DP plan, computed at the first round and kept in the client's state: the noise
        multiplier is fixed for the whole plan, never recomputed per round."""
        record = self.state.config_records.get(PLAN_KEY)
        if record is not None:
            return ClientPlan.from_dict(dict(record))
        plan = federated_plan(self.cfg, self.run, self.partition)
        self.state.config_records[PLAN_KEY] = ConfigRecord(plan.to_dict())
        return plan

    def _check_catalogue(self, config) -> None:
        """Every party must read the same item texts in the same order: a client whose catalogue
        differs from the server's fails the round rather than train the wrong items' rows."""
        check_catalogue(config, self.run.data, self.items_file, f"client {self.client_id}")

    def fit(self, parameters, config):
        start = time.perf_counter()
        self._check_catalogue(config)
        model = self._model(parameters)
        server_round = int(config.get("server_round", 0))
        seqs = trainable_sequences(training_sequences(self.run.split, self.rows))
        seed = round_seed(self.cfg.seed, server_round, self.client_id)
        if is_distributed(self.cfg):
            return self._fit_distributed(model, seqs, seed, start, server_round, config)
        dp = None
        metrics: dict = {"client_id": self.client_id, "num_users": len(seqs)}
        if self.cfg.privacy.enabled and not is_central(self.cfg):
            plan = self._plan()
            ledger = self._ledger()
            after = self._over_budget(
                ledger, config, plan.dp.noise_multiplier, plan.sample_rate, plan.steps_per_round, plan.delta
            )
            if after is not None:
                log.warning(
                    "client %d: refusing round %d: it would bring ε to %.3f, over privacy.budget_epsilon=%s",
                    self.client_id,
                    server_round,
                    after,
                    budget_of(self.cfg.privacy),
                )
                metrics.update(
                    self._record(
                        ledger, server_round, REFUSED, 0, plan.dp.noise_multiplier, plan.sample_rate, plan.delta
                    )
                )
                # Weight 0 and no change: the round's aggregate goes on without this client.
                metrics.update(budget_refused=True, train_loss=float("nan"), steps=0)
                return [np.zeros_like(p) for p in parameters], 0, metrics
            dp = plan.dp
            if self.cfg.privacy.seeded_noise:
                dp = replace(dp, noise_seed=seed)
        if self.cfg.strategy.name == "qfedavg":
            # q-FFL's F_k: the received global model's loss on this client's users.
            metrics["loss_before"] = mean_loss(model, seqs, self.run.data.num_items, self.cfg.model.num_negatives, seed)
        result = self.family.function("train")(
            model, self.run, self.rows, seqs, self.cfg, learning_rate(self.cfg), seed, dp
        )
        if dp is not None:
            # Record what Opacus' own accountant saw, after checking it is the planned mechanism.
            for noise, q, _ in result["history"]:
                if abs(noise - plan.dp.noise_multiplier) > 1e-12 or abs(q - plan.sample_rate) > 1e-12:
                    raise RuntimeError(
                        f"client {self.client_id}: trained with σ={noise}, q={q}, "
                        f"planned σ={plan.dp.noise_multiplier}, q={plan.sample_rate}"
                    )
            steps = sum(s for _, _, s in result["history"])
            metrics.update(
                self._record(
                    ledger, server_round, TRAINED, steps, plan.dp.noise_multiplier, plan.sample_rate, plan.delta
                )
            )
        delta = update(get_weights(model), parameters)
        # Refused here, not averaged in: under SecAgg+ a NaN would be quantized into a finite
        # but meaningless sum the server cannot tell from a real one.
        check_finite(delta, f"client {self.client_id}, round {server_round}")
        if is_central(self.cfg):
            # DP-FedAvg: the server's DP wrapper sends the clip norm; equal weights keep one
            # client's influence on the mean at C/K, which its noise is sized for.
            delta, _ = clip_update(delta, float(config[KEY_CLIPPING_NORM]))
            metrics.update(train_loss=result["loss"], steps=result["steps"])
            return delta, 1, metrics
        if self.cfg.secagg.enabled:  # keep every coordinate inside SecAgg+'s clipping range
            delta, norm = clip_update(delta, self.cfg.secagg.update_clip_norm)
            if norm > self.cfg.secagg.update_clip_norm:  # logged locally: the norm of one
                # client's update is exactly what secure aggregation hides from the server
                log.warning(
                    "client %d: update norm %.3f clipped to secagg.update_clip_norm=%s",
                    self.client_id,
                    norm,
                    self.cfg.secagg.update_clip_norm,
                )
        elif self.cfg.strategy.get("max_update_norm") is not None:  # the server's bound on plain updates
            delta, _ = clip_update(delta, float(self.cfg.strategy.max_update_norm))
        metrics.update(train_loss=result["loss"], steps=result["steps"], fit_seconds=time.perf_counter() - start)
        return delta, len(seqs), metrics

    def _over_budget(self, ledger, config, noise: float, q: float, steps: int, delta: float, extra=()):
        """The ε this round would bring the client to when that is over its budget, else None;
        first, the server's record of this client must match the ledger (never reset)."""
        check_server_record(ledger, config, self.client_id)
        state = ledger.accountant()  # a fresh history built from the rows
        state.extend(extra)
        after = epsilon_after(state, noise, q, steps, delta, self.cfg.privacy.accountant)
        return None if within_budget(after, budget_of(self.cfg.privacy)) else after

    def _fit_distributed(self, model, seqs, seed: int, start: float, server_round: int, config):
        """One pooled DP-SGD step: this client's noisy sum of clipped user gradients, sent
        with weight 1 so that the secure mean times the survivors is the sum. When the server
        asks for the popularity prior (first round), its noisy count share is appended."""
        plan = pooled_plan(self.cfg, self.run)
        with_prior = bool(config.get(PRIOR_KEY))
        if with_prior and plan.prior is None:
            raise PrivacyConfigError(
                f"client {self.client_id}: the server asked for the popularity prior but this "
                "client's config has privacy.popularity_prior=0"
            )
        ledger = self._ledger()
        prior = plan.prior.history() if with_prior else ()
        after = self._over_budget(ledger, config, plan.noise_multiplier, plan.sample_rate, 1, plan.delta, prior)
        if after is not None:
            # No noise share and no row: under SecAgg+ the server counts this client as dropped
            # and the others' shares still reach the planned noise (the threshold is >= t).
            raise PrivacyConfigError(
                f"client {self.client_id}: the next pooled step would bring ε to {after:.3f}, "
                f"over privacy.budget_epsilon={budget_of(self.cfg.privacy)}"
            )
        noise_seed = seed if self.cfg.privacy.seeded_noise else None
        grad_sum, _ = noisy_gradient_sum(
            model,
            seqs,
            self.run.data.num_items,
            self.cfg.model.num_negatives,
            plan,
            seed=noise_seed,
        )
        if with_prior:
            gen = np.random.default_rng(secrets.randbits(63) if noise_seed is None else noise_seed + 1)
            grad_sum.append(noisy_share(user_counts(seqs, self.run.data.num_items), plan.prior, gen))
            prior_row = self._record(ledger, server_round, PRIOR, 1, plan.prior.noise_multiplier, 1.0, plan.delta)
        # Every client records the pooled mechanism's step: its users are protected by it.
        ledger_metrics = self._record(
            ledger, server_round, TRAINED, 1, plan.noise_multiplier, plan.sample_rate, plan.delta
        )
        check_finite(grad_sum, f"client {self.client_id}, round {server_round}")
        limit = self.cfg.secagg.clipping_range
        clamped = int(sum((np.abs(g) > limit).sum() for g in grad_sum))
        if clamped:  # logged here, never sent: it depends on this client's lightly-noised sum
            log.warning("client %d: %d values beyond secagg.clipping_range will be clamped", self.client_id, clamped)
        # Only what the pooled mechanism covers or the plan fixes goes back in clear: not the
        # batch size or timings, which would reveal the Poisson sample.
        metrics = {
            "client_id": self.client_id,
            "num_users": len(seqs),
            **ledger_metrics,
            "train_loss": float("nan"),
            "steps": 1,
        }
        if with_prior:  # the server copies this row into the run's ledger too
            metrics.update({f"prior_{k}": v for k, v in prior_row.items() if k != "ledger_status"})
        return grad_sum, 1, metrics

    def evaluate(self, parameters, config):
        self._check_catalogue(config)
        model = self._model(parameters)
        loss, metrics = self.family.function("evaluate")(model, self.run, self.rows, self.cfg)
        metrics["client_id"] = self.client_id
        return loss, len(self.rows), metrics


def client_fn(context: Context):
    return RecommenderClient(context).to_client()


def secagg_when_asked(msg: Message, ctxt: Context, call_next) -> Message:
    """Run Flower's SecAgg+ client side for the rounds the server runs it; let plain
    messages through (``secaggplus_mod`` alone rejects them)."""
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if msg.metadata.message_type != MessageType.TRAIN or configs is None:
        return call_next(msg, ctxt)
    if configs.get(Key.STAGE) == Stage.SETUP:
        _check_setup(configs, ctxt)
    if configs.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS:
        _maybe_drop_out(msg, ctxt)
        cfg = _config(str(ctxt.run_config.get("overrides", "")))
        if cfg.privacy.get("seeded_noise"):
            # Flower's stochastic rounding draws from NumPy's global RNG: seed it too, so that
            # a seeded run reproduces its metrics exactly (tests and debugging only).
            np.random.seed(
                [int(cfg.seed), int(msg.metadata.group_id or 0), int(ctxt.node_config.get("partition-id", 0))]
            )
    return secaggplus_mod(msg, ctxt, call_next)


def _check_setup(configs, ctxt: Context) -> None:
    """Distributed noise is only private if the server runs the protocol as planned."""
    cfg = _config(str(ctxt.run_config.get("overrides", "")))
    if is_distributed(cfg):
        plan = pooled_plan(cfg, load_run_data(cfg))
        check_protocol(plan, int(configs[Key.SAMPLE_NUMBER]), int(configs[Key.THRESHOLD]))


def _maybe_drop_out(msg: Message, ctxt: Context) -> None:
    """Simulated dropout (secagg.simulate_dropout): vanish after sharing keys, before sending
    the masked update — the case SecAgg+ must tolerate."""
    cfg = _config(str(ctxt.run_config.get("overrides", "")))
    share = cfg.secagg.get("simulate_dropout", 0.0)
    if share:
        dropped = dropout_clients(int(ctxt.node_config["num-partitions"]), share, cfg.seed, int(msg.metadata.group_id))
        if int(ctxt.node_config["partition-id"]) in dropped:
            raise RoundRefused(f"simulated dropout of client {ctxt.node_config['partition-id']}")


def refuse_in_one_line(msg: Message, ctxt: Context, call_next) -> Message:
    """A refused round (diverged update, simulated dropout) is one log line and an error
    reply; anything else is a real crash and keeps Flower's traceback."""
    try:
        return call_next(msg, ctxt)
    except RoundRefused as refusal:
        log.warning("%s", refusal)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(refusal)), reply_to=msg)


def count_bytes(msg: Message, ctxt: Context, call_next) -> Message:
    """With simulation.measure_bytes, log the serialized size of every message this client
    receives and sends (all SecAgg+ stages included) to <output_dir>/bytes.jsonl."""
    cfg = _config(str(ctxt.run_config.get("overrides", "")))
    if not cfg.simulation.get("measure_bytes") or not cfg.output_dir:
        return call_next(msg, ctxt)
    from flwr.common.serde import recorddict_to_proto

    out = call_next(msg, ctxt)
    row = {
        "round": int(msg.metadata.group_id or 0),
        "client": int(ctxt.node_config.get("partition-id", -1)),
        "type": msg.metadata.message_type,
        "down": recorddict_to_proto(msg.content).ByteSize(),
        "up": recorddict_to_proto(out.content).ByteSize() if out.has_content() else 0,
    }
    with open(Path(cfg.output_dir) / "bytes.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")  # one short append per message: atomic on POSIX
    return out


app = ClientApp(client_fn=client_fn, mods=[refuse_in_one_line, count_bytes, secagg_when_asked])
