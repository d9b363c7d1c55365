"""The parser of every command beside LightningCLI's: jsonargparse, the parser LightningCLI uses,
so the flags look alike (``--ckpt_path``), ``--help`` shows types and defaults, and ``--config``
reads the same options from a YAML file."""

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter


class _Help(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with the description's examples kept as written."""


def command_parser(prog: str, description: str) -> ArgumentParser:
    """A parser whose ``-c/--config`` reads its options from a YAML file, later flags winning."""
    parser = ArgumentParser(prog=prog, description=description, formatter_class=_Help)
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="a YAML file of these options"
    )
    return parser


def call_with_args(
    command: Callable[..., Any], argv: Sequence[str], prog: str, description: str
) -> Any:
    """Parse ``argv`` (and ``--config`` files) into ``command``'s typed, documented arguments
    and call it; a bad option exits 2 with jsonargparse's usage message."""
    parser = command_parser(prog, description)
    parser.add_function_arguments(command, fail_untyped=True)
    config = parser.parse_args(list(argv))
    arguments = parser.instantiate_classes(config).as_dict()
    arguments.pop("config", None)
    return command(**arguments)
