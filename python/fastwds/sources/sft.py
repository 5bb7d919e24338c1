"""SFT JSON / JSONL (LLaVA and Megatron-Energon style): a list of samples
``{id?, image|images|video|videos, messages|conversations}`` whose media are file paths, relative
to the JSON file's folder or to ``--media-root``.

Planning parses every input file once: it finds the byte range of each row (so a task later reads
only its own part of a large JSON file), the ids (duplicates are found across the whole dataset),
and rows that cannot be samples at all. Tasks read their media with aiofiles, many files in
flight, so a slow network filesystem does not serialise the pipeline. Each sample's JSON is what
Energon sample loaders expect: ``{"media", "name", "texts", "id", "source"}``, where ``name``
lists exactly the media members written with it (checked before writing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from array import array
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles
import polars as pl

from fastwds import portable_key
from fastwds.convert.chat import ChatConverter
from fastwds.convert.options import ConvertOptions
from fastwds.convert.plan import Plan, RowGroup, RowSlice, SourceFile, Task, cut_tasks, find_repeated_keys
from fastwds.convert.run import REJECTS_NAME
from fastwds.energon import (DEFAULT_SAMPLE_TYPE, check_sample_type, parse_split_ratio, remove_energon_meta,
                             write_energon_meta)
from fastwds.errors import FastwdsError, InvalidInputError
from fastwds.paths import matching_files
from fastwds.media import ImageProblem, reencode_jpeg
from fastwds.sources.base import RowBatch
from fastwds.validate import CheckedSample, Problem, check_sample, image_member_names
from fastwds.video import inspect_video

MEDIA_KINDS = ("image", "video")
MEDIA_KEYS = {"image": ("image", "images"), "video": ("video", "videos")}
# Media files read at once per task: enough to hide network-filesystem latency.
MEDIA_READS_IN_FLIGHT = 32
# Rows whose media are read ahead of the batch being filled, and the media bytes that end a batch
# (execution only: batch boundaries do not change the shards).
READ_AHEAD_ROWS = 64
BATCH_BYTES = 64 * 2**20
# Rows whose media sizes are looked up at plan time to estimate bytes per row (task sizing).
SIZE_SAMPLE_ROWS = 64
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_BOM = b"\xef\xbb\xbf"

log = logging.getLogger("fastwds")


@dataclass(frozen=True)
class SftOptions:
    media: str = "image"  # "image" or "video": which keys hold the media and which token counts
    media_root: str | None = None  # media paths are relative to this, else to their JSON file
    energon: bool = True  # write .nv-meta/ for Megatron-Energon
    # Train,val,test shares of the shards, as `energon prepare --split-ratio` takes them. A string:
    # options are compared with their JSON form when resuming, where a tuple would come back a list.
    split_ratio: str = "1,0,0"
    sample_type: str = DEFAULT_SAMPLE_TYPE  # Energon sample type named in dataset.yaml


@dataclass(frozen=True)
class ByteSlice(RowSlice):
    """Rows ``[start, stop)`` of a JSON file and the bytes ``[byte_start, byte_stop)`` they occupy."""

    byte_start: int = 0
    byte_stop: int = 0


@dataclass
class SftRow:
    id: str | None  # as given (None when absent: a deterministic one is derived)
    turns: Any
    paths: list[str]


def parse_row(value: Any, media: str) -> SftRow | Problem:
    """The id, turns and media paths of one input row, or why it cannot be a sample."""
    if isinstance(value, Problem):
        return value
    if not isinstance(value, dict):
        return Problem("bad_sample", f"the row is a JSON {type(value).__name__}, not an object")
    other = MEDIA_KINDS[1 - MEDIA_KINDS.index(media)]
    for key in MEDIA_KEYS[other]:
        if value.get(key) not in (None, "", []):
            return Problem("media_kind_mismatch", f"the row has {key!r} but --media is {media}")
    present = [key for key in MEDIA_KEYS[media] if value.get(key) not in (None, "", [])]
    if len(present) > 1:
        return Problem("bad_sample", f"the row has both {present[0]!r} and {present[1]!r}")
    paths = []
    if present:
        given = value[present[0]]
        for item in given if isinstance(given, list) else [given]:
            if not isinstance(item, str) or not item:
                return Problem("bad_sample", f"{present[0]!r} holds {item!r}, not a file path")
            paths.append(item)
    turns = value.get("messages") if value.get("messages") is not None else value.get("conversations")
    return SftRow(given_id(value), turns, paths)


def given_id(value: Any) -> str | None:
    sample_id = value.get("id") if isinstance(value, dict) else None
    return None if sample_id is None or sample_id == "" else str(sample_id)


def derived_id(file: str, row: int) -> str:
    """Id of a row without one: ``<file path without extension>-<row>``, '/' as '__'."""
    return f"{Path(file).with_suffix('').as_posix().replace('/', '__')}-{row}"


# ---------------------------------------------------------------------------------------------
# Reading JSON files: every row with the bytes it occupies.


def is_json_array(path: Path) -> bool:
    """A file is a JSON array when it starts with '['; otherwise it is JSON Lines."""
    with open(path, "rb") as file:
        head = file.read(4096).removeprefix(_BOM).lstrip()
    return head.startswith(b"[")


def iter_rows(path: Path) -> Iterator[tuple[int, int, Any]]:
    """``(byte_start, byte_stop, value)`` per row; ``value`` is a ``Problem`` for a JSONL line
    that does not parse. A JSON array that does not parse is an error for the whole file."""
    if is_json_array(path):
        yield from _iter_array(path)
        return
    if path.suffix.lower() == ".json":
        _refuse_wrapped_samples(path)
    yield from _iter_lines(path)


def _refuse_wrapped_samples(path: Path) -> None:
    """A ``.json`` file holding one object that is not itself a sample (``{"data": [...]}``) would
    otherwise become a rejected row per line: say what it is instead."""
    try:
        value = json.loads(path.read_bytes())
    except ValueError:  # several values: JSON Lines with a .json name
        return
    if isinstance(value, dict) and not {"messages", "conversations"} & value.keys():
        raise InvalidInputError(f"{path}: a JSON object with keys {sorted(value)[:5]}, not a list of samples; "
                                "give a JSON array or JSON Lines")


def _iter_lines(path: Path) -> Iterator[tuple[int, int, Any]]:
    with open(path, "rb") as file:
        offset = 0
        for number, line in enumerate(file, 1):
            start, offset = offset, offset + len(line)
            if number == 1 and line.startswith(_BOM):
                line, start = line[len(_BOM):], start + len(_BOM)
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as error:
                value = Problem("bad_json", f"line {number}: {error}")
            yield start, offset, value


def _iter_array(path: Path) -> Iterator[tuple[int, int, Any]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{path}: not UTF-8 text ({error})") from None
    # Offsets in the text are characters; tasks seek by bytes. Convert incrementally (cheap when ASCII).
    bom = len(raw) - len(raw.removeprefix(_BOM))
    ascii_only = raw.isascii()
    del raw
    last_char, last_byte = 0, bom

    def to_byte(char: int) -> int:
        nonlocal last_char, last_byte
        if ascii_only:
            return char + bom
        last_byte += len(text[last_char:char].encode("utf-8"))
        last_char = char
        return last_byte

    decoder = json.JSONDecoder()
    position = _WHITESPACE.match(text, 1 + _WHITESPACE.match(text).end()).end()
    if text[position:position + 1] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: "
                                    f"{error.msg}") from None
        yield to_byte(position), to_byte(end), value
        position = _WHITESPACE.match(text, end).end()
        separator = text[position:position + 1]
        if separator == "]":
            break
        if separator != ",":
            line = text.count("\n", 0, position) + 1
            raise InvalidInputError(f"{path}: invalid JSON at line {line}: expected ',' or ']' between rows")
        position = _WHITESPACE.match(text, position + 1).end()
    if text[position + 1:].strip():
        raise InvalidInputError(f"{path}: unexpected text after the closing ']'")


def read_slice(path: Path, piece: ByteSlice, array_file: bool) -> list[Any]:
    """The rows of one slice, reading only its bytes; unparseable JSONL lines become None."""
    with open(path, "rb") as file:
        file.seek(piece.byte_start)
        data = file.read(piece.byte_stop - piece.byte_start)
    if array_file:
        rows = json.loads(b"[" + data + b"]")
    else:
        rows = []
        for line in data.split(b"\n"):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    rows.append(None)  # rejected at plan time as bad_json
    if len(rows) != piece.stop - piece.start:
        raise InvalidInputError(f"{path}: changed since the plan (rows {piece.start}-{piece.stop} moved)")
    return rows


# ---------------------------------------------------------------------------------------------
# Planning


def expand_inputs(data: list[str]) -> list[Path]:
    """Files and globs, in the order given (globs sorted), each file once."""
    files = [path for item in data for path in matching_files(item)]
    unique = list(dict.fromkeys(p.resolve() for p in files))
    if not unique:
        raise InvalidInputError("no input files given")
    return unique


def subset_name(files: list[Path], root: Path) -> str:
    """Shards are named after the one input file, or the folder of several."""
    raw = files[0].stem if len(files) == 1 else root.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw).strip("._") or "data"


def resolve_media(path: str, json_dir: Path, media_root: str | None) -> str:
    return os.path.join(media_root if media_root is not None else json_dir, path)


def plan_sft(data: list[str], options: SftOptions, max_rows: int, max_bytes: int, limit: int | None = None) -> Plan:
    if options.media not in MEDIA_KINDS:
        raise InvalidInputError(f"--media must be image or video, not {options.media!r}")
    if options.energon:  # bad Energon options fail now, not after the conversion
        parse_split_ratio(options.split_ratio)
        check_sample_type(options.sample_type)
    files = expand_inputs(data)
    root = Path(os.path.commonpath([f.parent for f in files]))
    sources, groups, rejected, ids = [], [], {}, []
    offsets: dict[str, tuple[array, array]] = {}
    size_sample: list[tuple[Path, int, list[str]]] = []  # (json dir, row bytes, media paths)
    position = 0  # row number across all files
    for path in files:
        relative = path.relative_to(root).as_posix()
        starts, stops = array("q"), array("q")
        rows = iter_rows(path) if limit is None or position < limit else iter(())
        for byte_start, byte_stop, value in rows:
            if limit is not None and position >= limit:
                break
            row = parse_row(value, options.media)
            if isinstance(row, Problem):
                rejected[position] = (row.reason, row.detail)
                ids.append(None)
            else:
                ids.append(row.id if row.id is not None else derived_id(relative, len(starts)))
                if position % 128 == 0:
                    size_sample.append((path.parent, byte_stop - byte_start, row.paths))
            starts.append(byte_start)
            stops.append(byte_stop)
            position += 1
        stat = path.stat()
        sources.append(SourceFile(relative, stat.st_size, stat.st_mtime_ns, len(starts)))
        offsets[relative] = (starts, stops)
        if starts:
            groups.append(RowGroup(relative, 0, len(starts), 0))
    per_row = estimate_row_bytes(size_sample, options.media_root)
    groups = [RowGroup(g.file, g.first_row, g.rows, int(g.rows * per_row)) for g in groups]
    tasks = cut_tasks(subset_name(files, root), groups, max_rows, max_bytes)
    for position, (reason, detail, _) in find_repeated_keys(pl.Series(ids, dtype=pl.String)).items():
        rejected[position] = (reason, detail)
    return Plan("sft", str(root), tuple(sources), attach(tasks, offsets, rejected))


def estimate_row_bytes(size_sample: list[tuple[Path, int, list[str]]], media_root: str | None) -> float:
    """Average bytes per row from the media sizes of up to ``SIZE_SAMPLE_ROWS`` rows spread over
    the input, so tasks of large media (videos) stay near the shard size. The writer's hard
    cap still holds when the estimate is off; missing files are found later, per row."""
    step = max(1, len(size_sample) // SIZE_SAMPLE_ROWS)
    chosen = size_sample[::step][:SIZE_SAMPLE_ROWS]
    if not chosen:
        return 0.0
    paths = [resolve_media(p, json_dir, media_root) for json_dir, _, row_paths in chosen for p in row_paths]

    def size(path: str) -> int:
        try:
            return os.stat(path).st_size
        except OSError:
            return 0

    with ThreadPoolExecutor(16) as pool:
        media_bytes = sum(pool.map(size, paths))
    return (media_bytes + sum(row_bytes for _, row_bytes, _ in chosen)) / len(chosen)


def attach(tasks: list[Task], offsets: dict[str, tuple[array, array]],
           rejected: dict[int, tuple[str, str]]) -> tuple[Task, ...]:
    """Give each task its slices' byte ranges and the rows of it rejected at plan time."""
    result, task_start, next_reject = [], 0, 0
    ordered = sorted(rejected.items())
    for task in tasks:
        slices = tuple(ByteSlice(s.file, s.start, s.stop, offsets[s.file][0][s.start], offsets[s.file][1][s.stop - 1])
                       for s in task.slices)
        task_stop, rows = task_start + task.num_rows, []
        while next_reject < len(ordered) and ordered[next_reject][0] < task_stop:
            position, (reason, detail) = ordered[next_reject]
            rows.append((position - task_start, reason, detail))
            next_reject += 1
        result.append(Task(task.subset, task.number, slices, tuple(rows)))
        task_start = task_stop
    return tuple(result)


