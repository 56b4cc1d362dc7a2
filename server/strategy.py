"""FedAvg over the adapter, recording every round into the run folder.

Clients send updates (local − global); the new global adapter is the old one plus the mean
update weighted by each client's number of training users (``num_examples``). Under SecAgg+
the workflow hands this strategy the securely aggregated mean already (every result then
carries the same vector), so the same code serves both paths. Federated evaluation
aggregates metric *sums* and counts, so the result is exactly the user-weighted mean.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import fields

import numpy as np
from flwr.common import EvaluateIns, FitIns, FitRes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg

from common.fairness.groups import FairnessSums, fairness_block, fairness_row
from common.fairness.qffl import qffl_step
from common.fairness.rerank_eval import PREFIX as RERANK_PREFIX
from common.fairness.rerank_eval import client_rerank
from common.metrics.auc import AucHistogram
from common.metrics.ranking import MetricSums
from common.privacy.ledger import PRIOR, LedgerRow
from common.privacy.popularity_prior import PRIOR_KEY, prior_logits
from common.serialization import num_bytes
from common.tracking.progress import RunProgress, round_status
from common.tracking.store import RunStore
from common.training.updates import update_problem

log = logging.getLogger("fedrec")
LEDGER_FIELDS = tuple(f.name for f in fields(LedgerRow) if f.name not in ("round", "status", "steps"))


class RecommenderFedAvg(FedAvg):
    def __init__(
        self,
        store: RunStore,
        num_rounds: int,
        evaluate_every: int,
        tolerate_dropouts: bool = False,
        stop_on_failed_round: bool = False,
        server_optimizer=None,
        gradient_scale: float = 1.0,
        prior=None,
        prior_index: int | None = None,
        loss_plan=None,
        progress: RunProgress | None = None,
        server_ledger=None,
        qffl: tuple[float, float] | None = None,
        catalogue: dict[str, str] | None = None,
        checkpoint=None,
        update_bound: float | None = None,
        max_client_weight: int | None = None,
        median_norm_ratio: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        # Plain updates are checked against these before they are averaged (update_problem),
        # then scaled down to at most median_norm_ratio × the round's median update norm.
        self.update_bound = update_bound
        self.max_client_weight = max_client_weight
        self.median_norm_ratio = median_norm_ratio
        # Sent in every fit/evaluate config; each client checks its own catalogue against it.
        self.catalogue = dict(catalogue or {})
        # Called with this strategy after every completed round (the server's checkpoint).
        self.checkpoint = checkpoint
        # q-FedAvg: (q, L); the step weights each client's update by its pre-training loss^q.
        self.qffl = qffl
        # DP-FedAvg: the server's own accountant, a ledger row per round started.
        self.server_ledger = server_ledger
        self.progress = progress or RunProgress(0)
        # Distributed noise: results are noisy gradient sums (weight 1 each); the server
        # steps its optimizer on sum × gradient_scale (1 / expected batch) instead of adding.
        self.server_optimizer = server_optimizer
        self.gradient_scale = gradient_scale
        # The DP popularity prior (distributed noise): asked for until one round delivers it,
        # then added to the item bias (weights[prior_index]).
        self.prior = prior
        self.prior_index = prior_index
        self.prior_pending = prior is not None
        # Distributed noise: the plan that turns the summed loss coordinate into a DP loss.
        self.loss_plan = loss_plan
        # Only secure aggregation tolerates dropped clients: its sum is over the survivors.
        self.tolerate_dropouts = tolerate_dropouts
        self.stop_on_failed_round = stop_on_failed_round
        self.clients_dropped = 0
        self.rounds_failed: list[int] = []
        self.store = store
        self.num_rounds = num_rounds
        self.evaluate_every = evaluate_every
        self.latest_parameters = kwargs.get("initial_parameters")
        self.adapter_bytes = num_bytes(parameters_to_ndarrays(self.latest_parameters)) if self.latest_parameters else 0
        self.client_privacy: dict[int, dict] = {}
        self.final_eval: MetricSums | None = None
        self.final_fairness: FairnessSums | None = None
        self.final_rerank_fairness: FairnessSums | None = None  # eval.rerank: the re-ranked lists'
        self.client_rerank: dict[int, dict] = {}
        self.client_eval: dict[int, dict] = {}
        self.rounds_completed = 0
        self._row: dict = {}
        self._round_start = time.perf_counter()
        self.round_seconds: list[float] = []

    def _evaluates(self, server_round: int) -> bool:
        if server_round == self.num_rounds:
            return True
        return self.evaluate_every > 0 and server_round % self.evaluate_every == 0

    def configure_fit(self, server_round, parameters, client_manager):
        # The workflow's parameters are the global model: a DP wrapper around this strategy
        # may have added noise to what aggregate_fit returned.
        self.latest_parameters = parameters
        self._round_start = time.perf_counter()
        ins = super().configure_fit(server_round, parameters, client_manager)
        self._row = {"round": server_round, "clients": len(ins), "bytes_down_per_client": self.adapter_bytes}
        # The steps each client's ledger held when it last reported (fixed by the public plan,
        # so not private): a client whose ledger now holds fewer lost or reset it and refuses.
        steps = json.dumps({str(c): int(e["steps"]) for c, e in sorted(self.client_privacy.items()) if "steps" in e})
        extra = {PRIOR_KEY: True} if self.prior_pending else {}
        # The round number lets clients seed their local training reproducibly.
        return [
            (
                c,
                FitIns(
                    f.parameters,
                    {**f.config, "server_round": server_round, "ledger_steps": steps, **extra, **self.catalogue},
                ),
            )
            for c, f in ins
        ]

    def aggregate_fit(self, server_round, results, failures):
        results = by_client(results)
        if self.tolerate_dropouts and failures:
            # A dropped client can fail at several protocol stages: count clients, not errors.
            dropped = self._row["clients"] - len(results)
            log.warning(
                "round %d: %d client(s) dropped out; aggregating the other %d", server_round, dropped, len(results)
            )
            self.clients_dropped += dropped
            self._row["clients_dropped"] = dropped
        else:
            _raise_on_failures("train", server_round, failures)
        _raise_on_repeated_clients("train", server_round, results)
        refused = [r for _, r in results if r.metrics.get("budget_refused")]
        for r in refused:
            log.warning(
                "round %d: client %s refused to train: its privacy budget ε=%s is spent (ε so far %.3f)",
                server_round,
                r.metrics["client_id"],
                r.metrics.get("budget_epsilon"),
                r.metrics["epsilon"],
            )
        trained = [(c, r) for c, r in results if not r.metrics.get("budget_refused")]
        if not self.tolerate_dropouts:  # plain updates: under SecAgg+ results hold only the sum
            trained = self._admissible(server_round, trained)
        mean_update = dp_loss = None
        if trained and self.qffl is not None:
            old = parameters_to_ndarrays(self.latest_parameters)
            usable = [r for _, r in trained if np.isfinite(r.metrics.get("loss_before", np.nan))]
            models = [
                [w.astype(np.float64) + u for w, u in zip(old, parameters_to_ndarrays(r.parameters))] for r in usable
            ]
            losses = [float(r.metrics["loss_before"]) for r in usable]
            if len(usable) < len(trained):
                log.warning(
                    "round %d: q-FedAvg left out %d client(s) without a finite pre-training loss",
                    server_round,
                    len(trained) - len(usable),
                )
            if usable:
                self.latest_parameters = ndarrays_to_parameters(qffl_step(old, models, losses, *self.qffl))
            else:
                log.warning("round %d: q-FedAvg had no usable client; the global model is unchanged", server_round)
            self._row["qffl_clients"] = len(usable)
        elif trained:
            mean_update, _ = super().aggregate_fit(server_round, trained, [])
        if mean_update is not None:
            mean = parameters_to_ndarrays(mean_update)
            prior_sum = None
            if self.prior_pending:  # the clients appended their count shares
                mean, prior_sum = mean[:-1], mean[-1] * len(results)
            if self.loss_plan is not None and self.loss_plan.loss_weight:  # then the loss coordinate
                mean, loss_sum = mean[:-1], float(mean[-1][0]) * len(results) * self.loss_plan.send_scale
                self._row["train_loss_noise_std"] = self.loss_plan.loss_noise_std
                dp_loss = self.loss_plan.mean_loss(loss_sum)
            if self.server_optimizer is not None:
                scale = len(results) * self.gradient_scale  # mean × survivors = the sum
                new = self.server_optimizer.step([(m * scale).astype(np.float32) for m in mean])
                if prior_sum is not None:
                    new = self._add_prior(new, prior_sum)
            else:
                old = parameters_to_ndarrays(self.latest_parameters)
                # SecAgg+ dequantizes to float64: keep the adapter's own dtype.
                new = [(w + d).astype(w.dtype) for w, d in zip(old, mean)]
            self.latest_parameters = ndarrays_to_parameters(new)
        parameters = self.latest_parameters
        users = sum(r.num_examples for _, r in trained)
        loss = sum(r.num_examples * float(r.metrics["train_loss"]) for _, r in trained) / max(users, 1)
        if dp_loss is not None:
            loss = dp_loss
        eps = {}
        for _, r in results:
            m = r.metrics
            cid = int(m["client_id"])
            if "prior_epsilon" in m:  # the popularity prior's row, before this round's training row
                prior = {k.removeprefix("prior_"): v for k, v in m.items() if k.startswith("prior_")}
                self.store.append_ledger(
                    {"client_id": cid, "round": server_round, "status": PRIOR, "steps": 1, **_ledger_fields(prior)}
                )
            if "ledger_status" in m:
                self.store.append_ledger(
                    {
                        "client_id": cid,
                        "round": server_round,
                        "status": m["ledger_status"],
                        "steps": int(m.get("steps", 0)),
                        **_ledger_fields(m),
                    }
                )
            if "epsilon" in m:
                eps[cid] = float(m["epsilon"])
                entry = self.client_privacy.setdefault(cid, {"refused_rounds": 0})
                entry.update(
                    {
                        "epsilon": float(m["epsilon"]),
                        "delta": float(m["delta"]),
                        "noise_multiplier": float(m["noise_multiplier"]),
                        "sample_rate": float(m["sample_rate"]),
                        "steps": int(m["steps_total"]),
                        "users": int(m["num_users"]),
                        **{k: v for k, v in _ledger_fields(m).items() if k not in ("steps_total", "delta")},
                    }
                )
                if m.get("budget_refused"):
                    entry["refused_rounds"] += 1
                entry["budget_status"] = "exhausted" if entry["refused_rounds"] else "within"
        # Under SecAgg+ every result holds the aggregate, not what the client sent: measure
        # uploads there with simulation.measure_bytes instead.
        up = [] if self.tolerate_dropouts else [num_bytes(parameters_to_ndarrays(r.parameters)) for _, r in results]
        self._row.update(
            train_loss=loss if trained else None,
            clients_ok=len(results),
            clients_refused=len(refused),
            clients_failed=len(failures),
            epsilon_max=max(eps.values()) if eps else None,
            epsilon_per_client={str(k): v for k, v in sorted(eps.items())},
            bytes_up_per_client=max(up) if up else None,
            fit_seconds=time.perf_counter() - self._round_start,
        )
        return parameters, {}

    def _admissible(self, server_round: int, results: list) -> list:
        """The results whose update may enter the average; the others are logged and left out,
        so the model is unchanged by them (a round left with none keeps the model as it was)."""
        shapes = [w.shape for w in parameters_to_ndarrays(self.latest_parameters)]
        kept = []
        for c, r in results:
            problem = update_problem(
                parameters_to_ndarrays(r.parameters), shapes, r.num_examples, self.update_bound, self.max_client_weight
            )
            if problem is None:
                kept.append((c, r))
            else:
                log.warning(
                    "round %d: client %s's update rejected: %s", server_round, r.metrics.get("client_id", "?"), problem
                )
        if len(kept) < len(results):
            self._row["updates_rejected"] = len(results) - len(kept)
        if self.median_norm_ratio is not None and len(kept) > 2:
            kept = self._clip_to_median(server_round, kept)
        return kept

    def _clip_to_median(self, server_round: int, results: list) -> list:
        """A fixed bound must leave room for every honest update, so one client can still send
        many times a typical update; relative to this round's median norm it cannot."""
        arrays = [parameters_to_ndarrays(r.parameters) for _, r in results]
        norms = [float(np.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in u))) for u in arrays]
        limit = self.median_norm_ratio * float(np.median(norms))
        out = []
        for (c, r), u, norm in zip(results, arrays, norms):
            if norm > limit > 0:
                log.warning(
                    "round %d: client %s's update norm %.4g scaled to %.4g (strategy.median_norm_ratio=%s x "
                    "the round's median)",
                    server_round,
                    r.metrics.get("client_id", "?"),
                    norm,
                    limit,
                    self.median_norm_ratio,
                )
                scaled = [(a * (limit / norm)).astype(a.dtype) for a in u]
                r = FitRes(r.status, ndarrays_to_parameters(scaled), r.num_examples, r.metrics)
                self._row["updates_scaled"] = self._row.get("updates_scaled", 0) + 1
            out.append((c, r))
        return out

    def _add_prior(self, weights: list[np.ndarray], scaled_sum: np.ndarray) -> list[np.ndarray]:
        """The item bias plus the prior's centred log noisy counts (also into the optimizer's
        own copy, which the next step starts from)."""
        bias = weights[self.prior_index]
        weights[self.prior_index] = bias + prior_logits(scaled_sum, self.prior).reshape(bias.shape)
        self.server_optimizer.assign(weights)
        self.prior_pending = False
        self._row["popularity_prior"] = True
        log.info(
            "popularity prior released (σ_p=%.3f, %.0f%% of ε alone) and added to the item bias",
            self.prior.noise_multiplier,
            100 * self.prior.share,
        )
        return weights

    def configure_evaluate(self, server_round, parameters, client_manager):
        self.latest_parameters = parameters
        if "train_loss" not in self._row:
            # aggregate_fit never ran: the secure aggregation of this round failed.
            self._row["aggregation_failed"] = True
            self.rounds_failed.append(server_round)
            log.error("round %d: secure aggregation failed; the global model is unchanged", server_round)
            if self.stop_on_failed_round:
                self._end_round()
                raise RuntimeError(f"round {server_round}: secure aggregation failed (secagg.on_failure=stop)")
        if not self._evaluates(server_round):
            self._end_round()
            return []
        if server_round == self.num_rounds:
            # The final result must cover every user, whatever fraction_evaluate says.
            ins = EvaluateIns(parameters, {"server_round": server_round, **self.catalogue})
            return [(c, ins) for c in client_manager.all().values()]
        return [
            (c, EvaluateIns(e.parameters, {**e.config, **self.catalogue}))
            for c, e in super().configure_evaluate(server_round, parameters, client_manager)
        ]

    def aggregate_evaluate(self, server_round, results, failures):
        _raise_on_failures("evaluate", server_round, failures)
        _raise_on_repeated_clients("evaluate", server_round, results)
        results = by_client(results)
        total = MetricSums()
        fair: FairnessSums | None = None
        reranked: FairnessSums | None = None
        round_clients: dict[str, dict] = {}
        for _, r in results:
            m = dict(r.metrics)
            client = MetricSums.from_dict(m)
            self.client_eval[int(m["client_id"])] = {"users": r.num_examples, **client.means()}
            round_clients[str(int(m["client_id"]))] = self.client_eval[int(m["client_id"])]
            total = total.merge(client)
            # Group sums and exposure counts add up, so the merged block is the centralized one.
            fair = _merged(fair, FairnessSums.from_metrics(m))
            reranked = _merged(reranked, FairnessSums.from_metrics(m, RERANK_PREFIX))
            if reranked is not None:
                self.client_rerank[int(m["client_id"])] = client_rerank(client.means(), m)
        means = total.means()
        # model=causal_lora: AUC from the summed score histograms (exact pooling, see auc.py).
        auc_hist = _merged(None, *[AucHistogram.from_metrics(r.metrics) for _, r in results])
        if auc_hist is not None:
            total.auc = auc_hist  # read by build_summary
            logloss = sum(float(r.metrics.get("auc_logloss_sum", 0.0)) for _, r in results) / max(auc_hist.count, 1)
            means.update(auc=auc_hist.auc(), auc_tie_bound=auc_hist.tie_bound(), auc_logloss=logloss)
        self._row.update({f"eval_{k}": v for k, v in means.items()})
        self._row["eval_users"] = total.counts.get("", 0)
        if fair is not None:
            self._row.update(fairness_row(fairness_block(fair, round_clients)))
        if reranked is not None:
            row = fairness_row(fairness_block(reranked, {}))
            self._row["fair_rerank_activity_gap_ndcg@10"] = row["fair_activity_gap_ndcg@10"]
        if server_round == self.num_rounds:
            self.final_eval = total
            self.final_fairness = fair
            self.final_rerank_fairness = reranked
        self._end_round()
        # Flower reports this as the round's "loss": 1 - NDCG@10, as each client's evaluate returns
        # (1 - AUC for model=causal_lora, whose clients return their log-loss; NaN when every
        # evaluated user has the same label).
        if auc_hist is not None:
            return 1.0 - means["auc"], means
        return 1.0 - means.get("ndcg@10", 0.0), means

    def _end_round(self) -> None:
        seconds = time.perf_counter() - self._round_start
        self._row["seconds"] = seconds
        self.round_seconds.append(seconds)
        self.rounds_completed = self._row["round"]
        if self.server_ledger is not None:
            entry = self.server_ledger(self._row["round"])
            self.store.append_ledger({"client_id": "server", **entry})
            self._row["epsilon_max"] = entry["epsilon"]
        self.store.append_metrics(self._row)
        row = self._row
        status = round_status(
            row.get("clients_ok"), row.get("clients"), row.get("epsilon_max"), row.get("eval_ndcg@10")
        )
        # One line per round (what CI and log files show); the bar is for terminals only.
        loss = row.get("train_loss")
        log.info(
            "round %d/%d  loss %.4f  %s  %.1fs",
            row["round"],
            self.num_rounds,
            float("nan") if loss is None else loss,
            status,
            seconds,
        )
        self.progress.update(row["round"], status)
        if self.checkpoint is not None:
            self.checkpoint(self)

    # What the remaining rounds and the summary need besides the adapter: JSON-able.
    CHECKPOINTED = (
        "client_privacy",
        "client_eval",
        "rounds_failed",
        "clients_dropped",
        "round_seconds",
        "rounds_completed",
        "prior_pending",
    )

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.CHECKPOINTED}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's state (JSON turned the client ids into strings)."""
        for k in self.CHECKPOINTED:
            if k not in state:  # a key added since the checkpoint: keep the fresh value
                continue
            value = state[k]
            setattr(self, k, {int(c): v for c, v in value.items()} if isinstance(value, dict) else value)
        self.progress.update(self.rounds_completed)


