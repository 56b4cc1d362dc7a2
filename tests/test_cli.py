"""The `fedrec` console script, run from another directory as a user would."""

import json
import os
import subprocess
import sys
from pathlib import Path

FEDREC = Path(sys.executable).parent / "fedrec"


def fedrec(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDREC_CACHE": str(cwd / "cache")}
    return subprocess.run([str(FEDREC), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_fedrec_sweeps_tables_and_reports_from_any_directory(tmp_path):
    assert FEDREC.is_file(), "the fedrec script is installed by `pip install -e .` (make install)"
    sweep = tmp_path / "sweep"
    proc = fedrec(
        "run", "-m", "baseline=popularity", "seed=0,1", "dataset.num_users=80", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sweep run 2/2" in proc.stdout
    runs = sorted(d for d in sweep.iterdir() if d.is_dir())
    assert [d.name for d in runs] == ["0", "1"]
    summaries = [json.loads((d / "summary.json").read_text()) for d in runs]
    assert [s["data"]["users"] for s in summaries] == [80, 80]

    table = fedrec("table", *map(str, runs), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert f"{summaries[0]['metrics']['full']['ndcg@10']:8.4f}" in table.stdout

    report = fedrec("report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "2 runs: 2 complete, 0 incomplete" in report.stdout
    assert (sweep / "report.html").is_file()

    missing = fedrec("report", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2 and str(tmp_path / "nowhere") in missing.stderr
