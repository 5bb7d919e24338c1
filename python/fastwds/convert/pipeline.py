"""One shard task: read -> validate/encode -> write, as an asyncio pipeline with bounded queues.

Reading (polars, file I/O) and writing (Rust) release the GIL and run in threads; a source's
``BatchConverter`` validates and encodes, handing heavy work (image decodes, float16
conversion) to a thread pool whose work releases the GIL. So one task keeps several cores busy,
and memory stays at a few batches per task whatever the input size.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastwds.convert.options import ConvertOptions
from fastwds.convert.plan import Task
from fastwds.energon import ShardIndex
from fastwds.errors import InvalidSamplesError
from fastwds.media import ImageData, payload_size
from fastwds.reasons import check_reason, printable
from fastwds.writer import ShardWriter

log = logging.getLogger("fastwds")

Progress = Callable[[int, int, int], None]  # (rows done, rows written, bytes written)


@dataclass
class PreparedBatch:
    """Samples ready for ``ShardWriter.write_batch``: values are bytes or ``(BinaryColumn, index)``
    references into Arrow memory (see media.ImageData)."""

    ids: list[str] = field(default_factory=list)
    columns: dict[str, list[ImageData]] = field(default_factory=dict)
    rows: int = 0
    payload_bytes: int = 0

    def add(self, sample_id: str, members: dict[str, ImageData]) -> None:
        position = len(self.ids)
        self.ids.append(sample_id)
        for ext, data in members.items():
            self.columns.setdefault(ext, [None] * position).append(data)
            self.payload_bytes += payload_size(data)
        for values in self.columns.values():
            if len(values) == position:
                values.append(None)


@dataclass
class TaskResult:
    task: str
    rows: int = 0
    written: int = 0
    rejects: list[dict] = field(default_factory=list)
    shards: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    # Source-specific totals the manifest sums up (e.g. input bytes, precision statistics).
    stats: dict[str, Any] = field(default_factory=dict)
    # Member extensions written in this task's samples ("json", "jpg", "0.png", ...): the
    # columns a reader like HF datasets will see.
    members: list[str] = field(default_factory=list)
    # With energon_index: each shard's Energon index (ShardIndex.to_json), for .nv-meta.
    energon: list[dict] = field(default_factory=list)


class BatchConverter(Protocol):
    """What a source provides for one task: turn a batch of input rows into samples to write,
    recording rejected rows (``reject``) and counting rows in ``result``."""

    result: TaskResult

    def prepare(self, batch: Any) -> PreparedBatch: ...


class ParallelLoads(Protocol):
    """A converter whose batches need heavy, independent work first (an NPZ volume inflated and
    cast): ``load`` runs on up to ``parallel_loads`` batches at once in threads (the work must
    release the GIL), ``prepare`` then takes the loaded batches one by one, in input order, so the
    shards are the same bytes as with one thread."""

    parallel_loads: int
    load_executor: Executor | None  # the threads loads run on (None: asyncio's default pool)

    def load(self, batch: Any) -> Any: ...


class RejectLog:
    """Base for converters: records a rejected row, or stops the run with --on-invalid fail."""

    def __init__(self, task: Task, options: ConvertOptions) -> None:
        self.task = task
        self.options = options
        self.result = TaskResult(task.name)

    def reject(self, file: str, row: int, sample_id: Any, reason: str, detail: str, kept: bool = False) -> None:
        check_reason(reason)
        if self.options.on_invalid == "fail":
            raise InvalidSamplesError(f"{file} row {row} (id {sample_id!r}): {reason}: {detail}")
        if isinstance(sample_id, str):
            sample_id = printable(sample_id)
        self.result.rejects.append({"subset": self.task.subset, "file": file, "row": row, "id": sample_id,
                                    "reason": reason, "detail": printable(detail),
                                    "action": "kept" if kept else "skipped"})


async def _run_pipeline(batches: Iterator[Any] | AsyncIterator[Any], converter: BatchConverter,
                        writer: ShardWriter, progress: Progress, queue_batches: int) -> None:
    members: set[str] = set()
    read_queue: asyncio.Queue = asyncio.Queue(queue_batches)
    write_queue: asyncio.Queue = asyncio.Queue(queue_batches)
    done = object()

    async def read() -> None:
        if isinstance(batches, AsyncIterator):  # e.g. SFT media, read on their own threads
            async for batch in batches:
                await read_queue.put(batch)
        else:  # blocking readers (polars, numpy) run in a thread
            while (batch := await asyncio.to_thread(next, batches, done)) is not done:
                await read_queue.put(batch)
        await read_queue.put(done)

    async def validate() -> None:
        while (batch := await read_queue.get()) is not done:
            await write_queue.put(await asyncio.to_thread(converter.prepare, batch))
        await write_queue.put(done)

    async def load_then_validate() -> None:
        """As validate, with ``converter.load`` running ahead on several batches at once."""
        loading: deque[asyncio.Future] = deque()
        reading = True
        loop = asyncio.get_running_loop()
        executor = getattr(converter, "load_executor", None)
        try:
            while reading or loading:
                while reading and len(loading) < converter.parallel_loads:
                    if (batch := await read_queue.get()) is done:
                        reading = False
                    else:
                        loading.append(loop.run_in_executor(executor, converter.load, batch))
                if loading:
                    loaded = await loading.popleft()
                    await write_queue.put(await asyncio.to_thread(converter.prepare, loaded))
        finally:  # on failure: the loads still running are dropped, not awaited
            for task in loading:
                task.cancel()
        await write_queue.put(done)

    async def write() -> None:
        while (prepared := await write_queue.get()) is not done:
            if prepared.ids:
                await asyncio.to_thread(writer.write_batch, prepared.ids, prepared.columns)
                members.update(prepared.columns)
            converter.result.written += len(prepared.ids)
            progress(prepared.rows, len(prepared.ids), prepared.payload_bytes)

    async with asyncio.TaskGroup() as group:
        parallel = getattr(converter, "parallel_loads", 1) > 1
        for stage in (read, load_then_validate if parallel else validate, write):
            group.create_task(stage())
    converter.result.members = sorted(members)


def run_task(task: Task, batches: Iterator[Any] | AsyncIterator[Any], converter: BatchConverter,
             options: ConvertOptions,
             output_dir: Path, progress: Progress = lambda rows, written, size: None) -> TaskResult:
    """Convert one task into its shard(s) in ``output_dir``. Raises on failure, leaving no
    finished-looking shard behind for this task."""
    started = time.perf_counter()
    writer = ShardWriter(str(output_dir / f"{task.name}.tar"), maxcount=2**62,
                         maxsize=options.max_shard_bytes, fsync=options.fsync,
                         dali_index=options.dali_index, energon_index=options.energon_index, warn_oversized=False)
    try:
        asyncio.run(_run_pipeline(batches, converter, writer, progress, options.queue_batches))
    except BaseExceptionGroup as group:
        _abort_after(writer, error := _first_error(group))
        raise error from None
    except BaseException as error:
        _abort_after(writer, error)
        raise
    records = writer.close()
    for record in records:
        if record.oversized:  # named as published, not by the staging path it was written to
            log.warning("%s: a sample alone is larger than --max-shard-size (%s bytes): it has this shard to itself",
                        record.name, f"{options.max_shard_bytes:,}")
    result = converter.result
    result.shards = [{"name": r.name, "samples": r.num_samples, "bytes": r.size, "sha256": r.sha256}
                     for r in records]
    if options.energon_index:  # the .nv-meta rows of each shard, from what the writer recorded
        result.energon = [ShardIndex.from_record(r).to_json() for r in records]
    result.seconds = time.perf_counter() - started
    return result


def _abort_after(writer: ShardWriter, error: BaseException) -> None:
    """Drop the unfinished shard; the error that stopped the task stays the one raised."""
    try:
        writer.abort()
    except OSError as abort_error:
        error.add_note(f"also, a finished shard could not be made durable: {abort_error}")


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error that stopped a stage (asyncio's TaskGroup wraps it in a group)."""
    first = group.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first