# ---------------------------------------------------------------------------------------------
# Reading a task: rows from its byte ranges, media with aiofiles.


class MediaReader:
    """Reads media files with many reads in flight. aiofiles runs each file operation in an
    executor; its own pool, sized to the reads in flight, keeps the default one from capping them."""

    def __init__(self, in_flight: int = MEDIA_READS_IN_FLIGHT) -> None:
        self.executor = ThreadPoolExecutor(in_flight, thread_name_prefix="fastwds-media")
        self.limit = asyncio.Semaphore(in_flight)

    async def read(self, path: str) -> bytes | ImageProblem:
        async with self.limit:
            try:
                async with aiofiles.open(path, "rb", executor=self.executor) as file:
                    return await file.read()
            except FileNotFoundError:
                return ImageProblem("media_missing", f"{path}: no such file")
            except OSError as error:
                return ImageProblem("media_unreadable", f"{path}: {error.strerror or error}")

    async def read_row(self, row: RowToRead) -> tuple[RowToRead, list[bytes | ImageProblem]]:
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
        self.media: list[list[bytes | ImageProblem]] = []
        self.bytes = 0

    def add(self, row: RowToRead, media: list[bytes | ImageProblem]) -> RowBatch | None:
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


# ---------------------------------------------------------------------------------------------
# Validation and the Energon sample JSON


