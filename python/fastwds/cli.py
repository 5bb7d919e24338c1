"""The ``fastwds`` command line. Each subcommand lives in its own module and registers its
arguments here through an ``add_arguments(parser)`` / ``run(args) -> int`` pair.

Exit status, as Unix tools have it: 0 done, 1 an error in the data or the run (one line naming the
file and the reason, never a traceback), 2 a wrong command line (with the usage), 130 Ctrl-C,
143 SIGTERM (stopped the same way), 141 the reader of our output went away (``fastwds inspect ...
| head``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

# fastwds does no linear algebra. numpy's OpenBLAS otherwise starts a thread per core when numpy is
# imported, and they spin for a while: ~0.1 CPU-s per process here, in every worker process too
# (they inherit the environment), on a 32-core node 31 spinning threads per process. Set before
# anything imports numpy; a value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


# The commands and their one-line help: ``fastwds --help`` lists them without importing them.
COMMANDS = {
    "convert": "convert a dataset into WebDataset shards",
    "bench": "measure fastwds against the alternatives on this machine",
    "inspect": "show the samples of shards (any producer)",
    "verify": "check shards, keys, JSON, images and indexes; exit 1 on errors",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only``, the arguments of that command alone (the others
    are listed but empty), so a command imports only what it uses: ``convert`` and ``bench``
    import polars and pyarrow, which took most of the ~0.8 s ``fastwds inspect`` or ``--help``
    needed to start. ``only=""``: no command's arguments."""
    from fastwds import __version__
    from fastwds.arguments import add_log_level

    parser = argparse.ArgumentParser(
        prog="fastwds",
        description="Turn ML training data into validated, deterministic WebDataset shards.",
    )
    parser.add_argument("--version", action="version", version=f"fastwds {__version__}")
    add_log_level(parser, "INFO")
    # Not required=True: argparse would then report a missing COMMAND before an unknown option
    # (``fastwds --bogus``); ``missing_choice`` checks it after parsing instead.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        if only is not None and name != only:
            commands.add_parser(name, help=summary)
        else:
            ADD_COMMAND[name](commands, summary)
    return parser


def _add_convert(commands: Any, summary: str) -> None:
    from fastwds.arguments import parents
    from fastwds.convert import cli as convert_cli

    convert = commands.add_parser("convert", help=summary, parents=parents(),
                                  description="Convert a dataset into validated WebDataset shards.")
    convert_cli.add_arguments(convert)


def _add_bench(commands: Any, summary: str) -> None:
    from fastwds.arguments import parents
    from fastwds.bench import cli as bench_cli

    bench = commands.add_parser("bench", help=summary, parents=parents())
    bench_cli.add_arguments(bench)
    bench.set_defaults(run=bench_cli.run, parser=bench)


def _add_inspect(commands: Any, summary: str) -> None:
    from fastwds import inspect as inspect_cli
    from fastwds.arguments import parents

    inspect = commands.add_parser("inspect", help=summary, description=inspect_cli.DESCRIPTION, parents=parents())
    inspect_cli.add_arguments(inspect)
    inspect.set_defaults(parser=inspect)


def _add_verify(commands: Any, summary: str) -> None:
    from fastwds.arguments import parents
    from fastwds.verify import cli as verify_cli

    verify = commands.add_parser("verify", help=summary, description=verify_cli.DESCRIPTION, parents=parents())
    verify_cli.add_arguments(verify)
    verify.set_defaults(parser=verify)


ADD_COMMAND = {"convert": _add_convert, "bench": _add_bench, "inspect": _add_inspect, "verify": _add_verify}


def command_named(argv: list[str]) -> str:
    """The command a command line asks for (its first word that is one), or "" for none
    (``fastwds --help``, ``fastwds --version``)."""
    return next((word for word in argv if word in COMMANDS), "")


def missing_choice(parser: argparse.ArgumentParser,
                   args: argparse.Namespace) -> tuple[argparse.ArgumentParser, argparse.Action] | None:
    """The (sub)command parser whose subcommand was not given (``fastwds``, ``fastwds convert``)
    and its subcommands, or None. The subcommand groups are optional to argparse so that an
    unknown option is named first: ``fastwds --bogus`` says "unrecognized arguments: --bogus",
    not "the following arguments are required: COMMAND"."""
    while choices := next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None):
        chosen = getattr(args, choices.dest, None)
        if chosen is None:
            return parser, choices
        parser = choices.choices[chosen]
    return None


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args``, with options allowed between positionals as well
    (``convert parquet IN --overwrite OUT``). argparse fills optional positionals (``INPUT
    OUTPUT_DIR``, optional for the seed scripts' ``--input_dir``/``--output_dir``) from the first
    run of words only, so OUT was an "unrecognized argument". The command's own parser, which has
    no subcommands, then parses its words again with ``parse_intermixed_args``."""
    args, extras = parser.parse_known_args(argv)
    command = getattr(args, "parser", None)
    if extras and command is not None and not any(isinstance(a, argparse._SubParsersAction) for a in command._actions):
        word = command.prog.split()[-1]  # "parquet" for "fastwds convert parquet"
        return command.parse_intermixed_args(argv[argv.index(word) + 1:], namespace=args)
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


class _Terminated:
    """SIGTERM (a scheduler preempting the job, ``kill``, ``docker stop``) stops a run the way
    Ctrl-C does: finished tasks kept, how far it got and how to resume said, exit 128 + 15."""

    received = False

    @classmethod
    def handle(cls, signum: int, frame: object) -> None:
        cls.received = True
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # Workers start with the default SIGTERM: the driver stops them. (Restored at the end for
    # callers that run main() inside their own process.)
    previous = signal.signal(signal.SIGTERM, _Terminated.handle)
    try:
        return _main(argv)
    except KeyboardInterrupt as interrupt:  # Ctrl-C (or SIGTERM) at any moment, start-up included
        if not getattr(interrupt, "reported", False):  # a conversion already said how far it got
            print("fastwds: terminated" if _Terminated.received else "fastwds: interrupted", file=sys.stderr)
        return 128 + signal.SIGTERM if _Terminated.received else 130
    except BrokenPipeError:  # like other tools: stop quietly when the reader is gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the final flush at exit cannot fail again
        return 141
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    from fastwds.errors import FastwdsError, UsageError

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(only=command_named(argv))
    args = parse_arguments(parser, argv)
    if missing := missing_choice(parser, args):
        command, choices = missing
        command.error(f"choose a {choices.metavar}: {', '.join(choices.choices)}")
    # fastwds' own messages at the level asked for; other libraries' (asyncio, Ray) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("fastwds").setLevel(args.log_level)
    try:
        return args.run(args)
    except UsageError as error:
        command = getattr(args, "parser", parser)
        command.print_usage(sys.stderr)
        print(f"{command.prog}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise  # not an error of the data: main() ends quietly
    except (FastwdsError, ValueError, OSError) as error:
        # Users get one clear line; the traceback is for bugs, not for bad input.
        print(f"fastwds: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
