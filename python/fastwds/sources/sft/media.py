"""Reading an SFT task: its rows from their byte ranges, and their media files with aiofiles, many
reads in flight, so a slow network file system does not serialise the pipeline."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles

from fastwds.convert.options import ConvertOptions
from fastwds.convert.plan import Task
from fastwds.reasons import Problem
from fastwds.sources.base import RowBatch
from fastwds.sources.sft.plan import resolve_media
from fastwds.sources.sft.rows import SftOptions, SftRow, derived_id, given_id, is_json_array, parse_row, read_slice

# Media files read at once per task: enough to hide network-filesystem latency.
MEDIA_READS_IN_FLIGHT = 32
# Rows whose media are read ahead of the batch being filled, and the media bytes that end a batch
# (execution only: batch boundaries do not change the shards).
READ_AHEAD_ROWS = 64
BATCH_BYTES = 64 * 2**20


class MediaReader:
    """Reads media files with many reads in flight. aiofiles runs each file operation in an
    executor; its own pool, sized to the reads in flight, keeps the default one from capping them."""

    def __init__(self, in_flight: int = MEDIA_READS_IN_FLIGHT) -> None:
        self.executor = ThreadPoolExecutor(in_flight, thread_name_prefix="fastwds-media")
        self.limit = asyncio.Semaphore(in_flight)

    async def read(self, path: str) -> bytes | Problem:
        async with self.limit:
            try:
                async with aiofiles.open(path, "rb", executor=self.executor) as file:
                    return await file.read()
            except FileNotFoundError:
                return Problem("media_missing", f"{path}: no such file")
            except OSError as error:
                return Problem("media_unreadable", f"{path}: {error.strerror or error}")

    async def read_row(self, row: RowToRead) -> tuple[RowToRead, list[bytes | Problem]]:
        return row, list(await asyncio.gather(*(self.read(path) for path in row.paths)))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


async def read_task(root: str, task: Task, options: ConvertOptions) -> AsyncIterator[RowBatch]:
    """The task's rows in batches, media read ahead: up to ``READ_AHEAD_ROWS`` rows have their
    files being read (``MEDIA_READS_IN_FLIGHT`` at once) while the batch is filled in order. A
    batch ends at ``options.batch_rows`` rows or ``BATCH_BYTES`` of media, so batches of videos
    stay small in memory."""
    sft: SftOptions = options.source_options
    rejected = {offset for offset, _, _ in task.rejected}
    reader = MediaReader()
    ahead: deque[asyncio.Task] = deque()
    try:
        task_row = 0
        for piece in task.slices:
            path = Path(root) / piece.file
            array_file = await asyncio.to_thread(is_json_array, path)
            values = await asyncio.to_thread(read_slice, path, piece, array_file)
            batch = BatchBuilder(piece.file, piece.start, options.batch_rows)
            for index, value in enumerate(values):
                row = describe_row(piece.file, piece.start + index, value, task_row + index in rejected, sft,
                                   path.parent)
                ahead.append(asyncio.create_task(reader.read_row(row)))
                if len(ahead) >= READ_AHEAD_ROWS and (full := batch.add(*await ahead.popleft())):
                    yield full
            while ahead:
                if full := batch.add(*await ahead.popleft()):
                    yield full
            if batch.ids:
                yield batch.take()
            task_row += len(values)
    finally:
        for pending in ahead:
            pending.cancel()
        reader.close()


@dataclass
class RowToRead:
    id: str
    turns: Any
    paths: list[str]  # resolved media paths; none for rows rejected at plan time


def describe_row(file: str, row_number: int, value: Any, rejected: bool, sft: SftOptions, json_dir: Path) -> RowToRead:
    row = parse_row(value, sft.media) if value is not None else None
    if not isinstance(row, SftRow):  # rejected at plan time; the converter reports the plan's reason
        return RowToRead(given_id(value) or derived_id(file, row_number), None, [])
    sample_id = row.id if row.id is not None else derived_id(file, row_number)
    # Rows rejected at plan time (duplicates) are not written: their media need not be read.
    paths = [] if rejected else [resolve_media(p, json_dir, sft.media_root) for p in row.paths]
    return RowToRead(sample_id, row.turns, paths)


class BatchBuilder:
    """Consecutive rows of one file collected into ``RowBatch``es of bounded rows and bytes."""

    def __init__(self, file: str, first_row: int, max_rows: int) -> None:
        self.file, self.first_row, self.max_rows = file, first_row, max_rows
        self.ids: list[str] = []
        self.conversations: list[Any] = []
        self.media: list[list[bytes | Problem]] = []
        self.bytes = 0

    def add(self, row: RowToRead, media: list[bytes | Problem]) -> RowBatch | None:
        """Add a row; returns the finished batch when this row fills it."""
        self.ids.append(row.id)
        self.conversations.append(row.turns)
        self.media.append(media)
        self.bytes += sum(len(m) for m in media if isinstance(m, bytes))
        return self.take() if len(self.ids) >= self.max_rows or self.bytes >= BATCH_BYTES else None

    def take(self) -> RowBatch:
        batch = RowBatch(self.file, self.first_row, self.ids, self.conversations, self.media,
                         [{} for _ in self.ids])
        self.first_row += len(self.ids)
        self.ids, self.conversations, self.media, self.bytes = [], [], [], 0
        return batch
