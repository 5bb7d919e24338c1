"""Argument helpers shared by the commands and the sources' own arguments."""

from __future__ import annotations

import argparse
import re

from typing import Any

from fastwds.errors import UsageError

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """``3GB``, ``500MiB``, ``1e9`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 3GB, 500MiB, 1000000)")
    size = int(float(match.group(1)) * UNITS[match.group(2).upper()])
    if size <= 0:  # a cap of 0 bytes wrote every sample alone in a shard, with a warning each
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes, not {text!r}")
    return size


def positional_or_flag(args: argparse.Namespace, name: str, shown: str | None = None) -> str:
    """A path given as a positional or, in the seed scripts' spelling, as ``--NAME``."""
    value = getattr(args, f"{name}_flag", None) or getattr(args, name)
    if not value:
        raise UsageError(f"{shown or name.upper()} is required")
    return value


def positive(kind: type) -> Any:
    """An argparse ``type=`` that accepts only values of ``kind`` above zero."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be at least 1, not {text}" if kind is int
                                             else f"must be positive, not {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def add_flag(parser: Any, name: str, *aliases: str, **options: Any) -> argparse.Action:
    """A dashed flag, shown in ``--help``, and other spellings of it (the seed scripts'
    underscores) that work but are not shown."""
    action = parser.add_argument(name, **options)
    hidden = {k: v for k, v in options.items() if k not in ("default", "help", "metavar", "dest", "required")}
    for alias in aliases:
        parser.add_argument(alias, dest=action.dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **hidden)
    return action


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_log_level(parser: argparse.ArgumentParser, default: Any) -> None:
    add_flag(parser, "--log-level", "--log_level", dest="log_level", type=str.upper, choices=LOG_LEVELS,
             default=default, metavar="LEVEL", help="DEBUG, INFO (default), WARNING or ERROR, on stderr")


def parents() -> list[argparse.ArgumentParser]:
    """What every subcommand takes as well as the top-level command (``fastwds --log-level DEBUG
    verify ...`` and ``fastwds verify ... --log-level DEBUG`` alike): the subcommand's copy leaves
    the top level's value alone unless given."""
    common = argparse.ArgumentParser(add_help=False)
    add_log_level(common, argparse.SUPPRESS)
    return [common]
