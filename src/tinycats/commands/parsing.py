"""The parser of every command beside LightningCLI's: jsonargparse, the parser LightningCLI uses,
so the flags look alike (``--ckpt_path``), ``--help`` shows types and defaults, and ``--config``
reads the same options from a YAML file."""

import argparse
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, Namespace

log = logging.getLogger(__name__)


class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with the description's lists and examples kept as written."""


def command_parser(prog: str, description: str) -> ArgumentParser:
    """A parser whose ``-c/--config`` reads its options from a YAML file, later flags winning."""
    parser = ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="a YAML file of these options"
    )
    return parser


def accept_old_names(parser: ArgumentParser, renamed: Mapping[str, str]) -> None:
    """Accept each old option name of ``renamed`` (old → new), as a flag or a config key, hidden
    from ``--help``: scripts and config files written before the rename keep working. The old
    option takes the type of the new one's default."""
    for old, new in renamed.items():
        kind = type(parser.get_default(new))
        parser.add_argument(f"--{old}", type=kind | None, default=None, help=argparse.SUPPRESS)


def use_new_names(config: Namespace, renamed: Mapping[str, str]) -> Namespace:
    """Move each old option given in ``config`` to its new name, with a deprecation warning."""
    for old, new in renamed.items():
        value = config.pop(old)
        if value is not None:
            log.warning("--%s is deprecated: use --%s (`%s:` in a config file).", old, new, new)
            config[new] = value
    return config


def call_with_args(
    command: Callable[..., Any],
    argv: Sequence[str],
    prog: str,
    description: str,
    renamed: Mapping[str, str] | None = None,
) -> Any:
    """Parse ``argv`` (and ``--config`` files) into ``command``'s typed, documented arguments
    and call it; a bad option exits 2 with jsonargparse's usage message. ``renamed`` maps old
    option names, still accepted, to the arguments that replaced them."""
    parser = command_parser(prog, description)
    parser.add_function_arguments(command, fail_untyped=True)
    accept_old_names(parser, renamed or {})
    config = use_new_names(parser.parse_args(list(argv)), renamed or {})
    arguments = parser.instantiate_classes(config).as_dict()
    arguments.pop("config", None)
    return command(**arguments)
