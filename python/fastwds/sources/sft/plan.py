"""Planning an SFT conversion: every input file parsed once, for the byte range of each row, the
ids (duplicates are found across the whole dataset) and the rows that cannot be samples at all."""

from __future__ import annotations

import bisect
from collections import Counter
import itertools
import logging
import os
import posixpath
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

from fastwds.convert.plan import KeyHashes, Plan, RowGroup, SourceFile, Task, cut_tasks
from fastwds.energon import check_sample_type, parse_split_ratio
from fastwds import storage
from fastwds.errors import FastwdsError, InvalidInputError
from fastwds.paths import matching_files, safe_name
from fastwds.reasons import Problem
from fastwds.sources.sft.rows import (MEDIA_KINDS, ROW_FIELDS, ByteSlice, SftOptions, SftRow, derived_id,
                                      iter_rows, parse_row)

# Rows whose media sizes are looked up at plan time to estimate bytes per row (task sizing).
SIZE_SAMPLE_ROWS = 64
# Rows whose ids are held at once while planning, before they become 8-byte key hashes.
ID_PIECE_ROWS = 65536

log = logging.getLogger("fastwds")


def expand_inputs(data: list[str]) -> list[str]:
    """Files, globs and folders (local), files and prefixes (s3://), in the order given; a folder or
    a prefix stands for every .json/.jsonl under it (sorted, hidden folders skipped), each file once."""
    files: list[str] = []
    for item in data:
        if storage.is_url(item):
            if storage.is_file(item):
                files.append(item)
            elif storage.is_dir(item):
                files += [storage.join(item, e.relative) for e in storage.list_files(item)
                          if e.relative.lower().endswith((".json", ".jsonl"))]
            else:
                raise InvalidInputError(f"{item}: no such object or prefix")
        elif os.path.isdir(item):
            found = sorted(str(p.resolve()) for p in Path(item).rglob("*")
                           if p.suffix.lower() in (".json", ".jsonl") and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(item).parts))
            if not found:
                raise InvalidInputError(f"{item}: a folder with no .json or .jsonl file in it; "
                                        "give the JSON files (or a glob such as DIR/*.jsonl)")
            files += found
        else:
            files += [str(p.resolve()) for p in matching_files(item)]
    unique = list(dict.fromkeys(files))
    if not unique:
        raise InvalidInputError("no input files given")
    if len({storage.is_url(f) for f in unique}) > 1:
        raise InvalidInputError("give the JSON files either all local or all in one bucket")
    return unique


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if storage.is_url(path) else os.path.dirname(path)


def common_root(files: list[str]) -> str:
    if storage.is_url(files[0]):
        urls = [storage.parse_url(f) for f in files]
        if len({u.bucket for u in urls}) > 1:
            raise InvalidInputError("the JSON files are in several buckets; convert each bucket's files apart")
        folders = [u.key.rsplit("/", 1)[0] if "/" in u.key else "" for u in urls]
        return str(storage.S3Url(urls[0].bucket, posixpath.commonpath(folders) if all(folders) else "")).rstrip("/")
    return os.path.commonpath([os.path.dirname(f) for f in files])


def relative_to(path: str, root: str) -> str:
    return path[len(root):].lstrip("/") if storage.is_url(path) else Path(path).relative_to(root).as_posix()


def subset_name(files: list[str], root: str) -> str:
    """Shards are named after the one input file, or the folder of several."""
    one = posixpath.basename(files[0].replace(os.sep, "/"))
    folder = posixpath.basename(root.rstrip("/").replace(os.sep, "/")) or "data"
    return safe_name(one.rsplit(".", 1)[0] if len(files) == 1 else folder)


def resolve_media(path: str, json_dir: str, media_root: str | None) -> str:
    """A media path of a row: a URL as it is, else relative to ``--media-root`` or the JSON file."""
    if storage.is_url(path):
        return path
    base = media_root if media_root is not None else json_dir
    return storage.join(base, path) if storage.is_url(base) else os.path.join(base, path)