class SftConverter(ChatConverter):
    """ChatConverter with SFT rules: media read from files (problems arrive from the reader),
    images or videos, ``<image>``/``<video>`` tokens, system turns, and the Energon JSON."""

    def __init__(self, task: Task, options: ConvertOptions, executor: ThreadPoolExecutor) -> None:
        super().__init__(task, options, executor)
        self.media = options.source_options.media
        self.other_media = MEDIA_KINDS[1 - MEDIA_KINDS.index(self.media)]

    def inspect(self, flat: list[Any]) -> list[Any]:
        readable = [i for i, item in enumerate(flat) if isinstance(item, bytes)]
        checks = list(flat)  # read problems pass through as they are
        if self.media == "video":
            found = [inspect_video(flat[i]) for i in readable]
        else:
            found = super().inspect([flat[i] for i in readable])
        for i, check in zip(readable, found):
            checks[i] = check
        return checks

    def check_row(self, batch: RowBatch, index: int, media_checks: list) -> CheckedSample:
        return check_sample(batch.conversations[index], media_checks, kind=self.media,
                            other_kinds=(self.other_media,), sft_system=True)

    def members(self, batch: RowBatch, index: int, media: list, checks: list,
                checked: CheckedSample) -> dict[str, bytes]:
        # Only media that passed their checks are written (an invalid row kept with
        # --on-invalid keep may have others): ``name`` lists exactly these.
        good = [(data, check) for data, check in zip(media, checks) if not isinstance(check, ImageProblem)]
        datas, infos = [data for data, _ in good], [check for _, check in good]
        if self.options.reencode == "jpeg" and self.media == "image":
            encoded = list(self.images.map(
                lambda pair: reencode_jpeg(pair[0], self.options.quality, self.options.max_side), good))
            datas, infos = [data for data, _ in encoded], [info for _, info in encoded]
        names = image_member_names([info.extension for info in infos])
        document = {
            "media": self.media if names else "text",
            "name": names,
            "texts": checked.conversations if checked.conversations is not None else batch.conversations[index],
            "id": batch.ids[index],
            "source": {"file": batch.file, "row": batch.first_row + index},
        }
        if checked.problem is not None:
            document["invalid"] = {"reason": checked.problem.reason, "detail": checked.problem.detail}
        members = dict(zip(names, datas))
        members["json"] = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        check_names_agree(batch.ids[index], names, members)
        return members


