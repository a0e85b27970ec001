"""Every ``ooblex`` option says what it does in ``--help``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from ooblex.cli import build_parser, main


def _parsers(parser: argparse.ArgumentParser, name: str = "ooblex") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_option_and_argument_of_every_command_has_help_text() -> None:
    missing, seen = [], 0
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            seen += 1
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert seen > 50  # the walk reached the subcommands (and the token scopes below ``ooblex token``)
    assert not missing, f"options without help text: {missing}"


def test_up_help_describes_workers_and_broker(capsys) -> None:  # noqa: ANN001
    try:
        main(["up", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for option, words in [("--workers", "worker processes"), ("--broker", "rabbitmq")]:
        block = out.split("options:", 1)[1].split(f"  {option}", 1)[1].split("\n  -", 1)[0]
        assert words in block, (option, block)
