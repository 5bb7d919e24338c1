"""Argument helpers shared by the commands and the sources' own arguments."""

from __future__ import annotations

import argparse
import re

from fastwds.errors import InvalidInputError

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """``3GB``, ``500MiB``, ``1e9`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 3GB, 500MiB, 1000000)")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def positional_or_flag(args: argparse.Namespace, name: str) -> str:
    """A path given as a positional or, in the seed scripts' spelling, as ``--NAME``."""
    value = getattr(args, f"{name}_flag") or getattr(args, name)
    if not value:
        raise InvalidInputError(f"{name.upper()} is required (positional, or --{name})")
    return value