def check_names_agree(sample_id: str, names: list[str], members: dict[str, bytes]) -> None:
    """The JSON's ``name`` list must be exactly the sample's media members, each non-empty:
    a loader reading ``name`` then finds every medium, and no medium goes unnamed."""
    media_members = set(members) - {"json"}
    if len(set(names)) != len(names) or set(names) != media_members or not all(members[n] for n in names):
        raise FastwdsError(f"internal error: sample {sample_id!r}: name list {names} does not match its "
                           f"media members {sorted(media_members)}; refusing to write it")


def make_converter(task: Task, options: ConvertOptions, executor: ThreadPoolExecutor) -> SftConverter:
    return SftConverter(task, options, executor)


def finalize(output_dir: Path, plan: Plan, options: ConvertOptions, manifest: dict[str, Any]) -> None:
    """Write Energon's ``.nv-meta/`` (or remove one fastwds wrote before, when --no-energon)."""
    sft: SftOptions = options.source_options
    if not sft.energon or not manifest["shards"]:
        if sft.energon:
            log.warning("no samples were written: no Energon .nv-meta/ (see %s)", REJECTS_NAME)
        remove_energon_meta(output_dir)
        return
    kept_invalid = set()
    with open(output_dir / REJECTS_NAME, encoding="utf-8") as rejects:
        for line in rejects:
            reject = json.loads(line)
            if reject["action"] == "kept":
                kept_invalid.add(portable_key(reject["id"]))
    manifest["energon"] = write_energon_meta(output_dir, manifest["shards"],
                                             split_ratio=parse_split_ratio(sft.split_ratio),
                                             sample_type=sft.sample_type, excluded_keys=kept_invalid)
