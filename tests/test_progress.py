"""Progress of long work: a bar on a terminal, plain log lines with rate and ETA in logs, nothing when off."""

import io
import logging

import pytest

from hbt.errors import ConfigError
from hbt.progress import check_progress, progress, status_line


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_by_hand():
    assert status_line("encode passage", 12000, 50000, 30.0, "texts") == "encode passage: 12000/50000 texts (24%), 400.0 texts/s, ETA 1m35s"
    assert status_line("mine en", 10, None, 4.0, "queries") == "mine en: 10 queries, 2.5 queries/s"


def test_log_lines_where_output_is_no_terminal(caplog, monkeypatch):
    import hbt.progress

    clock = iter(range(0, 1000, 20))  # 20 s per item
    monkeypatch.setattr(hbt.progress.time, "monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="hbt.progress"):
        got = list(progress([[1, 2], [3], [4, 5, 6]], 6, "encode query", "auto", weight=len, interval=30, stream=io.StringIO()))
    assert got == [[1, 2], [3], [4, 5, 6]]
    # Log lines at 40 s (3 texts) and 80 s... only when 30 s passed since the last one.
    assert [r.getMessage() for r in caplog.records] == ["encode query: 3/6 texts (50%), 0.1 texts/s, ETA 40s"]


def test_a_bar_on_a_terminal_and_nothing_when_off(caplog):
    terminal = Terminal()
    assert list(progress(range(3), 3, "x", True, stream=terminal)) == [0, 1, 2]  # ends within tqdm's delay: no bar drawn
    with caplog.at_level(logging.INFO, logger="hbt.progress"):
        items = [1, 2]
        assert progress(items, 2, "x", False) is items
    assert not caplog.records


def test_config_values():
    assert [check_progress(v, "evaluator.progress") for v in ("auto", "true", "false", True, False, "AUTO")] == [
        "auto",
        True,
        False,
        True,
        False,
        "auto",
    ]
    with pytest.raises(ConfigError, match=r"evaluator.progress: expected auto, true or false; got 'sometimes'"):
        check_progress("sometimes", "evaluator.progress")


def test_tokenization_logs_status_lines_instead_of_a_bar_where_output_is_no_terminal(caplog, capfd, monkeypatch, tmp_path):
    """In a job log, datasets' carriage-return bar is replaced by hbt's status lines (rate, ETA)."""
    from test_datamodule import write_items

    import hbt.progress
    from hbt.data.loaders import load_jsonl
    from hbt.models.encoder import Encoder

    write_items(tmp_path / "items.jsonl", 2500)
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "cache"))  # built here, not reused
    store = load_jsonl(str(tmp_path / "items.jsonl"))
    monkeypatch.setattr(hbt.progress, "INTERVAL", 0.0)  # a line per batch
    with caplog.at_level(logging.INFO, logger="hbt.progress"):
        tokens = store.tokenized(
            Encoder(tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}).text_tokenizer, workers=1
        )
    assert len(tokens) == 2500
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tokenize")]
    assert [line.split(",")[0] for line in lines] == [
        "tokenize: 1000/2500 items (40%)",
        "tokenize: 2000/2500 items (80%)",
        "tokenize: 2500/2500 items (100%)",
    ]
    assert all("items/s, ETA" in line for line in lines)
    assert "tokenize:" not in capfd.readouterr().err  # no datasets bar in the log
