"""One malicious client of ten, with and without the server's bounds on plain updates.

    .venv/bin/python benchmarks/hostile_client.py --seeds 0 1 2 -- \
        dataset=movielens_100k dataset.path=../shared/data/ml-100k

Plain FedAvg (``secagg=none``, ``privacy=none``: the setting where the server sees each update
and is the only line of defence), 10 iid clients, ``--rounds`` rounds of one local epoch. The
honest clients train as the ClientApp does (``train_local``, update clipped to
``strategy.max_update_norm``); client 0 is the attacker. Every round's results go through the
real ``RecommenderFedAvg.aggregate_fit``, once with the checks off (no norm bound, no weight cap)
and once with the defaults (``update_problem``). Attacks:

- ``promote``: boost one unpopular item (chosen by the seed among items with 2-5 training
  interactions): the attacker trains on its users' histories with that item appended to each,
  scales the update by ``--boost`` and claims ``--claim`` users (model replacement);
- ``sink``: the honest update sign-flipped and scaled by ``--boost``, same claim.

Against the bounds two attackers: ``naive`` sends the same thing (rejected), ``adaptive`` scales
its update to exactly the norm bound and claims exactly the weight cap (accepted: what the
bounds still allow). Printed per scenario: test NDCG@10 and the share of users whose top-10
holds the promoted item, after the last round; mean ± SD over seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402

from common.config import compose  # noqa: E402
from common.data.run import load_run_data, training_sequences  # noqa: E402
from common.evaluation import histories, model_scorer  # noqa: E402
from common.fairness.groups import top_items  # noqa: E402
from common.metrics.ranking import MetricSums, full_ranks  # noqa: E402
from common.model.factory import build_model  # noqa: E402
from common.serialization import get_weights, set_weights  # noqa: E402
from common.tracking.store import RunStore  # noqa: E402
from common.training.local import round_seed, train_local  # noqa: E402
from common.training.updates import clip_update, update  # noqa: E402
from server.strategy import RecommenderFedAvg  # noqa: E402

# bounds: off | fixed (norm bound + weight cap) | median (also scaled to 3 x the round's median norm)
SCENARIOS = [
    ("none", "off", ""),
    ("none", "median", ""),
    ("promote", "off", ""),
    ("promote", "fixed", "naive"),
    ("promote", "fixed", "adaptive"),
    ("promote", "median", "adaptive"),
    ("sink", "off", ""),
    ("sink", "fixed", "naive"),
    ("sink", "fixed", "adaptive"),
    ("sink", "median", "adaptive"),
]


def _norm(arrays: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in arrays)))


def evaluate(model, run, target: int) -> tuple[float, float]:
    rows = np.arange(run.split.num_users)
    hist, targets = histories(run.split, rows, "test")
    scores = model_scorer(model, run.split.num_items)(hist)
    sums = MetricSums(["ndcg@10"])
    sums.add(full_ranks(scores, targets, hist))
    top = top_items(scores, hist, targets, 10)
    return sums.means()["ndcg@10"], float((top == target).any(axis=1).mean())


def run_scenario(
    cfg, run, attack: str, bounds: str, attacker: str, seed: int, rounds: int, boost: float, claim: int, target: int
) -> tuple[float, float]:
    model = build_model(cfg, run)
    clients = [training_sequences(run.split, rows) for rows in run.partitions]
    max_norm = float(cfg.strategy.max_update_norm)
    cap = max(len(rows) for rows in run.partitions)
    on = bounds != "off"
    strategy = RecommenderFedAvg(
        store=RunStore(Path("/tmp") / f"hostile-{seed}"),
        num_rounds=rounds,
        evaluate_every=0,
        initial_parameters=ndarrays_to_parameters(get_weights(model)),
        update_bound=max_norm if on else None,
        max_client_weight=cap if on else None,
        median_norm_ratio=3.0 if bounds == "median" else None,
    )
    for r in range(1, rounds + 1):
        glob = parameters_to_ndarrays(strategy.latest_parameters)
        results = []
        for cid, seqs in enumerate(clients):
            set_weights(model, glob)
            poisoned = attack == "promote" and cid == 0
            data = [np.append(s, target) for s in seqs] if poisoned else seqs
            train_local(
                model,
                data,
                run.data.num_items,
                cfg.strategy.local_epochs,
                cfg.train.batch_size,
                cfg.train.lr,
                cfg.model.num_negatives,
                round_seed(seed, r, cid),
            )
            delta = update(get_weights(model), glob)
            weight = len(seqs)
            if cid == 0 and attack != "none":
                delta = [(-1.0 if attack == "sink" else 1.0) * boost * d for d in delta]
                weight = claim
                if attacker == "adaptive":  # the most the bounds let through
                    delta = [d * (max_norm / _norm(delta)) for d in delta]
                    weight = cap
            else:
                delta, _ = clip_update(delta, max_norm)  # honest clients clip, as the ClientApp does
            res = FitRes(
                Status(Code.OK, ""),
                ndarrays_to_parameters([d.astype(np.float32) for d in delta]),
                weight,
                {"client_id": cid, "train_loss": 0.0},
            )
            results.append((None, res))
        strategy.aggregate_fit(r, results, [])
    set_weights(model, parameters_to_ndarrays(strategy.latest_parameters))
    return evaluate(model, run, target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--boost", type=float, default=50.0)
    ap.add_argument("--claim", type=int, default=10**6)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)
    table: dict[tuple, list] = {}
    for seed in args.seeds:
        cfg = compose(["privacy=none", "secagg=none", "strategy.local_epochs=1", *args.overrides, f"seed={seed}"])
        run = load_run_data(cfg)
        counts = np.bincount(np.concatenate(run.split.train), minlength=run.split.num_items)
        rare = np.flatnonzero((counts >= 2) & (counts <= 5))
        if len(rare) == 0:  # a small catalogue: the five least popular items
            rare = np.argsort(counts, kind="stable")[:5]
        target = int(np.random.default_rng(seed).choice(rare))
        for attack, bounds, attacker in SCENARIOS:
            ndcg, share = run_scenario(
                cfg, run, attack, bounds, attacker, seed, args.rounds, args.boost, args.claim, target
            )
            table.setdefault((attack, bounds, attacker), []).append((ndcg, share))
            print(
                f"seed {seed} target {target} ({counts[target]} interactions): attack={attack} bounds={bounds} "
                f"{attacker or '-'}: ndcg@10 {ndcg:.4f}, top-10 share of target {share:.4f}",
                flush=True,
            )
    print("\n| attack | server bounds | attacker | NDCG@10 | users with the target in their top-10 |")
    print("|---|---|---|---|---|")
    for (attack, bounds, attacker), vals in table.items():
        cells = []
        for i in (0, 1):
            xs = [v[i] for v in vals]
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            cells.append(f"{statistics.mean(xs):.4f} ± {sd:.4f}")
        print(f"| {attack} | {bounds} | {attacker or '–'} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
