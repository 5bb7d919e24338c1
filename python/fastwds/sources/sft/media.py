"""Reading an SFT task: its rows from their byte ranges, and their media files on a pool of reader
threads, many reads in flight, so a slow network file system does not serialise the pipeline.

The reads go to the pool a group of rows at a time, one pool job per group: handing each file to
a thread (what aiofiles does) costs more than reading it from a fast disk (measured on 6,000 90 kB
files: 0.1 s read in one thread, 0.5-0.6 s through a pool, 1.2 s through aiofiles' futures).
Groups run in parallel, so several reads are in flight for a slow network file system; objects
in a bucket are fetched many at once within a group too."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastwds.convert.options import ConvertOptions
from fastwds.convert.plan import Task
from fastwds import _core, storage
from fastwds.errors import FastwdsError, InvalidInputError
from fastwds.reasons import Problem
from fastwds.sources.base import RowBatch
from fastwds.sources.sft.plan import parent, resolve_media
from fastwds.sources.sft.rows import SftOptions, SftRow, derived_id, given_id, is_json_array, parse_row, slice_rows

# Objects of a bucket fetched at once per group: enough to hide the latency of each request.
OBJECT_READS_IN_FLIGHT = 32
# Rows whose media one pool job reads, and the groups read at once ahead of the batch being filled
# (local files: that many reads in flight); the media bytes that end a batch (execution only:
# batch boundaries do not change the shards).
GROUP_ROWS = 16
GROUPS_AHEAD = 8
BATCH_BYTES = 64 * 2**20


@functools.lru_cache(maxsize=4096)
def real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def real_path(path: str) -> str:
    """``os.path.realpath``, with the folders' part cached: media files share few folders, and
    resolving every component of every path costs a system call each."""
    folder, name = os.path.split(path)
    if name in ("", ".", "..") or os.path.islink(path):
        return os.path.realpath(path)
    return os.path.join(real_folder(folder or "."), name)


def read_media_files(paths: list[str], root: str | None, max_bytes: int) -> list[bytes | Problem]:
    """Local media files' bytes, or why each is not read: outside ``root`` (after following
    symlinks; ``root`` None allows any path), not a regular file (FIFOs would block forever,
    devices like /dev/zero never end), or larger than ``max_bytes``. The files are read by
    ``_core.read_files`` with the GIL released once for all of them: in Python, each file's four
    system calls were as many GIL hand-offs (~10% of an SFT conversion on tmpfs)."""
    outside = [outside_root(path, root) for path in paths]
    outcomes = iter(_core.read_files([path for path, problem in zip(paths, outside) if problem is None], max_bytes))
    return [problem if problem is not None else media_outcome(path, *next(outcomes), max_bytes)
            for path, problem in zip(paths, outside)]


def outside_root(path: str, root: str | None) -> Problem | None:
    if root is None:
        return None
    if storage.is_url(root):
        return Problem("media_outside_root", f"{path}: a local file, outside the media root {root}")
    real = real_path(path)
    # Both are absolute and normalised (realpath), so a prefix test is exact: os.path.commonpath
    # took as long as resolving the path (~3.5 us per file, with the GIL held).
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        return Problem("media_outside_root", f"{path}: resolves to {real}, outside the media root {root} "
                                             "(--media-root DIR, or --allow-media-outside-root)")
    return None


def media_outcome(path: str, outcome: str, value: Any, max_bytes: int) -> bytes | Problem:
    """One ``_core.read_files`` result as the file's bytes or its problem."""
    if outcome == "ok":
        return value
    if outcome == "missing":
        return Problem("media_missing", f"{path}: no such file")
    if outcome == "unreadable":
        return Problem("media_unreadable", f"{path}: {os.strerror(value)}")
    if outcome == "not_regular":
        return Problem("media_unreadable", f"{path}: not a regular file ({value})")
    if value is None:  # it grew while being read
        return Problem("media_too_large", f"{path}: more than the limit of {max_bytes:,} bytes (--max-media-size)")
    return Problem("media_too_large", f"{path}: {value:,} bytes, more than the limit of {max_bytes:,} "
                                      "(--max-media-size)")


