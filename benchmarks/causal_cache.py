"""Lower-layer cache of ``model=causal_lora``: seconds per prompt for a LoRA training step
(forward + backward) and for scoring (no grad), through the whole LM on token ids vs through the
top ``model.top_layers`` layers on cached lower-layer states; same prompts, same model, one
process, medians of ``--repeats`` interleaved runs after one untimed warm-up of each. Also
prints the largest score and gradient differences (the cache is exact up to float rounding)
and the one-off cost of filling the cache.

    .venv/bin/python benchmarks/causal_cache.py                      # SmolLM2-135M (pip install 'fedrec[causal]')
    .venv/bin/python benchmarks/causal_cache.py model.path=tiny-random --prompts 4

Prompts: the first ``--prompts`` users' last training item as target (the training prompts of
``model.train_targets=1``), on the built-in synthetic data unless a ``dataset=`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from common.causal.lm import clear_lower_cache  # noqa: E402
from common.causal.task import PromptBuilder, user_ratings  # noqa: E402
from common.config import compose  # noqa: E402
from common.data.run import load_run_data  # noqa: E402
from common.model.factory import build_model  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="config overrides (model=causal_lora implied)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    cfg = compose(
        " ".join(
            ["model=causal_lora", "privacy=none", "model.cache_lower=true", *a.overrides, "model.lower_cache_dir=null"]
        )
    )  # memory only: a disk hit would be timed as a fill
    run = load_run_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, run)
    with torch.no_grad():  # non-zero LoRA B, so every LoRA weight gets a gradient
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    params = [p for p in model.parameters() if p.requires_grad]
    build = PromptBuilder(run.data.item_text, int(cfg.model.max_history))
    rows = [r for r in range(len(run.split.users)) if len(run.split.train[r]) >= 2][: a.prompts]
    prompts = [build(run.split.train[r], user_ratings(run, r), len(run.split.train[r]) - 1) for r in rows]
    labels = torch.tensor([float(i % 2) for i in range(len(prompts))])
    clear_lower_cache()
    t = time.perf_counter()
    model.encode_states(prompts, len(prompts))
    fill = time.perf_counter() - t

    def step(inputs) -> list[torch.Tensor]:
        return list(torch.autograd.grad(F.binary_cross_entropy_with_logits(model(*inputs), labels), params))

    def score(inputs) -> torch.Tensor:
        with torch.no_grad():
            return model(*inputs)

    paths = {"full": lambda: model.encode(prompts), "cached": lambda: model.encode_states(prompts, len(prompts))}
    times: dict[str, list[float]] = {f"{w}_{p}": [] for w in ("train", "score") for p in paths}
    out: dict[str, object] = {}
    for rep in range(a.repeats + 1):  # the first of each is a warm-up
        for what, fn in (("train", step), ("score", score)):
            for name, inputs in paths.items():
                t = time.perf_counter()
                out[f"{what}_{name}"] = fn(inputs())
                if rep:
                    times[f"{what}_{name}"].append(time.perf_counter() - t)
    grad_diff = max(float((a_ - b).abs().max()) for a_, b in zip(out["train_full"], out["train_cached"]))
    score_diff = float((out["score_full"] - out["score_cached"]).abs().max())
    med = {k: statistics.median(v) / len(prompts) for k, v in times.items()}
    result = {
        "prompts": len(prompts),
        "tokens": float(model.encode(prompts)[1].sum(1).float().mean()),
        "layers": int(model.hf.config.num_hidden_layers),
        "top_layers": int(cfg.model.top_layers),
        "s_per_prompt": med,
        "train_ratio": med["train_full"] / med["train_cached"],
        "score_ratio": med["score_full"] / med["score_cached"],
        "fill_s_per_prompt": fill / len(prompts),
        "max_grad_diff": grad_diff,
        "max_score_diff": score_diff,
        "torch_threads": torch.get_num_threads(),
    }
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['prompts']} prompts of {result['tokens']:.0f} tokens, top {result['top_layers']} of "
            f"{result['layers']} layers, torch threads: {result['torch_threads']}"
        )
        print(
            f"train step (fwd+bwd): full {med['train_full']:.3f} s/prompt, cached {med['train_cached']:.3f} "
            f"s/prompt, ratio {result['train_ratio']:.1f}x; max |grad diff| {grad_diff:.1e}"
        )
        print(
            f"scoring (no grad):    full {med['score_full']:.3f} s/prompt, cached {med['score_cached']:.3f} "
            f"s/prompt, ratio {result['score_ratio']:.1f}x; max |score diff| {score_diff:.1e}"
        )
        print(f"filling the cache: {result['fill_s_per_prompt']:.3f} s/prompt, once")
    return result


if __name__ == "__main__":
    main()
