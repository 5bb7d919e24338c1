"""The contract every source meets, so planning, the pipeline, the engines, the manifest and the
command line are written once. ARCHITECTURE.md says how to add a source.

A source turns its input into independent shard tasks (``plan``), reads one task's rows in batches
(``read_task``), and validates and encodes a batch into samples (``make_converter``); everything
else (running tasks on an engine, writing shards, resume, rejects.jsonl, the manifest, indexes)
is the same for every source. ``finish`` adds what only the whole run knows.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from fastwds.convert.options import ConvertOptions
from fastwds.convert.output import Output
from fastwds.convert.pipeline import BatchConverter
from fastwds.convert.plan import Plan, Task


@dataclass
class RowBatch:
    """Consecutive rows of one input file, as plain Python values: the batch the conversation
    sources (parquet, sft) yield to ``sources.chat.ChatConverter``. Other sources yield their own
    batch type; only their converter reads it."""

    file: str  # relative to the input root
    first_row: int  # row number of ids[0] within the file
    ids: list[str | None]
    conversations: list[Any]
    # Encoded images of each row, in order: bytes, (BinaryColumn, index) references into Arrow
    # memory, None, or a Problem when the source could not read the image at all.
    images: list[list[Any]]
    extras: list[dict[str, Any]]  # other fields copied into the sample JSON as they are
    # The same rows as Arrow columns (``sources.chat.ChatColumns``), when the source has them in
    # the plain types Rust reads: the rows that need no judgment get their JSON from there.
    arrow: Any = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class SourceJob:
    """What a source's command-line arguments ask for."""

    inputs: Any  # what ``Source.plan`` takes (a folder, a list of files)
    output: str
    source_options: Any  # the source's frozen options dataclass
    # ConvertOptions fields the source's own flags set (e.g. npz --test-mode sets ``limit``).
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Finish:
    """What a source adds once every task is done."""

    stats: dict[str, Any] = field(default_factory=dict)  # merged into manifest["stats"]
    rejects: list[dict] = field(default_factory=list)  # rejected inputs only the whole run sees
    sections: dict[str, Any] = field(default_factory=dict)  # extra manifest sections ("energon")
    # Dataset files the source wrote under the staging folder it was given, relative paths in the
    # order they must appear in the output (a file that marks the others complete goes last).
    files: list[str] = field(default_factory=list)


class Source:
    """Base of every source; the registry is ``fastwds.sources.SOURCES``."""

    name: ClassVar[str]  # the subcommand (`fastwds convert NAME`) and the manifest's source.kind
    help: ClassVar[str]
    description: ClassVar[str]
    usage: ClassVar[str]  # its positionals, for the usage line: "INPUT OUTPUT_DIR"
    # The source's samples carry images: it takes --verify-images, --reencode, --quality, --max-side.
    has_images: ClassVar[bool] = True
    # ConvertOptions defaults that differ for this source (shard sizes), for the CLI and the library.
    defaults: ClassVar[dict[str, Any]] = {}
    # ConvertOptions execution fields its tasks run with; they never change the bytes written.
    execution: ClassVar[dict[str, Any]] = {}
    # The source's options dataclass (ConvertOptions.source_options); its defaults are the CLI's.
    options_type: ClassVar[type]

    def convert_options(self, **fields: Any) -> ConvertOptions:
        """The options a conversion of this source runs with: its defaults and execution settings,
        then ``fields``. The CLI, the benchmarks and library callers all build them here."""
        return replace(ConvertOptions(), **{"source_options": self.options_type(), **self.defaults, **self.execution,
                                            **fields})

    # -- command line ------------------------------------------------------------------------

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The source's own positionals and flags (the shared ones are added by convert.cli)."""
        raise NotImplementedError

    def configure(self, args: argparse.Namespace) -> SourceJob:
        """Check the source's own arguments and say what to convert; raise InvalidInputError."""
        raise NotImplementedError

    def summary(self, manifest: dict[str, Any]) -> list[tuple[str, str]]:
        """Extra ``(label, value)`` lines for the summary printed after a run."""
        return []

    # -- the conversion ----------------------------------------------------------------------

    def plan(self, inputs: Any, options: ConvertOptions) -> Plan:
        raise NotImplementedError

    def read_task(self, root: str, task: Task, options: ConvertOptions) -> Iterator[Any] | AsyncIterator[Any]:
        """The task's input in batches: an iterator (run in a thread) or an async iterator."""
        raise NotImplementedError

    def make_converter(self, task: Task, options: ConvertOptions, executor: ThreadPoolExecutor) -> BatchConverter:
        raise NotImplementedError

    def finish(self, output: Output, plan: Plan, options: ConvertOptions, records: list[dict],
               staging: Path) -> Finish:
        """After every task: statistics, extra rejects, dataset files (written under ``staging``).
        ``output`` holds the finished shards; ``records`` are the task records in plan order."""
        return Finish()