def plan_sft(data: list[str], options: SftOptions, max_rows: int, max_bytes: int, limit: int | None = None) -> Plan:
    if options.media not in MEDIA_KINDS:
        raise InvalidInputError(f"--media must be image or video, not {options.media!r}")
    if options.energon:  # bad Energon options fail now, not after the conversion
        parse_split_ratio(options.split_ratio)
        check_sample_type(options.sample_type)
    files = expand_inputs(data)
    root = common_root(files)
    sources, groups, rejected = [], [], {}
    # The key hashes of every row's id (8 bytes per row), added in pieces of at most ID_PIECE_ROWS
    # rows, (file number, first row) each; the files whose rows may repeat a key are parsed again
    # for their ids (ids_of).
    id_hashes, id_pieces = KeyHashes(), []
    without_id = bytearray()  # per row: 1 when its id is derived from its place (it has none)
    offsets: dict[str, tuple[array, array]] = {}
    size_sample: list[tuple[str, int, list[str]]] = []  # (json dir, row bytes, media paths)
    position = 0  # row number across all files
    unread: Counter[str] = Counter()  # fields of the rows that fastwds does not read
    for number, path in enumerate(files):
        relative = relative_to(path, root)
        starts, stops, ids = array("q"), array("q"), []

        def add_ids() -> None:
            id_hashes.add(pl.Series(ids, dtype=pl.String), path)
            id_pieces.append((number, len(starts) - len(ids)))
            ids.clear()
        rows = iter_rows(path) if limit is None or position < limit else iter(())
        for byte_start, byte_stop, value in rows:
            if limit is not None and position >= limit:
                break
            row = parse_row(value, options.media)
            if isinstance(value, dict) and not ROW_FIELDS.issuperset(value):
                unread.update(value.keys() - ROW_FIELDS)
            if isinstance(row, Problem):
                rejected[position] = (row.reason, row.detail)
            elif position % 128 == 0:
                size_sample.append((parent(path), byte_stop - byte_start, row.paths))
            ids.append(row_id(row, relative, len(starts)))
            without_id.append(isinstance(row, SftRow) and row.id is None)
            starts.append(byte_start)
            stops.append(byte_stop)
            position += 1
            if len(ids) == ID_PIECE_ROWS:
                add_ids()
        if ids:
            add_ids()
        stat = storage.stat_file(path)
        sources.append(SourceFile(relative, stat.size, stat.mtime_ns, len(starts), stat.etag))
        offsets[relative] = (starts, stops)
        if starts:
            groups.append(RowGroup(relative, 0, len(starts), 0))
    if unread:  # e.g. media under "img" or "image_path": those rows would be text-only without a word
        counts = ", ".join(f"{key!r} ({count:,})" for key, count in unread.most_common(5))
        log.warning("rows have fields fastwds does not read, left out of the samples (rows with each): %s%s; it reads "
                    "id, messages or conversations, system, and media from image/images (video/videos)", counts,
                    ", ..." if len(unread) > 5 else "")
    per_row = estimate_row_bytes(size_sample, options.media_root)
    groups = [RowGroup(g.file, g.first_row, g.rows, int(g.rows * per_row)) for g in groups]
    tasks = cut_tasks(subset_name(files, root), groups, max_rows, max_bytes)
    file_ids: dict[int, list[str | None]] = {}  # the ids of the file last parsed again

    def ids_of(piece: int) -> pl.Series:
        number, first = id_pieces[piece]
        if number not in file_ids:  # pieces are asked for in order: one file parsed at a time
            file_ids.clear()
            rows = itertools.islice(iter_rows(files[number]), sources[number].rows)
            file_ids[number] = [row_id(parse_row(value, options.media), sources[number].path, row)
                                for row, (_, _, value) in enumerate(rows)]
        return pl.Series(file_ids[number][first:first + ID_PIECE_ROWS], dtype=pl.String)

    repeated = id_hashes.find_repeated(ids_of, keep_hashes=any(without_id))
    renamed = rename_derived(repeated, without_id, rejected, id_hashes, sources, position_rows(sources))
    return Plan("sft", root, tuple(sources), attach(tasks, offsets, rejected, renamed))


