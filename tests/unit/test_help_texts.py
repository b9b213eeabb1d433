"""Every option and argument of the command-line tools says what it is for."""

from __future__ import annotations

import argparse

import pytest

from admin.admin import build_parser as admin_parser
from admin.demo import build_parser as demo_parser
from producer.cli import build_parser as cli_parser


def _undocumented(parser: argparse.ArgumentParser, where: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _undocumented(sub, f"{where} {name}")
        elif not action.help and not isinstance(action, argparse._HelpAction):
            missing.append(f"{where}: {'/'.join(action.option_strings) or action.dest}")
    return missing


@pytest.mark.parametrize(("name", "parser"), [
    ("bisect-cli", cli_parser()), ("bisect-admin", admin_parser()),
    ("bisect-admin demo", demo_parser())])
def test_every_option_has_help(name: str, parser: argparse.ArgumentParser) -> None:
    assert _undocumented(parser, name) == []
