"""The command line imports only the sub-command it runs and lists the others from its own table."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from AnomalyScoutLib.cli import COMMANDS, build_parser, command_name


@pytest.mark.parametrize("module", list(COMMANDS))
def test_the_listed_help_is_the_line_each_module_registers(module):
    subparsers = argparse.ArgumentParser().add_subparsers()
    importlib.import_module(f"AnomalyScoutLib.commands.{module}").register(subparsers)
    (choice,) = subparsers._choices_actions
    assert (choice.dest, choice.help) == (command_name(module), COMMANDS[module])


def test_the_named_command_gets_its_full_parser():
    argv = ["phantom", "--out", "x", "--n", "2"]
    args = build_parser(argv).parse_args(argv)
    assert args.n == 2 and callable(args.func)


def test_help_and_phantom_start_without_torch_or_matplotlib():
    code = (
        "import sys\n"
        "from AnomalyScoutLib.cli import build_parser\n"
        "build_parser(['--help'])\n"
        "build_parser(['phantom', '--out', 'x'])\n"
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
