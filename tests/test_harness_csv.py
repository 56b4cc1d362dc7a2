"""The generic CSV format runs unchanged through the whole harness: sweep, resume, report."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["wool", "linen", "red", "blue", "boots", "scarf", "lamp", "oak", "tea", "jazz", "vinyl", "maple"]


def write_shop(folder: Path, users: int = 60, items: int = 40, seed: int = 0) -> Path:
    """A small shop in the generic format: two tastes, each buying within its own half."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    with open(folder / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "text"])
        for i in range(items):
            w.writerow([f"sku-{i}", " ".join(rng.choice(WORDS[:6] if i < items // 2 else WORDS[6:], 3))])
    with open(folder / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp"])
        for u in range(users):
            half = np.arange(items // 2) + (items // 2 if u % 2 else 0)
            for t, i in enumerate(rng.choice(half, size=int(rng.integers(6, 14)), replace=False)):
                w.writerow([f"user-{u}", f"sku-{i}", 1_700_000_000 + 60 * t])
    return folder


def harness(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDREC_CACHE": str(cwd / "cache"), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_a_csv_data_set_sweeps_two_settings_resumes_and_reports(tmp_path):
    shop = write_shop(tmp_path / "shop")
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "simulations.run",
        "-m",
        "dataset=csv",
        f"dataset.path={shop}",
        "privacy.epsilon=4,inf",
        "partition.num_clients=3",
        "strategy.num_rounds=2",
        "model.num_negatives=8",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = harness(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep run 1/2" in proc.stdout and "sweep run 2/2" in proc.stdout
    summaries = {d.name: json.loads((d / "summary.json").read_text()) for d in sorted(sweep.iterdir()) if d.is_dir()}
    assert sorted(summaries) == ["0", "1"]
    private, plain = summaries["0"], summaries["1"]
    assert (
        private["data"]["dataset"] == "csv:shop" and private["data"]["users"] == 60 and private["data"]["items"] == 40
    )
    assert private["privacy"]["enabled"] and private["privacy"]["epsilon_max"] == pytest.approx(4.0, rel=0.02)
    assert not plain["privacy"]["enabled"] and plain["privacy"]["epsilon_max"] is None
    for s in summaries.values():
        assert s["eval_users"] == 60 and 0 < s["metrics"]["full"]["hr@10"] <= 1

    # The same sweep again skips both completed runs.
    again = harness(*args, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("skipped") == 2, again.stderr[-2000:]

    report = harness("-m", "simulations.report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    with open(sweep / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    by_run = {r["run"]: r for r in rows}
    assert sorted(by_run) == ["0", "1"] and all(r["status"] == "complete" for r in rows)
    assert (
        float(by_run["0"]["epsilon"]) == pytest.approx(private["privacy"]["epsilon_max"])
        and by_run["1"]["epsilon"] == "inf"
    )
    for name, summary in (("0", private), ("1", plain)):
        assert float(by_run[name]["ndcg@10"]) == pytest.approx(summary["metrics"]["full"]["ndcg@10"])
        assert by_run[name]["dataset"] == "csv:shop"
    assert (sweep / "report.md").is_file() and (sweep / "report.html").is_file()
