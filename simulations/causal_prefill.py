"""Fill ``model.lower_cache_dir`` with the frozen lower layers' states of every prompt a
``model=causal_lora`` run will use, once, before the runs (which then only run the top layers).

    .venv/bin/python -m simulations.causal_prefill dataset=movielens_100k dataset.path=/data/ml-100k \\
        model.train_targets=4 model.lower_cache_dir=~/.cache/fedrec/lower

Prompts: each user's validation and test prompt and, ``model.train_targets = K``, the K
training prompts of their fixed pool; not the re-ranking prompts of ``model.rerank_run`` (they
depend on the projection run's top-N and are stored as evaluation computes them). ``model=causal_lora`` is implied; every other override is
the run's own (same ``model.top_layers``, ``max_tokens``, ``max_history``, model path).
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from common.causal.lm import lower_cache_info  # noqa: E402
from common.causal.task import fixed_prompts  # noqa: E402
from common.config import compose  # noqa: E402
from common.data.run import load_run_data  # noqa: E402
from common.model.factory import build_model  # noqa: E402


def main(argv: list[str]) -> None:
    cfg = compose(" ".join(["model=causal_lora", "privacy=none", *argv]))
    if not cfg.model.get("lower_cache_dir") or not cfg.model.cache_lower:
        raise SystemExit(
            "causal_prefill: set model.lower_cache_dir=FOLDER (where the states are kept) "
            "and leave model.cache_lower=true"
        )
    run = load_run_data(cfg)
    prompts = list(dict.fromkeys(fixed_prompts(run, np.arange(len(run.split.users)), cfg)))
    model = build_model(cfg, run)
    chunk, start = 64, time.perf_counter()
    for i in range(0, len(prompts), chunk):
        model.encode_states(prompts[i : i + chunk], int(cfg.model.eval_batch_size))
        done = min(i + chunk, len(prompts))
        rate = (time.perf_counter() - start) / done
        print(
            f"{done}/{len(prompts)} prompts, {rate:.2f} s each, ~{rate * (len(prompts) - done) / 60:.0f} min "
            f"left; {lower_cache_info()}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
