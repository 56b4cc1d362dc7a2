"""model=causal_lora: TALLRec prompts, AUC (exact and federated histogram), user-level DP-SGD
on a tiny random Llama, PEFT adapter files, and one small federated run."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import replace
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch

from common.causal.prompts import build_prompt
from common.causal.task import PromptBuilder, _sum_per_user, evaluate_causal, train_causal, user_ratings
from common.config import compose
from common.data.run import load_run_data
from common.metrics.auc import AucHistogram, auc
from common.model.factory import build_model
from common.privacy.accounting import AccountantState, independent_epsilon
from common.privacy.plans import federated_plan
from common.serialization import get_weights, load_adapter, save_adapter

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model=causal_lora",
    "model.path=tiny-random",
    "dataset.num_users=40",
    "dataset.num_items=30",
    "dataset.mean_interactions=10",
    "partition.num_clients=2",
    "train.batch_size=8",
    "strategy.num_rounds=1",
]


@pytest.fixture(scope="module")
def tiny():
    cfg = compose(" ".join(TINY))
    run = load_run_data(cfg)
    return cfg, run


FIXTURE_PROMPT = """Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.

### Instruction:
Given the user's preference and unpreference, identify whether the user will like the target movie by answering "Yes." or "No."

### Input:
User Preference: "Toy Story (1995)", "Heat (1995)"
User Unpreference: "GoldenEye (1995)"
Whether the user will like the target movie "Babe (1995)"?

