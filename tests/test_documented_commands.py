"""Every command the README and docs/ show is true: each ``python train.py`` / ``python evaluate.py`` /
``python -m hbt.<module>`` line (in a fenced block, or an inline code span) composes with hbt's own
command-line check, placeholders filled and sweeps checked value by value; argparse modules parse their
arguments; and the commands that need nothing beyond what CI has run (briefly)."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import sys

import pytest
from conftest import ROOT

from hbt.cli import composition_error

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"python (?:train\.py|evaluate\.py|-m hbt\.[\w.]+)")
HYDRA_SCRIPTS = {"train.py": "train", "evaluate.py": "evaluate", "-m hbt.mine": "mine"}
# What a placeholder stands for, by the key it is the value of (else a path-like word).
FILLS = {"experiment": "paper_xlmr"}


def documented_commands() -> list[tuple[str, str]]:
    """(``file:line``, command) for every command line of the docs, continuation lines joined."""
    found = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        fenced = False
        for number, line in enumerate(lines, 1):
            if line.strip().startswith("```"):
                fenced = not fenced
                continue
            if fenced:
                text = line.strip()
                while text.endswith("\\") and number < len(lines):
                    text = text[:-1] + " " + lines[number].strip()
                    number += 1
                candidates = [text] if text.startswith("python ") else []
            else:
                # a bare module name in prose ("`python -m hbt.report`") names a tool; it is no command
                candidates = [
                    span for span in re.findall(r"`([^`]+)`", line) if span.startswith("python ") and " " in span.split(" ", 2)[-1]
                ]
            for command in candidates:
                if COMMAND.match(command):
                    found.append((f"{doc.relative_to(ROOT)}:{number}", command.split("  #")[0].split(" # ")[0].strip()))
    return found


def arguments(command: str) -> tuple[str, list[str]]:
    """The script (``train.py``, ``-m hbt.report``) and its arguments, placeholders filled, elisions and
    environment variables resolved, as a shell would split them."""
    command = command.replace("<same overrides>", "").replace("...", " ")
    command = re.sub(r"\$\{?(\w+)\}?", "123", command)

    def fill(match: re.Match) -> str:
        key = match.string[: match.start()].rsplit(" ", 1)[-1].rstrip("=")
        return FILLS.get(key, "placeholder-" + re.sub(r"\W+", "-", match.group(1)).strip("-"))

    command = re.sub(r"<([^<>]+)>", fill, command)
    words = shlex.split(command)[1:]
    if words[0] == "-m":
        return f"-m {words[1]}", words[2:]
    return words[0], words[1:]


COMMANDS = documented_commands()


def test_the_docs_hold_the_commands_this_test_checks():
    where = {place.split(":")[0] for place, _ in COMMANDS}
    assert len(COMMANDS) > 50 and {"README.md", "docs/research_questions.md", "docs/evaluation.md"} <= where


class Parsed(Exception):
    pass


@pytest.mark.slow  # 55 compositions: ~25 s on one core
@pytest.mark.parametrize("place,command", COMMANDS, ids=[place for place, _ in COMMANDS])
def test_every_documented_command_composes(place, command, monkeypatch):
    script, args = arguments(command)
    if script in HYDRA_SCRIPTS:
        multirun = "-m" in args or "--multirun" in args
        overrides = [a for a in args if a not in ("-m", "--multirun")]
        assert composition_error(ROOT / "conf", HYDRA_SCRIPTS[script], overrides, multirun) is None, f"{place}: {command}"
        return
    module = importlib.import_module(script.removeprefix("-m "))
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, argv=None, namespace=None):
        original(self, argv, namespace)  # exits 2 with argparse's message on a bad argument
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises(Parsed):
        module.main(args) if "argv" in module.main.__code__.co_varnames else module.main()


# Commands with a model other than the offline default, or a GPU trainer, need the Hub or a GPU: composed only.
RUNNABLE = [
    (place, command)
    for place, command in COMMANDS
    if command.startswith("python train.py")
    and not re.search(r"<|\.\.\.|(^| )-m( |$)|model=|trainer=", command.removeprefix("python train.py"))
]


@pytest.mark.slow
def test_the_documented_training_commands_that_need_no_data_run(make_cfg, tmp_path):
    """The plain train.py commands (no placeholder, no sweep, the offline model) run on what CI has: two
    steps each, CSV logs."""
    from hbt.tasks import train

    assert len(RUNNABLE) >= 2, RUNNABLE
    for n, (place, command) in enumerate(RUNNABLE):
        _, overrides = arguments(command)
        train(make_cfg("train", [*overrides, "trainer.max_steps=2", "logger=csv"], tmp_path / str(n)))
        assert (tmp_path / str(n) / "results.json").is_file(), place
