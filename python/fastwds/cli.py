"""The ``fastwds`` command line. Each subcommand lives in its own module and registers its
arguments here through an ``add_arguments(parser)`` / ``run(args) -> int`` pair."""

from __future__ import annotations

import argparse
import logging
import sys

from fastwds import __version__
from fastwds.errors import FastwdsError


def build_parser() -> argparse.ArgumentParser:
    from fastwds import inspect as inspect_cli
    from fastwds.bench import cli as bench_cli
    from fastwds.convert import cli as convert_cli
    from fastwds.verify import cli as verify_cli

    parser = argparse.ArgumentParser(
        prog="fastwds",
        description="Turn ML training data into validated, deterministic WebDataset shards.",
    )
    parser.add_argument("--version", action="version", version=f"fastwds {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    convert = commands.add_parser("convert", help="convert a dataset into WebDataset shards")
    convert_cli.add_arguments(convert)
    bench = commands.add_parser("bench", help="measure fastwds against the alternatives on this machine")
    bench_cli.add_arguments(bench)
    bench.set_defaults(run=bench_cli.run)
    inspect = commands.add_parser("inspect", help="show the samples of shards (any producer)",
                                  description=inspect_cli.DESCRIPTION)
    inspect_cli.add_arguments(inspect)
    verify = commands.add_parser("verify", help="check shards, keys, JSON, images and indexes; exit 1 on errors",
                                 description=verify_cli.DESCRIPTION)
    verify_cli.add_arguments(verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("fastwds: interrupted", file=sys.stderr)
        return 130
    except (FastwdsError, ValueError, OSError) as error:
        # Users get one clear line; the traceback is for bugs, not for bad input.
        print(f"fastwds: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
