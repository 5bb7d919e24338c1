"""Reading an SFT task: its rows from their byte ranges, and their media files with aiofiles, many
reads in flight, so a slow network file system does not serialise the pipeline."""

from __future__ import annotations

import asyncio
import os
import stat
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiofiles
import aiofiles.os

from fastwds.convert.options import ConvertOptions
from fastwds.convert.plan import Task
from fastwds import storage
from fastwds.errors import FastwdsError
from fastwds.reasons import Problem
from fastwds.sources.base import RowBatch
from fastwds.sources.sft.plan import parent, resolve_media
from fastwds.sources.sft.rows import SftOptions, SftRow, derived_id, given_id, is_json_array, parse_row, read_slice

# Media files read at once per task: enough to hide network-filesystem latency.
MEDIA_READS_IN_FLIGHT = 32
# Rows whose media are read ahead of the batch being filled, and the media bytes that end a batch
# (execution only: batch boundaries do not change the shards).
READ_AHEAD_ROWS = 64
BATCH_BYTES = 64 * 2**20


def read_media_file(path: str, root: str | None, max_bytes: int) -> bytes | Problem:
    """A media file's bytes, or why it is not read: outside ``root`` (after following symlinks;
    ``root`` None allows any path), not a regular file (FIFOs would block forever, devices like
    /dev/zero never end), or larger than ``max_bytes``."""
    if storage.is_url(path):
        return read_media_object(path, root, max_bytes)
    if root is not None:
        if storage.is_url(root):
            return Problem("media_outside_root", f"{path}: a local file, outside the media root {root}")
        real = os.path.realpath(path)
        if os.path.commonpath([real, root]) != root:
            return Problem("media_outside_root", f"{path}: resolves to {real}, outside the media root {root} "
                                                 "(--media-root DIR, or --allow-media-outside-root)")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return Problem("media_missing", f"{path}: no such file")
    except OSError as error:
        return Problem("media_unreadable", f"{path}: {error.strerror or error}")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a socket")
        return Problem("media_unreadable", f"{path}: not a regular file ({kind})")
    with os.fdopen(fd, "rb", buffering=0) as file:
        if info.st_size > max_bytes:
            return Problem("media_too_large", f"{path}: {info.st_size:,} bytes, more than the limit of "
                                              f"{max_bytes:,} (--max-media-size)")
        try:
            data = file.read(max_bytes + 1)
        except OSError as error:
            return Problem("media_unreadable", f"{path}: {error.strerror or error}")
    if len(data) > max_bytes:  # it grew while being read
        return Problem("media_too_large", f"{path}: more than the limit of {max_bytes:,} bytes (--max-media-size)")
    return data


def read_media_object(url: str, root: str | None, max_bytes: int) -> bytes | Problem:
    """A media object's bytes: under the media root prefix, no larger than ``max_bytes``."""
    if root is not None and not (storage.is_url(root) and (url + "/").startswith(root.rstrip("/") + "/")):
        return Problem("media_outside_root", f"{url}: outside the media root {root} (--media-root, or "
                                             "--allow-media-outside-root)")
    try:
        found = storage.head(storage.parse_url(url))
        if found is None:
            return Problem("media_missing", f"{url}: no such object")
        if found["size"] > max_bytes:
            return Problem("media_too_large", f"{url}: {found['size']:,} bytes, more than the limit of {max_bytes:,} "
                                              "(--max-media-size)")
        return storage.read_bytes(storage.parse_url(url))
    except (OSError, FastwdsError) as error:
        return Problem("media_unreadable", f"{url}: {error}")


class MediaReader:
    """Reads media files with many reads in flight: each read (``read_media_file``) runs in an
    executor through aiofiles, on a pool of its own sized to the reads in flight, so the default
    pool does not cap them."""

    def __init__(self, root: str | None, max_bytes: int, in_flight: int = MEDIA_READS_IN_FLIGHT) -> None:
        self.executor = ThreadPoolExecutor(in_flight, thread_name_prefix="fastwds-media")
        self.limit = asyncio.Semaphore(in_flight)
        self.root = root if root is None or storage.is_url(root) else os.path.realpath(root)
        self.max_bytes = max_bytes

    async def read(self, path: str) -> bytes | Problem:
        async with self.limit:
            return await _read_media_file(path, self.root, self.max_bytes, executor=self.executor)

    async def read_row(self, row: RowToRead) -> tuple[RowToRead, list[bytes | Problem]]:
        return row, list(await asyncio.gather(*(self.read(path) for path in row.paths)))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# aiofiles runs the read in the executor; the module-level name is looked up at each call.
_read_media_file = aiofiles.os.wrap(lambda path, root, max_bytes: read_media_file(path, root, max_bytes))


async def read_task(root: str, task: Task, options: ConvertOptions) -> AsyncIterator[RowBatch]:
    """The task's rows in batches, media read ahead: up to ``READ_AHEAD_ROWS`` rows have their
    files being read (``MEDIA_READS_IN_FLIGHT`` at once) while the batch is filled in order. A
    batch ends at ``options.batch_rows`` rows or ``BATCH_BYTES`` of media, so batches of videos
    stay small in memory."""
    sft: SftOptions = options.source_options
    rejected = {offset for offset, _, _ in task.rejected}
    media_root = None if sft.media_outside_root else (sft.media_root or root)
    reader = MediaReader(media_root, sft.max_media_bytes)
    ahead: deque[asyncio.Task] = deque()
    try:
        task_row = 0
        for piece in task.slices:
            path = storage.join(root, piece.file)
            array_file = await asyncio.to_thread(is_json_array, path)
            values = await asyncio.to_thread(read_slice, path, piece, array_file)
            batch = BatchBuilder(piece.file, piece.start, options.batch_rows)
            for index, value in enumerate(values):
                row = describe_row(piece.file, piece.start + index, value, task_row + index in rejected, sft,
                                   parent(path))
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


def describe_row(file: str, row_number: int, value: Any, rejected: bool, sft: SftOptions, json_dir: str) -> RowToRead:
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