def position_rows(sources: list[SourceFile]) -> Callable[[int], tuple[int, int]]:
    """``(file number, row in the file)`` of a row's position across all files."""
    ends = list(itertools.accumulate(s.rows for s in sources))

    def locate(position: int) -> tuple[int, int]:
        number = bisect.bisect_right(ends, position)
        return number, position - (ends[number - 1] if number else 0)
    return locate


def rename_derived(repeated: dict[int, tuple[str, str, int]], without_id: bytearray,
                   rejected: dict[int, tuple[str, str]], id_hashes: KeyHashes, sources: list[SourceFile],
                   locate: Callable[[int], tuple[int, int]]) -> dict[int, str]:
    """Record in ``rejected`` the rows whose key an earlier row has, except where one of the two has
    no id of its own: a derived id (``file-row``) never costs a row that has its own id, nor one
    without (``a.json`` and ``a.jsonl`` derive the same ids). Such a derived id gives way instead: the
    row becomes ``file-row~1`` (or ``~2``, ... the first whose key no row has). Returns those new ids
    by position."""
    clashing: set[int] = set()
    kept_by_key: dict[int, int] = {}  # first row (derived id) -> the first row with its own id that keeps the key
    for position, (reason, detail, first) in repeated.items():
        if without_id[position]:
            clashing.add(position)
            continue
        if without_id[first]:
            clashing.add(first)
            if kept_by_key.setdefault(first, position) == position:
                continue
        rejected[position] = (reason, detail)
    renamed: dict[int, str] = {}
    chosen: set[str] = set()
    for position in sorted(clashing):
        number, row = locate(position)
        base = derived_id(sources[number].path, row)
        for suffix in itertools.count(1):
            candidate = f"{base}~{suffix}"
            if candidate not in chosen and not id_hashes.taken([candidate])[0]:
                break
        renamed[position] = candidate
        chosen.add(candidate)
    if renamed:
        log.info("%d row(s) without an id got a new one, as another row has the id derived from their place "
                 "(e.g. %r)", len(renamed), next(iter(renamed.values())))
    return renamed


def row_id(row: SftRow | Problem, file: str, number: int) -> str | None:
    """The id a row's sample gets (its own, or one derived from its place); None for a row that
    cannot be a sample."""
    if isinstance(row, Problem):
        return None
    return row.id if row.id is not None else derived_id(file, number)


def estimate_row_bytes(size_sample: list[tuple[str, int, list[str]]], media_root: str | None) -> float:
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
            return storage.stat_file(path).size
        except (OSError, FastwdsError):
            return 0

    with ThreadPoolExecutor(16) as pool:
        media_bytes = sum(pool.map(size, paths))
    return (media_bytes + sum(row_bytes for _, row_bytes, _ in chosen)) / len(chosen)


def attach(tasks: list[Task], offsets: dict[str, tuple[array, array]], rejected: dict[int, tuple[str, str]],
           renamed: dict[int, str]) -> tuple[Task, ...]:
    """Give each task its slices' byte ranges and its rows rejected or renamed at plan time (by
    offset within the task)."""
    def by_task(entries: dict[int, Any]) -> Iterator[list[tuple[int, Any]]]:
        positions, task_start = sorted(entries), 0  # sorted once for all tasks
        for task in tasks:
            task_stop = task_start + task.num_rows
            yield [(p - task_start, entries[p]) for p in positions[bisect.bisect_left(positions, task_start):
                                                                   bisect.bisect_left(positions, task_stop)]]
            task_start = task_stop
    result = []
    for task, task_rejects, task_renames in zip(tasks, by_task(rejected), by_task(renamed)):
        slices = tuple(ByteSlice(s.file, s.start, s.stop, offsets[s.file][0][s.start], offsets[s.file][1][s.stop - 1])
                       for s in task.slices)
        rows = tuple((offset, reason, detail) for offset, (reason, detail) in task_rejects)
        result.append(Task(task.subset, task.number, slices, rows, tuple(task_renames)))
    return tuple(result)