### Response:
"""


def test_prompt_builder_matches_the_tallrec_fixture():
    assert (
        build_prompt(["Toy Story (1995)", "GoldenEye (1995)", "Heat (1995)"], [True, False, True], "Babe (1995)")
        == FIXTURE_PROMPT
    )
    texts = [
        "Toy Story (1995). Genres: Animation",
        "GoldenEye (1995). Genres: Action",
        "Heat (1995). Genres: Crime",
        "Babe (1995). Genres: Drama",
        "Old (1990). Genres: Drama",
    ]
    # Item texts lose their genres; only the last max_history=3 items before the target count.
    build = PromptBuilder(texts, max_history=3)
    assert build(np.array([4, 0, 1, 2, 3]), np.array([True, True, False, True, True]), 4) == FIXTURE_PROMPT


def test_auc_against_hand_computed_values():
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # Ties count 1/2: pairs (0.5>0.5)=½, (0.5>0.2)=1, (0.9>0.5)=1, (0.9>0.2)=1 -> 3.5/4.
    assert auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == 0.875
    assert np.isnan(auc([0.3, 0.4], [1, 1]))
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 60).astype(float), rng.random(60) < 0.4  # many ties
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for (a, b) in product(s[y], s[~y])]
    assert auc(s, y) == pytest.approx(np.mean(pairs), abs=1e-12)


def test_histogram_auc_pools_clients_exactly_and_stays_within_its_tie_bound():
    rng = np.random.default_rng(1)
    y = rng.random(500) < 0.55
    x = rng.normal(0.0, 0.3, 500) + 0.4 * y  # overlapping, like a weak model's log-odds
    exact = auc(x, y)
    # Two clients' metric records summed by the server == one histogram of all users.
    records = [AucHistogram().add(x[:200], y[:200]).to_metrics(), AucHistogram().add(x[200:], y[200:]).to_metrics()]
    pooled = AucHistogram.from_metrics(records[0]).merge(AucHistogram.from_metrics(records[1]))
    whole = AucHistogram().add(x, y)
    assert (pooled.pos == whole.pos).all() and (pooled.neg == whole.neg).all() and pooled.count == 500
    assert abs(pooled.auc() - exact) <= pooled.tie_bound() + 1e-12
    assert abs(pooled.auc() - exact) < 1e-3  # fine bins near 0: nearly no pair shares a bin
    # Scores that all fall in one bin: the histogram can only say 1/2, and says how wrong it may be.
    crowded = AucHistogram().add([1e-7, 2e-7, 3e-7], [0, 1, 1])
    assert crowded.auc() == 0.5 and crowded.tie_bound() == 0.5
    assert AucHistogram.from_metrics({"count": 3}) is None
    # Infinite scores go to the end bins; a NaN score (a diverged model) is named, not binned.
    assert AucHistogram().add([-np.inf, np.inf], [0, 1]).auc() == 1.0
    with pytest.raises(ValueError, match="1 of 3 scores are NaN"):
        AucHistogram().add([0.1, np.nan, 0.2], [0, 1, 1])


def test_liked_labels_need_ratings(tiny):
    cfg, run = tiny
    assert user_ratings(run, 0).dtype == bool
    no_ratings = replace(run, data=replace(run.data, ratings=None))
    with pytest.raises(ValueError, match="needs ratings: dataset 'synthetic' has no rating column"):
        user_ratings(no_ratings, 0)


def test_dp_step_changes_only_lora_weights_and_spends_the_planned_epsilon(tiny):
    cfg, run = tiny
    model = build_model(cfg, run)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = federated_plan(cfg, run, 0)
    result = train_causal(model, run, run.partitions[0], cfg, 1, 8, 0.05, seed=3, dp=replace(plan.dp, noise_seed=7))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    lora = {n for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all(".lora_A." in n or ".lora_B." in n for n in lora)
    assert changed == lora  # every adapter tensor moved; every LM weight is bit-identical
    # Opacus recorded exactly the planned mechanism, for exactly the planned steps.
    assert result["history"] == [(plan.dp.noise_multiplier, plan.sample_rate, plan.steps_per_round)]
    assert result["users"] == plan.num_users
    eps = AccountantState().extend(result["history"]).epsilon(plan.delta, "rdp")
    assert eps == pytest.approx(float(cfg.privacy.epsilon), rel=0.02)
    assert eps == pytest.approx(independent_epsilon(result["history"], plan.delta, "rdp"), rel=1e-3)


def test_empty_poisson_batches_still_take_their_noise_step(tiny):
    cfg, run = tiny
    model = build_model(cfg, run)
    users = sum(len(run.split.train[r]) >= 2 for r in run.partitions[0])
    # batch_size 1: q = 1/users, so about a third of the steps sample nobody.
    from common.privacy.dp_sgd import DPSettings

    result = train_causal(model, run, run.partitions[0], cfg, 1, 1, 0.05, seed=0, dp=DPSettings(1.0, 1.0, noise_seed=3))
    assert result["steps"] == users and result["history"] == [(1.0, 1.0 / users, users)]


def test_per_user_gradient_sample_is_the_gradient_of_that_users_mean_prompt_loss(tiny):
    """The DP example is the user: Opacus' per-prompt samples, weighted and summed per user,
    equal autograd's gradient of each user's mean loss over their prompts."""
    from opacus import GradSampleModule
    from torch.nn import functional as F

    cfg, run = tiny
    model = build_model(cfg, run)
    with torch.no_grad():  # non-zero lora_B, so lora_A gets a gradient too
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    build = PromptBuilder(run.data.item_text, 10)
    rows = [r for r in run.partitions[0] if len(run.split.train[r]) >= 4][:2]
    texts, labels, owner = [], [], []
    for k, r in enumerate(rows):
        items, liked = run.split.train[r], user_ratings(run, r)
        for t in (1, 2, 3)[: 3 - k]:  # 3 prompts for user 0, 2 for user 1
            texts.append(build(items, liked, t))
            labels.append(float(liked[t]))
            owner.append(k)
    ids, mask = model.encode(texts)
    y, owner_t = torch.tensor(labels), torch.tensor(owner)
    params = [p for p in model.parameters() if p.requires_grad]
    expected = []
    for k in range(2):
        sel = owner_t == k
        loss = F.binary_cross_entropy_with_logits(model(ids[sel], mask[sel]), y[sel])
        expected.append(torch.autograd.grad(loss, params))
    net = GradSampleModule(model)
    nll = F.binary_cross_entropy_with_logits(net(ids, mask), y, reduction="none")
    weights = 1.0 / torch.bincount(owner_t).float()[owner_t]
    ((nll * weights).sum() / len(texts)).backward()  # the DP path's loss ("mean": Opacus × rows)
    _sum_per_user(params, owner_t, 2)
    for i, p in enumerate(params):
        for k in range(2):
            torch.testing.assert_close(p.grad_sample[k], expected[k][i], rtol=1e-4, atol=1e-7)
    net._close()


def test_adapter_round_trips_in_peft_and_project_formats(tiny, tmp_path):
    from peft import PeftModel

    from common.causal.lm import load_base

    cfg, run = tiny
    trained = build_model(cfg, run)
    train_causal(trained, run, run.partitions[0], cfg, 1, 8, 0.05, seed=1)
    build = PromptBuilder(run.data.item_text, 10)
    r = run.partitions[1][0]
    prompts = [build(run.split.train[r], user_ratings(run, r), t) for t in range(1, len(run.split.train[r]))]
    want = trained.score(prompts)
    trained.save_peft(tmp_path / "peft")
    assert sorted(os.listdir(tmp_path / "peft")) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    fresh = build_model(compose(" ".join([*TINY, "seed=5"])), run)
    assert not torch.allclose(fresh.score(prompts), want)
    fresh.load_peft(tmp_path / "peft")
    torch.testing.assert_close(fresh.score(prompts), want)
    # PEFT itself reads the folder onto the plain base model.
    base, _ = load_base("tiny-random")
    peft = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "peft"))
    assert sorted(n for n, p in peft.named_parameters() if "lora_" in n) == sorted(
        n.removeprefix("peft.") for n, p in trained.named_parameters() if p.requires_grad
    )
    # The project's own adapter files (what a run folder holds) round-trip too.
    save_adapter(trained, {"model": "causal_lora"}, tmp_path / "project")
    other = build_model(compose(" ".join([*TINY, "seed=6"])), run)
    load_adapter(other, tmp_path / "project")
    for a, b in zip(get_weights(other), get_weights(trained)):
        np.testing.assert_array_equal(a, b)


def test_evaluation_reports_a_histogram_of_every_user(tiny):
    cfg, run = tiny
    model = build_model(cfg, run)
    rows = run.partitions[0]
    metrics, loss = evaluate_causal(model, run, rows, 10, "test")
    hist = AucHistogram.from_metrics(metrics)
    assert metrics["count"] == hist.count == len(rows)
    liked = sum(bool(user_ratings(run, r)[len(run.split.train[r]) + 1]) for r in rows)
    assert int(hist.pos.sum()) == liked and np.isfinite(loss)


def test_cached_lower_states_give_the_same_scores_and_lora_gradients(tiny):
    """Top layers over cached lower-layer states == the whole LM on token ids: prompts of
    different lengths, cached one by one and left-padded again, so masks and rotary positions
    must line up."""
    from torch.nn import functional as F

    from common.causal.lm import clear_lower_cache, lower_cache_info

    cfg, run = tiny
    model = build_model(compose(" ".join([*TINY, "privacy=none", "model.top_layers=1"])), run)
    assert model.split == 1 and model.cache_lower
    with torch.no_grad():  # non-zero lora_B, so lora_A gets a gradient too
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    build = PromptBuilder(run.data.item_text, 10)
    r = run.partitions[0][0]
    prompts = [build(run.split.train[r], user_ratings(run, r), t) for t in (1, 2, 5)]
    ids, mask = model.encode(prompts)
    assert len(set(mask.sum(1).tolist())) == 3  # three lengths: left padding differs per row
    clear_lower_cache()
    states, smask = model.encode_states(prompts[:1])  # cached alone, unpadded
    states, smask = model.encode_states(prompts)
    assert lower_cache_info()["misses"] == 3 and lower_cache_info()["hits"] == 1
    torch.testing.assert_close(smask, mask)
    params = [p for p in model.parameters() if p.requires_grad]
    y = torch.tensor([1.0, 0.0, 1.0])
    full, cached = model(ids, mask), model(states, smask)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(full, torch.zeros(3))
    g_full = torch.autograd.grad(F.binary_cross_entropy_with_logits(full, y), params)
    g_cached = torch.autograd.grad(F.binary_cross_entropy_with_logits(cached, y), params)
    for a, b in zip(g_full, g_cached):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    # score() takes the cached path; the uncached model scores the same.
    plain = ["privacy=none", "model.top_layers=1", "model.cache_lower=false"]
    uncached = build_model(compose(" ".join([*TINY, *plain])), run)
    uncached.load_state_dict(model.state_dict())
    torch.testing.assert_close(model.score(prompts), uncached.score(prompts), rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients_and_is_refused_with_dp_sgd(tiny):
    from torch.nn import functional as F

    cfg, run = tiny
    build = PromptBuilder(run.data.item_text, 10)
    r = run.partitions[0][0]
    prompts = [build(run.split.train[r], user_ratings(run, r), t) for t in (1, 2)]
    grads = []
    for ckpt in (False, True):
        model = build_model(compose(" ".join([*TINY, "privacy=none", f"model.gradient_checkpointing={ckpt}"])), run)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.fill_(0.01)
        loss = F.binary_cross_entropy_with_logits(model(*model.encode(prompts)), torch.tensor([1.0, 0.0]))
        grads.append(torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="gradient_checkpointing=true cannot be combined with DP-SGD"):
        build_model(compose(" ".join([*TINY, "model.gradient_checkpointing=true"])), run)


@pytest.mark.slow
def test_a_federated_dp_run_with_causal_lora_reports_auc(tmp_path):
    env = {
        **os.environ,
        "FEDREC_CACHE": str(tmp_path / "cache"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    overrides = [*TINY, "dataset.num_users=24", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.run", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    m = summary["metrics"]
    assert 0.0 <= m["auc"] <= 1.0 and m["auc_users"] == summary["eval_users"] == summary["data"]["users"]
    assert 0 < m["auc_positives"] < m["auc_users"]
    for client in summary["privacy"]["per_client"].values():
        assert client["epsilon"] == pytest.approx(8.0, rel=0.02)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval_auc"] == m["auc"]
    assert 0.0 < rows[-1]["eval_auc_logloss"] < 10.0  # the users' mean log-loss, pooled over clients
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_rerank_ranks_against_a_hand_computed_case():
    from common.causal.rerank import rerank_ranks

    # 6 items; user 0's history {0}; projection order of the rest: 5, 4, 3, 2, 1.
    base = np.array([[9.0, 1.0, 2.0, 3.0, 4.0, 5.0], [9.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    hist = [np.array([0]), np.array([0])]
    targets = np.array([3, 1])  # user 0: 3rd of the top-3; user 1: outside it (rank 4)
    top = [np.array([5, 4, 3]), np.array([5, 4, 3])]
    lm = [np.array([0.1, -2.0, 0.5]), np.array([0.0, 0.0, 0.0])]  # user 0's LM order: 3, 5, 4
    b, r = rerank_ranks(base, lm, top, targets, hist)
    assert b.tolist() == [2, 4] and r.tolist() == [0, 4]
    # Ties in the LM keep the projection's order.
    _, r = rerank_ranks(base, [np.zeros(3), np.zeros(3)], top, np.array([4, 5]), hist)
    assert r.tolist() == [1, 0]


def test_rerank_evaluation_reports_full_metrics_of_the_reranked_and_the_projection_lists(tiny, tmp_path):
    from omegaconf import OmegaConf

    from common.causal.rerank import _projection_scorer, evaluate_rerank
    from common.causal.task import evaluate_causal
    from common.evaluation import histories
    from common.metrics.ranking import MetricSums, full_ranks
    from common.model.factory import adapter_config

    cfg, run = tiny
    proj_cfg = compose(" ".join(t for t in TINY if not t.startswith("model")))
    proj_run = load_run_data(proj_cfg)
    proj = build_model(proj_cfg, proj_run)
    save_adapter(proj, adapter_config(proj_cfg, proj_run), tmp_path / "proj" / "adapter")
    OmegaConf.save(proj_cfg, tmp_path / "proj" / "config.yaml")
    ccfg = compose(" ".join([*TINY, f"model.rerank_run={tmp_path / 'proj'}", "model.rerank_top=5"]))
    model = build_model(ccfg, run)
    rows = run.partitions[0]
    got = MetricSums.from_dict(evaluate_rerank(model, run, rows, ccfg)).means()
    # Projection alone == the standard protocol's full ranks of the same scorer on the same users.
    hist, targets = histories(run.split, rows, "test")
    scores = _projection_scorer(str(tmp_path / "proj"), ccfg.dataset)(hist)
    base = full_ranks(scores, targets, hist)
    assert got["projection_hr@10"] == pytest.approx(float(np.mean(base < 10)))
    # Re-ranking permutes the top-5 only: HR@5 unchanged, targets beyond keep their rank.
    for key in ("hr@5", "hr@20"):
        assert got[key] == pytest.approx(got[f"projection_{key}"])
    inside = base < 5
    assert inside.any() and 0 < (~inside).sum()
    # The LM's own order decides the rank inside the top-5: recompute one user by hand.
    i = int(np.flatnonzero(inside)[0])
    s = scores[i].astype(np.float64).copy()
    s[hist[i][hist[i] != targets[i]]] = -np.inf
    top = np.argsort(-s, kind="stable")[:5]
    assert not set(top) & set(hist[i].tolist()) - {int(targets[i])} and len(set(top)) == 5
    build = PromptBuilder(run.data.item_text, 10)
    liked = user_ratings(run, rows[i])[: len(hist[i])]
    lm = model.score([build(np.append(hist[i], c), np.append(liked, False), len(hist[i])) for c in top]).numpy()
    want = int(np.flatnonzero(np.argsort(-lm, kind="stable") == int(np.flatnonzero(top == targets[i])[0]))[0])
    solo = MetricSums.from_dict(evaluate_rerank(model, run, rows[i : i + 1], ccfg)).means()
    assert solo["ndcg@5"] == pytest.approx(1.0 / np.log2(want + 2))
    # evaluate_causal carries them next to the AUC histogram, with one user count.
    metrics, _ = evaluate_causal(model, run, rows, 10, "test", cfg=ccfg)
    assert metrics["count"] == len(rows) and metrics["projection_count"] == len(rows) and "hr@10_sum" in metrics
    # benchmarks/causal_auc.py prints them per round; round 0 (LoRA B = 0) is this untrained model on all users.
    rounds = _causal_auc_benchmark().main(
        [*TINY[1:], f"model.rerank_run={tmp_path / 'proj'}", "model.rerank_top=5", "privacy=none", "--split", "test"]
    )
    every = MetricSums.from_dict(evaluate_rerank(model, run, np.arange(len(run.split.users)), ccfg)).means()
    assert rounds[0]["ndcg@10"] == pytest.approx(every["ndcg@10"])
    assert rounds[0]["projection_hr@10"] == pytest.approx(every["projection_hr@10"])


def test_a_full_lower_cache_evicting_a_hit_of_the_same_batch_keeps_it(tiny):
    """Storing a batch's misses evicts the oldest entries; a hit of that same batch among them
    must still be served (it used to raise KeyError once the cache was full)."""
    from common.causal.lm import clear_lower_cache, lower_cache_info, set_lower_cache_budget

    cfg, run = tiny
    model = build_model(compose(" ".join([*TINY, "privacy=none", "model.top_layers=1"])), run)
    build = PromptBuilder(run.data.item_text, 10)
    r = run.partitions[0][0]
    prompts = [build(run.split.train[r], user_ratings(run, r), t) for t in (1, 2, 5)]
    clear_lower_cache()
    expected, expected_mask = model.encode_states(prompts)
    clear_lower_cache()
    model.encode_states(prompts[:1])  # the oldest entry, and a hit of the next call
    set_lower_cache_budget(0)  # every store evicts all but the newest entry
    try:
        states, mask = model.encode_states(prompts)
    finally:
        set_lower_cache_budget(2048)
        clear_lower_cache()
    assert lower_cache_info()["misses"] == 0  # cleared after the call
    torch.testing.assert_close(mask, expected_mask)
    torch.testing.assert_close(states, expected)


def test_one_user_clients_are_refused_because_their_auc_histogram_reveals_the_label():
    from common.causal.build import check_causal_config

    with pytest.raises(ValueError, match="partition=cross_device"):
        check_causal_config(compose(" ".join([*TINY, "partition=cross_device"])))


def test_a_users_training_prompts_depend_only_on_public_values_and_their_own_history():
    from common.causal.task import user_rng

    mine, other = np.array([3, 9, 4, 7, 1]), np.array([5, 2, 8])
    pool = np.arange(1, len(mine))
    draw = lambda *key: user_rng(*key).choice(pool, size=2, replace=False).tolist()  # noqa: E731
    # Fresh per (seed, step, history): what other users drew before has no effect.
    user_rng(7, 3, other).choice(10, size=3)
    assert draw(7, 3, mine) == draw(7, 3, mine)
    assert {tuple(draw(7, s, mine)) for s in range(12)} != {tuple(draw(7, 3, mine))}  # varies with the step


def test_lower_states_on_disk_are_reused_by_a_new_process_cache_and_keyed_by_the_weights(tiny, tmp_path):
    """model.lower_cache_dir: a second model (as a new process would, memory cache empty) reads
    the states from disk, equal to fresh ones; a damaged file is recomputed; other lower-layer
    weights get another folder, never stale states."""
    from common.causal.lm import _hash_lower, clear_lower_cache, lower_cache_info

    cfg, run = tiny
    over = [*TINY, "privacy=none", "model.top_layers=1", f"model.lower_cache_dir={tmp_path}"]
    build = PromptBuilder(run.data.item_text, 10)
    r = run.partitions[0][0]
    prompts = [build(run.split.train[r], user_ratings(run, r), t) for t in (1, 2, 5)]
    clear_lower_cache()
    try:
        first = build_model(compose(" ".join(over)), run)
        expected, expected_mask = first.encode_states(prompts)
        files = sorted(tmp_path.glob("lower-*/*.pt"))
        assert len(files) == 3 and lower_cache_info()["misses"] == 3
        clear_lower_cache()
        files[0].write_bytes(b"half a file")
        again = build_model(compose(" ".join(over)), run)
        states, mask = again.encode_states(prompts)
        assert lower_cache_info()["disk_hits"] == 2 and lower_cache_info()["misses"] == 1
        torch.testing.assert_close(states, expected)  # the recomputed one: batch-size rounding only
        torch.testing.assert_close(mask, expected_mask)
        # The damaged file was rewritten: a third model reads all three.
        clear_lower_cache()
        torch.testing.assert_close(build_model(compose(" ".join(over)), run).encode_states(prompts)[0], expected)
        assert lower_cache_info()["disk_hits"] == 3
        # Another split = other lower layers: a new folder, computed afresh.
        clear_lower_cache()
        two = build_model(compose(" ".join([*over, "model.top_layers=2"])), run)
        two.encode_states(prompts[:1])
        assert lower_cache_info()["disk_hits"] == 0 and len(list(tmp_path.glob("lower-*"))) == 2
        # The key hashes the lower layers' weights themselves: one changed weight, another key.
        key = _hash_lower(first)
        with torch.no_grad():
            first.hf.base_model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3
        assert _hash_lower(first) != key
        # A file holding something else than an entry is recomputed too.
        clear_lower_cache()
        files[1].write_bytes(b"")
        torch.save(torch.zeros(3), files[2])
        build_model(compose(" ".join(over)), run).encode_states(prompts)
        assert lower_cache_info()["disk_hits"] == 1 and lower_cache_info()["misses"] == 2
    finally:
        clear_lower_cache()


def test_prefill_covers_every_prompt_a_fixed_pool_run_uses(tiny, tmp_path):
    """simulations.causal_prefill stores each user's validation, test and training-pool prompts:
    a later training epoch and evaluation (memory cache empty, as in a new process) compute
    nothing through the lower layers."""
    from common.causal.lm import clear_lower_cache, lower_cache_info
    from common.causal.task import fixed_prompts
    from simulations.causal_prefill import main as prefill

    over = [
        *TINY,
        "privacy=none",
        "model.top_layers=1",
        "model.train_targets=3",
        "model.candidates_per_user=2",
        f"model.lower_cache_dir={tmp_path}",
    ]
    clear_lower_cache()
    try:
        prefill([o for o in over if o != "model=causal_lora"])
        cfg = compose(" ".join(over))
        run = load_run_data(cfg)
        rows = np.arange(len(run.split.users))
        assert len(list(tmp_path.glob("lower-*/*.pt"))) == len(set(fixed_prompts(run, rows, cfg)))
        clear_lower_cache()
        model = build_model(cfg, run)
        train_causal(model, run, run.partitions[0], cfg, 2, 8, 1e-3, seed=0)
        evaluate_causal(model, run, rows, 10, "valid")
        evaluate_causal(model, run, rows, 10, "test")
        info = lower_cache_info()
        assert info["misses"] == 0 and info["disk_hits"] > len(rows)
    finally:
        clear_lower_cache()
    with pytest.raises(ValueError, match="set model.train_targets=K"):
        fixed_prompts(run, rows, compose(" ".join(TINY)))


def _causal_auc_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("causal_auc", ROOT / "benchmarks" / "causal_auc.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_causal_auc_benchmark_starts_from_the_untrained_auc_and_uses_the_clients_dp_plan(tiny, capsys):
    bench = _causal_auc_benchmark()
    cfg, run = tiny
    rounds = bench.main([*TINY[1:], "strategy.num_rounds=2", "--split", "test"])
    assert [r["round"] for r in rounds] == [0, 1, 2] and all(r["train_s"] > 0 for r in rounds[1:])
    # Round 0 is the untrained model (LoRA B = 0: the base LM) on every user's test prompt.
    torch.manual_seed(0)
    plain = build_model(compose(" ".join([*TINY, "privacy=none"])), run)
    rows = np.arange(len(run.split.users))
    build = PromptBuilder(run.data.item_text, 10)
    from common.causal.task import eval_example

    texts, labels = zip(*(eval_example(run, build, r, "test") for r in rows))
    exact = auc(plain.score(list(texts)).numpy(), np.asarray(labels))
    assert abs(rounds[0]["auc"] - exact) <= rounds[0]["tie_bound"] + 1e-12
    plan = federated_plan(compose(" ".join([*TINY, "strategy.num_rounds=2"])), run, 0)
    assert plan.total_steps == 2 * plan.steps_per_round
    assert [r["dp_steps"] for r in rounds[1:]] == [plan.steps_per_round] * 2  # Opacus took every planned step
    assert (
        f"σ {plan.dp.noise_multiplier:.3f}, q {plan.sample_rate:.3f}, {plan.total_steps} steps"
        in capsys.readouterr().out
    )


@pytest.mark.parametrize("baseline", ["centralized", "local"])
def test_model_trained_baselines_refuse_causal_lora_in_one_line(tiny, baseline):
    from simulations.baselines import run_baseline

    cfg, run = tiny
    with pytest.raises(ValueError, match=f"baseline={baseline} with model=causal_lora is not supported"):
        run_baseline(compose(" ".join([*TINY, f"baseline={baseline}"])), run, store=None)
