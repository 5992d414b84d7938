"""The ``maskx`` command line: every command that writes something names where with ``--out``;
the earlier spellings (``maskx export --output``, ``maskx bench … --json``) still parse, hidden."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from maskx.bench.cli import BENCHMARKS
from maskx.cli import COMMANDS, OUTPUT_FLAG, main

# Commands that write no file: `serve` answers HTTP requests and keeps nothing.
WRITES_NOTHING = {"serve"}
# Earlier spellings of the output flag that must keep working: (argv, dest).
OLD_SPELLINGS = {
    "export": (["--checkpoint", "c.pt", "--output", "m.onnx"], "output"),
    **{f"bench {b}": (["--json", "f.json"], "json")
       for b in ("heads", "mask_heads", "export", "postprocess", "service", "train")},
}  # fmt: skip


def _parser(command: str) -> argparse.ArgumentParser:
    if command.startswith("bench "):
        module = importlib.import_module(f"maskx.bench.{command.split()[1]}")
    else:
        module = importlib.import_module(COMMANDS[command][0])
    parser = argparse.ArgumentParser(prog=f"maskx {command}")
    module.add_arguments(parser)
    return parser


def _options_in_help(parser: argparse.ArgumentParser) -> set[str]:
    return set(re.findall(r"^\s+(--[a-z0-9-]+)", parser.format_help(), flags=re.MULTILINE))


WRITERS = [c for c in COMMANDS if c not in WRITES_NOTHING and c != "bench"] + [
    f"bench {b}" for b in BENCHMARKS
]


@pytest.mark.parametrize("command", WRITERS)
def test_every_command_that_writes_takes_out(command):
    assert OUTPUT_FLAG == "--out"
    assert "--out" in _options_in_help(_parser(command)), f"maskx {command} has no --out"


@pytest.mark.parametrize("command", sorted(WRITES_NOTHING))
def test_the_commands_that_write_nothing_are_the_ones_listed(command):
    assert "--out" not in _options_in_help(_parser(command))


@pytest.mark.parametrize("command", sorted(OLD_SPELLINGS))
def test_an_old_spelling_still_parses_but_is_hidden(command):
    parser = _parser(command)
    argv, dest = OLD_SPELLINGS[command]
    old_flag = next(a for a in argv if a in ("--output", "--json"))
    new_argv = [OUTPUT_FLAG if a == old_flag else a for a in argv]
    old_value = getattr(parser.parse_args(argv), dest)
    assert str(old_value).endswith(argv[-1])
    assert getattr(parser.parse_args(new_argv), dest) == old_value
    assert old_flag not in _options_in_help(parser) and old_flag not in parser.format_usage()
    with pytest.raises(SystemExit) as err:  # both spellings at once: one output, said twice
        parser.parse_args([*new_argv, old_flag, "x"])
    assert err.value.code == 2


def test_a_missing_required_output_names_out(capsys):
    with pytest.raises(SystemExit) as err:
        main(["export", "--checkpoint", "c.pt"])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "--out" in message and "--output" not in message


def test_bench_outputs_are_paths():
    args = _parser("bench heads").parse_args(["--out", "figures.json"])
    assert args.json == Path("figures.json")