def read_media_object(url: str, root: str | None, max_bytes: int) -> bytes | Problem:
    """A media object's bytes: under the media root prefix, no larger than ``max_bytes``."""
    try:
        storage.check_location(url)  # http://, gs://, ...: no media root or flag would help
    except FastwdsError as error:
        return Problem("media_unreadable", str(error))
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
    """Reads the media of groups of rows: ``GROUPS_AHEAD`` groups at once on a pool of its own
    (local files in order within a group), objects in a bucket many at once."""

    def __init__(self, root: str | None, max_bytes: int) -> None:
        self.groups = ThreadPoolExecutor(GROUPS_AHEAD, thread_name_prefix="fastwds-media")
        self.objects: ThreadPoolExecutor | None = None
        self.root = root if root is None or storage.is_url(root) else os.path.realpath(root)
        self.max_bytes = max_bytes

    def read_object(self, url: str) -> bytes | Problem:
        return read_media_object(url, self.root, self.max_bytes)

    def read_rows(self, rows: list[RowToRead]) -> list[tuple[RowToRead, list[bytes | Problem]]]:
        """Each row with its media, in order (blocking: run it off the event loop)."""
        paths = [path for row in rows for path in row.paths]
        urls = [path for path in paths if storage.is_url(path)]
        local = iter(read_media_files([path for path in paths if not storage.is_url(path)], self.root, self.max_bytes))
        objects: Any = iter(())
        if urls:  # latency-bound: many requests at once
            if self.objects is None:
                self.objects = ThreadPoolExecutor(OBJECT_READS_IN_FLIGHT, thread_name_prefix="fastwds-objects")
            objects = iter(self.objects.map(self.read_object, urls))
        media = iter([next(objects) if storage.is_url(path) else next(local) for path in paths])
        return [(row, [next(media) for _ in row.paths]) for row in rows]

    async def read_group(self, rows: list[RowToRead]) -> list[tuple[RowToRead, list[bytes | Problem]]]:
        return await asyncio.get_running_loop().run_in_executor(self.groups, self.read_rows, rows)

    def close(self) -> None:
        for pool in (self.groups, self.objects):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


async def read_task(root: str, task: Task, options: ConvertOptions) -> AsyncIterator[RowBatch]:
    """The task's rows in batches, media read ahead: up to ``GROUPS_AHEAD`` groups of
    ``GROUP_ROWS`` rows have their files being read (one read per group at once) while the
    batch is filled in order. A batch ends at ``options.batch_rows`` rows or ``BATCH_BYTES`` of
    media, so batches of videos stay small in memory."""
    sft: SftOptions = options.source_options
    rejected = {offset for offset, _, _ in task.rejected}
    bad_json = {offset for offset, reason, _ in task.rejected if reason == "bad_json"}
    renamed = dict(task.renamed)  # rows without an id whose derived one another row has (see the plan)
    media_root = None if sft.media_outside_root else (sft.media_root or root)
    reader = MediaReader(media_root, sft.max_media_bytes)
    ahead: deque[asyncio.Task] = deque()
    try:
        task_row = 0
        for piece in task.slices:
            path = storage.join(root, piece.file)
            array_file = await asyncio.to_thread(is_json_array, path)
            data = await asyncio.to_thread(storage.read_range, path, piece.byte_start, piece.byte_stop)
            values = slice_rows(path, data, piece, array_file)
            json_dir = parent(path)  # the rows' relative media paths start here
            batch = BatchBuilder(piece.file, piece.start, options.batch_rows)
            done = 0  # rows of the slice handed to the reader
            while group := list(itertools.islice(values, GROUP_ROWS)):
                rows = []
                for number, value in enumerate(group, done):  # the row's number in the slice
                    offset, row = task_row + number, piece.start + number  # in the task, in the file
                    if value is None and offset not in bad_json:  # it parsed when planned
                        raise InvalidInputError(f"{path}: changed since the plan (row {row} no longer parses)")
                    rows.append(describe_row(piece.file, row, value, offset in rejected, sft, json_dir,
                                             renamed.get(offset)))
                done += len(group)
                ahead.append(asyncio.ensure_future(reader.read_group(rows)))
                if len(ahead) >= GROUPS_AHEAD:
                    for full in batch.add_all(await ahead.popleft()):
                        yield full
            while ahead:
                for full in batch.add_all(await ahead.popleft()):
                    yield full
            if batch.ids:
                yield batch.take()
            task_row += done
    finally:
        for pending in ahead:
            pending.cancel()
        reader.close()


@dataclass
class RowToRead:
    id: str
    turns: Any
    paths: list[str]  # resolved media paths; none for rows rejected at plan time


def describe_row(file: str, row_number: int, value: Any, rejected: bool, sft: SftOptions, json_dir: str,
                 new_id: str | None = None) -> RowToRead:
    row = parse_row(value, sft.media) if value is not None else None
    if not isinstance(row, SftRow):  # rejected at plan time; the converter reports the plan's reason
        return RowToRead(given_id(value) or derived_id(file, row_number), None, [])
    sample_id = row.id if row.id is not None else new_id or derived_id(file, row_number)
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

    def add_all(self, rows: list[tuple[RowToRead, list[bytes | Problem]]]) -> list[RowBatch]:
        """Add rows in order; the batches they filled."""
        return [full for row, media in rows if (full := self.add(row, media)) is not None]

    def take(self) -> RowBatch:
        batch = RowBatch(self.file, self.first_row, self.ids, self.conversations, self.media,
                         [{} for _ in self.ids])
        self.first_row += len(self.ids)
        self.ids, self.conversations, self.media, self.bytes = [], [], [], 0
        return batch
