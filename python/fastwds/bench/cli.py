"""``fastwds bench BENCHMARK``: every benchmark is a subcommand listed in ``SUBCOMMANDS``.

A benchmark module provides ``add_arguments(parser)`` for its own options and ``run(args) -> int``;
the options every benchmark shares (``--repeat``, ``--json``, ``--dir``) are added here, so
``run`` finds them on ``args`` and passes them to ``harness.run_suite``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NamedTuple

from fastwds.arguments import parents, positive
from fastwds.bench import convert, read, upload, write


class Subcommand(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {
    "write": Subcommand(write.HELP, write.add_arguments, write.run),
}
SUBCOMMANDS["convert"] = Subcommand(convert.HELP, convert.add_arguments, convert.run)
SUBCOMMANDS["read"] = Subcommand(read.HELP, read.add_arguments, read.run)
SUBCOMMANDS["upload"] = Subcommand(upload.HELP, upload.add_arguments, upload.run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")  # checked by cli.missing_choice
    for name, command in SUBCOMMANDS.items():
        sub = benchmarks.add_parser(name, help=command.help, description=command.help, parents=parents())
        sub.add_argument("--repeat", type=positive(int), default=3, metavar="N",
                         help="timed repetitions after one warm-up round (default: %(default)s)")
        sub.add_argument("--json", action="store_true",
                         help="print the report (every number) as JSON on stdout; the table goes to stderr")
        sub.add_argument("--report", metavar="FILE", help="also write the JSON report to FILE")
        sub.add_argument("--dir", metavar="DIR",
                         help="where the temporary output goes (default: the system temp dir); "
                              "use the disk you will write shards to")
        command.add_arguments(sub)
        # Not "run": the top-level parser already sets that to this module's run().
        sub.set_defaults(bench_run=command.run)


def run(args: argparse.Namespace) -> int:
    return args.bench_run(args)