def by_client(results: list) -> list:
    """Results in client order, not arrival order: float sums then add up in one order, so a
    seeded run reproduces its metrics to the last digit."""
    return sorted(results, key=lambda res: int(res[1].metrics.get("client_id", -1)))


def _merged(total: FairnessSums | None, *parts: FairnessSums | None) -> FairnessSums | None:
    for part in parts:
        if part is not None:
            total = part if total is None else total.merge(part)
    return total


def _ledger_fields(m) -> dict:
    """The ledger row a client reported in its fit metrics (round and status travel apart)."""
    return {k: m[k] for k in LEDGER_FIELDS if k in m}


def _raise_on_repeated_clients(stage: str, server_round: int, results) -> None:
    """Two SuperNodes with one client-id would overwrite each other's ε and metrics (the ε
    maximum could under-report): a misconfigured deployment, not something to merge."""
    seen: set[int] = set()
    for _, r in results:
        cid = int(r.metrics["client_id"])
        if cid in seen:
            raise RuntimeError(
                f"round {server_round}: two clients sent {stage} results as client-id {cid}; "
                "every SuperNode needs its own node-config client-id"
            )
        seen.add(cid)


def _raise_on_failures(stage: str, server_round: int, failures) -> None:
    """A failed client makes the run fail: a model averaged over the survivors only, or
    evaluated on part of the users, is not the result the run was asked for. (Tolerating
    dropouts is secure aggregation's job, with its own accounting.)"""
    if not failures:
        return
    first = failures[0]
    reason = repr(first) if isinstance(first, BaseException) else f"status {first[1].status}"
    raise RuntimeError(f"round {server_round}: {len(failures)} client(s) failed to {stage}; first: {reason}")
