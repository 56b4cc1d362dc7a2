"""Runs that cannot or did not train are refused or fail in one line, never passed off as results."""

import sys
from pathlib import Path

import pytest

from common.config import compose
from common.secagg.protocol import SecAggConfigError, check_secagg_round, protocol_sizes, sampled_clients

sys.path.insert(0, str(Path(__file__).parent))
from test_simulation import SMALL, run_cli  # noqa: E402

LOCAL = ["privacy.noise=local", "secagg=secaggplus"]


def test_secagg_with_one_client_per_round_is_refused_up_front():
    with pytest.raises(
        SecAggConfigError,
        match=r"needs at least 2 clients per round; this run samples 1 of its 1 "
        r"\(partition.num_clients=1",
    ):
        check_secagg_round(compose(LOCAL), 1)
    # 10 clients but a fraction that samples one (min_fit_clients 1)
    cfg = compose([*LOCAL, "strategy.fraction_fit=0.1", "strategy.min_fit_clients=1"])
    assert sampled_clients(cfg, 10) == 1
    with pytest.raises(SecAggConfigError, match="samples 1 of its 10"):
        check_secagg_round(cfg, 10)


def test_a_threshold_above_the_clients_sampled_is_refused_up_front():
    cfg = compose([*LOCAL, "secagg.reconstruction_threshold=5"])
    with pytest.raises(
        SecAggConfigError,
        match=r"secagg.reconstruction_threshold=5 asks for 5 shares to unmask, "
        r"but each client shares with only 4",
    ):
        check_secagg_round(cfg, 4)
    check_secagg_round(cfg, 5)


def test_protocol_sizes_follow_flowers_rules():
    cfg = compose(LOCAL)  # num_shares 1.0, threshold 0.6
    assert protocol_sizes(cfg, 10) == (10, 6)
    assert protocol_sizes(compose([*LOCAL, "secagg.num_shares=0.5"]), 10) == (5, 3)  # even 5 stays; 0.6·5 = 3
    assert protocol_sizes(compose([*LOCAL, "secagg.num_shares=0.4"]), 10) == (5, 3)  # 4 is even: one more
    assert protocol_sizes(compose(["secagg=secaggplus"]), 10) == (10, 10)  # distributed noise: every client
    check_secagg_round(compose(LOCAL), 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "secagg, message",
    [
        # plain FedAvg: the clients' own refusals reach the server
        ("none", "fedrec: error: round 1: 3 client(s) failed to train; first: "),
        # SecAgg+: a refusing client looks like a dropout; no round can aggregate
        ("secaggplus", "fedrec: error: no round aggregated: 2 of 2 rounds failed secure aggregation"),
    ],
)
def test_a_diverged_run_exits_1_with_one_line_and_no_result(tmp_path, secagg, message):
    proc = run_cli(tmp_path, *SMALL, "privacy=none", f"secagg={secagg}", "train.lr=1e30")  # inf: refused up front
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(message), last
    if secagg == "none":
        assert "NaN/Inf value(s): training diverged; not sent" in last
    # each refusal is one line and an error reply, not a crash: no traceback, no restarted actor
    assert "Traceback" not in proc.stdout + proc.stderr
    run = tmp_path / "run"
    assert not (run / "summary.json").exists() and not (run / "adapter").exists()
    assert (run / "failed.txt").is_file()
