"""The config schema: every key has a spec, and bad keys and values are refused in one line
naming the key, the value and what is allowed, before any run folder exists."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import CONF_DIR, compose
from common.config.schema import SCHEMA, ConfigError, flatten

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("dataset", "partition", "model", "privacy", "secagg", "strategy")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_key_of_every_option_has_a_spec_that_accepts_its_default(group):
    for option in _options(group):
        extra = ["dataset.path=/data"] if group == "dataset" and option != "synthetic" else []
        cfg = compose([f"{group}={option}", *extra])
        for key, value in flatten(cfg).items():
            assert key in SCHEMA, f"{group}={option}: {key} has no spec in common/config/schema.py"
            assert SCHEMA[key].accepts(value), f"{group}={option}: the default {key}={value!r} is refused"


def test_the_schema_has_no_key_that_no_option_has():
    seen = set()
    for group in GROUPS:
        for option in _options(group):
            extra = ["dataset.path=/data"] if group == "dataset" and option != "synthetic" else []
            seen |= set(flatten(compose([f"{group}={option}", *extra])))
    assert set(SCHEMA) - seen == set()


REFUSED = [
    # (overrides, what the one line must contain)
    (
        ["+strategy.num_round=3"],
        "strategy.num_round=3: fedrec's config has no such key (did you mean strategy.num_rounds?)",
    ),
    (["strategy.num_round=3"], "did you mean strategy.num_rounds?"),
    (["++privacy.epsilonn=3"], "privacy.epsilonn=3"),
    (["+model.lora_r=4"], "model.lora_r=4: a setting of model=causal_lora or model=lora"),
    (["model=foo"], "model=foo: no such option; choose one of causal_lora, lora, projection"),
    (["privacy.noise=foo"], "privacy.noise='foo': expected one of auto, distributed, local, central, none"),
    (["privacy.noise=Central"], "privacy.noise='Central'"),
    (["privacy.accountant=gdp"], "privacy.accountant='gdp': expected one of rdp, prv"),
    (["secagg.on_failure=retry"], "secagg.on_failure='retry': expected one of continue, stop"),
    (["eval.split=train"], "eval.split='train'"),
    (["model.user_encoder=gru"], "model.user_encoder='gru'"),
    (["privacy.epsilon=abc"], "privacy.epsilon='abc': expected a number > 0"),
    (["privacy.epsilon=0"], "privacy.epsilon=0: expected a number > 0"),
    (["privacy.epsilon=-inf"], "privacy.epsilon=-inf"),
    (["privacy.epsilon=nan"], "privacy.epsilon=nan"),
    (["privacy.delta=1"], "privacy.delta=1: expected a number > 0 and < 1"),
    (["strategy.num_rounds=0"], "strategy.num_rounds=0: expected an integer >= 1"),
    (["strategy.num_rounds=2.5"], "strategy.num_rounds=2.5: expected an integer"),
    (["strategy.num_rounds=ten"], "strategy.num_rounds='ten'"),
    (["strategy.fraction_fit=0"], "strategy.fraction_fit=0: expected a number > 0 and <= 1"),
    (["strategy.fraction_fit=1.5"], "strategy.fraction_fit=1.5"),
    (["train.batch_size=0"], "train.batch_size=0"),
    (["privacy.seeded_noise=yes please"], "privacy.seeded_noise='yes please': expected true or false"),
    (["model.decay=1.5"], "model.decay=1.5: expected a number >= 0 and <= 1"),
    (["eval.ks=[10,0]"], "eval.ks=[10, 0]: expected a list of integers >= 1"),
    (["partition.num_clients=0"], "partition.num_clients=0"),
    (["secagg.simulate_dropout=1"], "secagg.simulate_dropout=1"),
    (["seed=-3"], "seed=-3: expected an integer >= 0"),
]


@pytest.mark.parametrize("overrides, message", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_bad_config_is_refused_in_one_line_naming_key_and_value(overrides, message):
    with pytest.raises(ConfigError) as e:
        compose(overrides)
    text = str(e.value)
    assert message in text and "\n" not in text


@pytest.mark.parametrize(
    "overrides",
    [
        ["privacy.epsilon=inf"],
        ["privacy.delta=1e-5"],
        ["privacy=none"],
        ["strategy.fraction_fit=0.5"],
        ["model=lora", "model.lora_r=4"],
        ["secagg.reconstruction_threshold=7"],
        ["privacy.budget_epsilon=inf"],
        ["eval.ks=[1,10]"],
        ["model.decay=0"],
        ["strategy.num_rounds=1"],
    ],
)
def test_good_values_pass(overrides):
    compose(overrides)


def test_every_combination_of_group_options_composes():
    """No group option's defaults are refused beside another group's (e.g. privacy=none's null ε)."""
    pairs = [("privacy", "secagg"), ("privacy", "strategy"), ("model", "privacy")]
    for a, b in pairs:
        for x, y in itertools.product(_options(a), _options(b)):
            compose([f"{a}={x}", f"{b}={y}"])


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FEDREC_CACHE": str(tmp_path / "cache"),
    }
    return subprocess.run(
        [sys.executable, "-m", "simulations.run", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["+strategy.num_round=3"], "did you mean strategy.num_rounds?"),
        (["privacy.epsilon=abc"], "privacy.epsilon='abc'"),
        (["-m", "privacy.epsilon=1,abc"], "privacy.epsilon='abc'"),  # every run of a sweep, up front
    ],
)
def test_a_refused_command_line_exits_2_with_one_line_and_creates_no_folder(tmp_path, args, message):
    proc = _cli(tmp_path, *args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedrec: error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["dataset=movielens_100k", "dataset.path=missing-folder"], "missing-folder"),
        # distributed noise cannot hide one client's sum
        (["partition.num_clients=1", "dataset.num_users=60", "dataset.num_items=40"], "partition.num_clients=1"),
    ],
)
def test_a_run_refused_after_loading_its_data_leaves_no_folder(tmp_path, args, message):
    proc = _cli(tmp_path, *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_a_refused_run_never_removes_an_earlier_runs_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    proc = _cli(
        tmp_path, "partition.num_clients=1", "dataset.num_users=60", "dataset.num_items=40", f"hydra.run.dir={run}"
    )
    assert proc.returncode == 2
    assert (run / "summary.json").read_text() == "{}"
