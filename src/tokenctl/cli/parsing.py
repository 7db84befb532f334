"""What every ``tokenctl`` parser shares: help texts that show defaults, and ``--config`` before or after the command."""

from __future__ import annotations

import argparse
from collections.abc import Iterator


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Adds "(default: …)" to an option's help when it has a meaningful default the text does not already state."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, [], argparse.SUPPRESS)
            or not action.option_strings
            or isinstance(action, argparse._HelpAction)
        ):
            return text
        return f"{text} (default: %(default)s)"


def all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every sub-command's parser, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from all_parsers(sub)


def finish_parser(root: argparse.ArgumentParser, config_help: str) -> None:
    """Give every parser the defaults-showing formatter and a ``--config`` option.

    The top level's ``--config`` defaults to None; a sub-command's only sets the value when given, so
    ``tokenctl --config c.yaml report`` and ``tokenctl report --config c.yaml`` mean the same.
    """
    for parser in all_parsers(root):
        parser.formatter_class = DefaultsHelpFormatter
        default = None if parser is root else argparse.SUPPRESS
        parser.add_argument("--config", default=default, metavar="FILE", help=config_help)
