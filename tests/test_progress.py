"""The run progress display: a bar on a terminal only, and the per-round status text."""

import io
import logging

import pytest
from rich.console import Console

from common.tracking.progress import RunProgress, progress_wanted, round_status


def test_round_status_text():
    assert round_status(9, 10, 4.7234, 0.10432) == "clients 9/10  ε 4.72  ndcg@10 0.1043"
    assert round_status(None, None, None, None) == "ε inf"


@pytest.mark.parametrize("value, wanted", [("0", False), ("1", True)])
def test_fedrec_progress_forces_the_bar_on_or_off(monkeypatch, value, wanted):
    monkeypatch.setenv("FEDREC_PROGRESS", value)
    assert progress_wanted() is wanted


def test_without_a_terminal_there_is_no_bar(monkeypatch, capsys):
    monkeypatch.delenv("FEDREC_PROGRESS", raising=False)
    bar = RunProgress(5)  # pytest's captured stderr is not a terminal
    bar.update(3, "ε 1.00")
    bar.close()
    assert capsys.readouterr().err == ""


def test_the_bar_shows_rounds_done_and_status_and_restores_log_handlers(monkeypatch):
    monkeypatch.setenv("FEDREC_PROGRESS", "1")
    out = io.StringIO()
    monkeypatch.setattr("rich.console.Console", lambda **kw: Console(file=out, width=120, force_terminal=False))
    handler = logging.StreamHandler()
    logging.getLogger("flwr").addHandler(handler)
    stream = handler.stream
    try:
        bar = RunProgress(5, "round", "federated")
        bar.update(3, round_status(10, 10, 4.72, None))
        bar.close()
    finally:
        logging.getLogger("flwr").removeHandler(handler)
    text = out.getvalue()
    assert "federated" in text and "3/5" in text and "clients 10/10  ε 4.72" in text
    assert handler.stream is stream
