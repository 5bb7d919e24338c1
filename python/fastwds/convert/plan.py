"""Shard tasks: the unit of work. A task names one shard and the input rows that go into it; it
depends on no other task, so tasks can run in any order, on any worker or machine, and a resumed
run only runs the tasks that have no completion record."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from fastwds import _core, storage
from fastwds.errors import InvalidInputError


@dataclass(frozen=True)
class RowSlice:
    """Rows ``[start, stop)`` of one input file (path relative to the input root)."""

    file: str
    start: int
    stop: int


@dataclass(frozen=True)
class Task:
    subset: str
    number: int
    slices: tuple[RowSlice, ...]
    # Rows of this task known to be rejected before reading them (duplicate ids, found at plan
    # time across the whole dataset): (row offset within the task, reason, detail).
    rejected: tuple[tuple[int, str, str], ...] = ()
    # Rows of this task without an id of their own whose derived id another row has (SFT):
    # (row offset within the task, the id they get instead).
    renamed: tuple[tuple[int, str], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.subset}-{self.number:06d}"

    @property
    def num_rows(self) -> int:
        return sum(s.stop - s.start for s in self.slices)


@dataclass(frozen=True)
class SourceFile:
    """What the input fingerprint is made of: a changed file means a different input."""

    path: str
    size: int
    mtime_ns: int  # 0 for objects in a store: their ETag says whether they changed
    rows: int
    etag: str | None = None


def changed_files(input_root: str, files: Sequence[SourceFile], at_once: int = 32) -> list[str]:
    """The files whose size or identity (mtime, or an object's ETag) is no longer the plan's, or
    that are gone. Objects in a bucket are HEAD requests, ``at_once`` at a time; local files are
    stat'ed in turn (a thread hand-off would cost more than the stat)."""
    def location(file: SourceFile) -> str:
        return file.path if os.path.isabs(file.path) or storage.is_url(file.path) else \
            storage.join(input_root, file.path)

    def changed(file: SourceFile, place: str) -> bool:
        try:
            now = storage.stat_file(place)
        except OSError:
            return True
        return (now.size, now.mtime_ns if file.etag is None else now.etag) != \
            (file.size, file.mtime_ns if file.etag is None else file.etag)

    locations = [location(f) for f in files]
    if not any(storage.is_url(place) for place in locations):
        return [place for file, place in zip(files, locations) if changed(file, place)]
    with ThreadPoolExecutor(at_once) as pool:
        return [place for place, is_changed in zip(locations, pool.map(changed, files, locations)) if is_changed]


@dataclass(frozen=True)
class Plan:
    source: str
    input_root: str
    files: tuple[SourceFile, ...]
    tasks: tuple[Task, ...] = field(default_factory=tuple)

    @property
    def total_rows(self) -> int:
        return sum(t.num_rows for t in self.tasks)

    def fingerprint(self) -> str:
        """Hash of the input files (paths, sizes, mtimes, rows) and of the task cut."""
        # A task without renamed rows hashes as before the field existed: resuming across the upgrade works.
        tasks = [{k: v for k, v in asdict(t).items() if k != "renamed" or v} for t in self.tasks]
        payload = json.dumps([[asdict(f) for f in self.files], tasks], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class RowGroup:
    """One row group, from file metadata only: where its rows are and their estimated bytes."""

    file: str
    first_row: int  # row number of its first row within the file
    rows: int
    bytes: int


def cut_tasks(subset: str, groups: Sequence[RowGroup], max_rows: int, max_bytes: int) -> list[Task]:
    """Cut the subset's rows, in order, into tasks of at most ``max_rows`` rows and, by the row
    groups' average row size, at most ``max_bytes``. Tasks may span files. The byte estimate keeps
    spill shards rare; the writer's hard cap still holds if a task's rows turn out larger."""
    tasks: list[Task] = []
    slices: list[RowSlice] = []
    rows, size = 0, 0.0

    def close_task() -> None:
        nonlocal slices, rows, size
        tasks.append(Task(subset, len(tasks), tuple(slices)))
        slices, rows, size = [], 0, 0.0

    for group in groups:
        per_row = group.bytes / group.rows if group.rows else 0.0
        done = 0
        while done < group.rows:
            room = max_rows - rows
            if per_row > 0:
                room = min(room, int((max_bytes - size) // per_row))
            if room <= 0 and rows > 0:
                close_task()
                continue
            take = min(max(room, 1), group.rows - done)  # a row over the cap still gets a task
            start = group.first_row + done
            if slices and slices[-1].file == group.file and slices[-1].stop == start:
                slices[-1] = RowSlice(group.file, slices[-1].start, start + take)
            else:
                slices.append(RowSlice(group.file, start, start + take))
            rows, size, done = rows + take, size + take * per_row, done + take
            if rows >= max_rows:
                close_task()
    if slices:
        close_task()
    return tasks


# Ids kept as their own key (rust/key.rs `is_portable`): polars tests these without a Python call per id.
PORTABLE_ID = rf"^[A-Za-z0-9][A-Za-z0-9_-]{{0,{_core.MAX_KEY_LEN - 1}}}$"
DERIVED_KEY_SUFFIX = r"--[0-9a-f]{16}$"
# Ids turned into derived keys by one Rust call.
KEYS_AT_ONCE = 16384


def _keyed(ids: pl.Series, positions: pl.Series | None = None) -> pl.DataFrame:
    """``position`` (``positions``, else the index in ``ids``), ``id`` and shard ``key`` of every id
    that is neither null nor empty (those rows are rejected as ``missing_id``). Ids that are
    already portable keys are their own key (a polars regex decides); only the others go through
    ``portable_keys``, one Rust call for all of them."""
    frame = pl.DataFrame({"id": ids.cast(pl.String)})
    frame = frame.with_row_index("position") if positions is None else frame.with_columns(position=positions)
    frame = frame.filter(pl.col("id").is_not_null() & (pl.col("id") != ""))
    portable = pl.col("id").str.contains(PORTABLE_ID) & ~pl.col("id").str.contains(DERIVED_KEY_SUFFIX)
    derived = frame.filter(~portable)
    frame = frame.filter(portable).with_columns(key=pl.col("id"))
    if len(derived):
        ids = derived["id"]  # in pieces: a Python list of every id at once would be the peak
        keys = [pl.Series(_core.portable_keys(ids.slice(start, KEYS_AT_ONCE).to_list()), dtype=pl.String)
                for start in range(0, len(ids), KEYS_AT_ONCE)]
        derived = derived.with_columns(key=pl.concat(keys))
        frame = pl.concat([frame, derived]).sort("position")
    return frame


class KeyHashes:
    """The shard keys of a dataset's ids as 64-bit hashes, added piece by piece (a file's ids):
    the one part of a plan that grows with the input, at 8 bytes per id instead of the ids
    themselves. ``find_repeated`` then checks exactly only the rows whose hash another row has.
    Measured, parquet with 45-byte ids: the planning peak grows ~30 bytes per id (all copies and
    allocator slack included), where holding the ids grew it ~170 (4M ids: 180 MiB, was 712)."""

    def __init__(self) -> None:
        self._pieces: list[np.ndarray] = []
        self._names: list[str] = []
        self._sorted: np.ndarray | None = None

    def add(self, ids: pl.Series, name: str) -> None:
        """Add a piece: ``ids`` in input order, from ``name`` (the file, for messages)."""
        frame = _keyed(ids)
        hashes = np.zeros(len(ids), dtype=np.uint64)  # 0: a null or empty id (a missing_id reject)
        # A key hashing to 0 becomes 1: at worst an extra candidate, checked exactly like the others.
        hashes[frame["position"].to_numpy()] = np.maximum(self.hash_keys(frame["key"]), 1)
        self._pieces.append(hashes)
        self._names.append(name)

    @staticmethod
    def hash_keys(keys: pl.Series) -> np.ndarray:
        """64-bit hashes of the keys (polars' own hash: stable within one process, all it needs)."""
        return keys.hash().to_numpy()

    def find_repeated(self, read_ids: Callable[[int], pl.Series],
                      keep_hashes: bool = False) -> dict[int, tuple[str, str, int]]:
        """``find_repeated_keys`` over all pieces added (positions count through them in order).
        The pieces holding a row whose key hash another row has are read again (``read_ids(i)``:
        piece i's ids, in the same order) and those rows are checked exactly, so a hash collision
        never rejects a row. Sorting finds the repeated hashes with one copy of the array
        (polars' ``is_duplicated`` took 108 MB for 1M hashes). ``keep_hashes``: keep the sorted
        hashes for ``taken`` when there are repeats (8 bytes per row more)."""
        lengths = [len(piece) for piece in self._pieces]
        every = np.concatenate(self._pieces) if self._pieces else np.zeros(0, dtype=np.uint64)
        self._pieces = []  # every holds them now

        def same_as_previous(ordered: np.ndarray) -> np.ndarray:  # of sorted hashes; 0 is no id
            return (ordered[1:] == ordered[:-1]) & (ordered[1:] != 0)

        # Sorting finds whether any hash repeats (np.sort: faster than argsort, which only the
        # inputs with repeats then pay).
        ordered = np.sort(every)
        if not same_as_previous(ordered).any():
            return {}
        self._sorted = ordered if keep_hashes else None
        del ordered
        # Which rows: both of each equal pair in hash order, back in input order. (np.isin of
        # every hash against the repeated ones took 1.5 s of 12.8 for 4M ids, 3M of them repeated.)
        order = np.argsort(every, kind="stable")
        same = same_as_previous(every[order])
        del every
        candidates = np.sort(order[np.concatenate(([False], same)) | np.concatenate((same, [False]))])
        del order, same
        positions: list[np.ndarray] = []
        ids: list[pl.Series] = []
        start = 0
        for index, length in enumerate(lengths):
            local = candidates[(candidates >= start) & (candidates < start + length)] - start
            if len(local):
                piece_ids = read_ids(index)
                if len(piece_ids) != length:
                    raise InvalidInputError(f"{self._names[index]}: changed while planning ({length:,} ids, "
                                            f"then {len(piece_ids):,}); convert again once it stays as it is")
                positions.append(local + start)
                ids.append(piece_ids.cast(pl.String).gather(local))
            start += length
        return find_repeated_keys(pl.concat(ids), pl.Series(np.concatenate(positions)))

    def taken(self, ids: list[str]) -> list[bool]:
        """Whether each id's key hash is one of the dataset's (after ``find_repeated`` found
        repeats): True for every key in use, and now and then for a free one whose hash collides."""
        assert self._sorted is not None, "find_repeated(keep_hashes=True) found repeats first"
        keys = _keyed(pl.Series(ids, dtype=pl.String))["key"]
        hashes = np.maximum(self.hash_keys(keys), 1)
        found = np.searchsorted(self._sorted, hashes)
        return (self._sorted[np.minimum(found, len(self._sorted) - 1)] == hashes).tolist()


def find_repeated_keys(ids: pl.Series, positions: pl.Series | None = None) -> dict[int, tuple[str, str, int]]:
    """Rows (by position in ``ids``, or ``positions``: increasing) whose shard key an earlier row already has:
    ``{position: (reason, detail, position of the first row)}``. The same id again is
    ``duplicate_id``; a different id with the same key is ``key_collision``.

    Vectorised in polars: ~75 bytes per id at the peak (measured, 384,000 ids: 28 MB; window
    functions over the keys took 114 MB, a Python call per id 63 MB more). For a whole dataset,
    ``KeyHashes`` holds 8 bytes per id and calls this on the few rows that may repeat."""
    frame = _keyed(ids, positions)
    repeated = frame.filter(~pl.col("key").is_first_distinct())
    if not len(repeated):
        return {}
    firsts = frame.filter(pl.col("key").is_in(repeated["key"].unique().implode()) & pl.col("key").is_first_distinct())
    repeated = repeated.join(firsts.select("key", first_position="position", first_id="id"), on="key")
    result = {}
    for position, sample_id, key, first_position, first_id in repeated.select(
            "position", "id", "key", "first_position", "first_id").iter_rows():
        if sample_id == first_id:
            result[position] = ("duplicate_id", f"id {sample_id!r} already used", first_position)
        else:
            result[position] = ("key_collision", f"id {sample_id!r} maps to key {key!r} of id {first_id!r}",
                                first_position)
    return result
