"""Planning an NPZ conversion: volume files found in the three CT-RATE layouts, CSV tables joined
by ``VolumeName`` (their key columns only), rows without volumes and volumes without rows found
before anything is converted. One task per shard of up to ``--samples-per-shard`` volumes."""

from __future__ import annotations

import codecs
import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from fastwds.convert.plan import Plan, RowGroup, SourceFile, Task, cut_tasks, find_repeated_keys
from fastwds import storage
from fastwds.errors import InvalidInputError
from fastwds.paths import safe_name

log = logging.getLogger("fastwds")

ON_OVERFLOW = ("skip", "clip", "fail")
LAYOUTS = ("DATA/*.npz", "DATA/PATIENT/*.npz", "DATA/PATIENT/ACCESSION/*.npz")
# Suffixes a key column may carry that the volume file name does not.
KEY_SUFFIX = re.compile(r"(\.nii\.gz|\.nii|\.npz|\.npy)$", re.IGNORECASE)
# Helper columns added to the CSV frames; named so no real CSV column collides with them.
ROW_COLUMN, KEY_COLUMN = "__fastwds_row__", "__fastwds_key__"


@dataclass(frozen=True)
class NpzOptions:
    reports: str | None = None  # absolute paths (resolved by the CLI)
    meta: str | None = None
    labels: str | None = None
    key_column: str = "VolumeName"
    array: str | None = None  # the npz member to convert; None: the only one
    on_overflow: Literal["skip", "clip", "fail"] = "skip"
    compress: Literal["zstd"] | None = None
    zstd_level: int = 3

    def tables(self) -> list[tuple[str, str]]:
        """``[(JSON section, CSV path)]`` of the CSVs given."""
        return [(section, path) for section, path in
                (("report", self.reports), ("metadata", self.meta), ("labels", self.labels)) if path]


@dataclass(frozen=True)
class NpzPlan(Plan):
    # CSV rows that match no volume, or repeat a volume's row: (csv, row, key value, reason, detail).
    csv_rejects: tuple[tuple[str, int, str | None, str, str], ...] = ()
    label_columns: tuple[str, ...] = ()


def volume_key(name: str) -> str:
    """``train_1_a_1.nii.gz`` -> ``train_1_a_1``: what a key column value and a file name share."""
    return KEY_SUFFIX.sub("", os.path.basename(name))


def find_volumes(root: str) -> list[storage.FileEntry]:
    """Volume files under ``root`` (a folder or an s3:// prefix), at depth 0, 1 or 2, sorted."""
    if not storage.is_dir(root):
        raise InvalidInputError(f"{root}: data folder not found")
    volumes = [e for e in storage.list_files(root) if e.relative.lower().endswith(".npz")]  # scan.NPZ too
    found = [e for e in volumes if e.relative.count("/") <= 2]
    if deeper := [e.relative for e in volumes if e.relative.count("/") > 2]:
        log.warning("%d .npz file(s) under %s are deeper than the layouts fastwds reads (%s) and are not converted: "
                    "%s", len(deeper), root, ", ".join(LAYOUTS), ", ".join(deeper[:3]) + (", ..." if len(deeper) > 3 else ""))
    if not found:
        tried = ", ".join(layout.replace("DATA", str(root)) for layout in LAYOUTS)
        raise InvalidInputError(f"{root}: no .npz files found (looked for {tried})")
    return found


def check_utf8(path: str) -> None:
    """CSVs must be UTF-8 (polars fails deep inside a read otherwise): say where they are not.
    Excel's "CSV" is often cp1252."""
    stat = storage.stat_file(path)
    _check_utf8(storage.local_copy(path), stat.size, stat.mtime_ns, stat.etag)


@functools.lru_cache(maxsize=16)
def _check_utf8(path: str, size: int, mtime_ns: int, etag: str | None) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                at = offset + error.start
                line += chunk[:error.start].count(b"\n")
                raise InvalidInputError(
                    f"{path}: not UTF-8 text: byte {chunk[error.start]:#04x} at line {line} (byte {at}); save it as "
                    "UTF-8 (Excel: 'CSV UTF-8'), e.g. `iconv -f cp1252 -t utf-8 IN.csv > OUT.csv`") from None
            line += chunk.count(b"\n")
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: not UTF-8 text: the file ends inside a multi-byte character") from None


def scan_csv(path: str, key_column: str, infer: bool) -> pl.LazyFrame:
    """The CSV with its key column checked. ``infer`` types the other columns from the whole file
    (a late float or text value cannot break the read); else every column is text."""
    try:
        check_utf8(path)
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot be read: {error.strerror or error}") from None
    try:
        local = storage.local_copy(path)
        if infer:
            frame = pl.scan_csv(local, infer_schema_length=None, schema_overrides={key_column: pl.String})
        else:
            frame = pl.scan_csv(local, infer_schema=False)
        names = frame.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as error:
        raise InvalidInputError(f"{path}: not a readable CSV file: {error}") from None
    if key_column not in names:
        if len(names) == 1 and (other := next((d for d in (";", "\t", "|") if d in names[0]), None)):
            raise InvalidInputError(f"{path}: its columns are separated by {other!r} ({names[0][:60]!r}); fastwds "
                                    "reads comma-separated CSV: convert it, e.g. with "
                                    f"`python -c \"import polars as pl; pl.read_csv('IN', separator={other!r})"
                                    ".write_csv('OUT')\"`")
        raise InvalidInputError(f"{path}: no column {key_column!r} (columns: {', '.join(names)}); "
                                "name the key column with --key-column")
    return frame.with_row_index(ROW_COLUMN).with_columns(
        pl.col(key_column).str.replace("(?i)" + KEY_SUFFIX.pattern, "").str.replace(r"^.*/", "").alias(KEY_COLUMN))


def _label_columns(path: str, key_column: str) -> tuple[str, ...]:
    """The label columns, checked to be numbers (or true/false) in every row."""
    try:
        frame = scan_csv(path, key_column, infer=True).collect()
    except pl.exceptions.PolarsError as error:
        raise InvalidInputError(f"{path}: not a readable CSV file: {error}") from None
    columns = [c for c in frame.columns if c not in (key_column, ROW_COLUMN, KEY_COLUMN)]
    for column in columns:
        dtype = frame.schema[column]
        if not (dtype.is_numeric() or dtype in (pl.Boolean, pl.Null)):
            bad = frame.filter(pl.col(column).is_not_null() & pl.col(column).cast(pl.Float64, strict=False).is_null())
            example = f" (row {bad[ROW_COLUMN][0]}: {bad[column][0]!r})" if bad.height else ""
            raise InvalidInputError(f"{path}: label column {column!r} is not numeric{example}")
    return tuple(columns)


def plan_npz(data_folder: str | os.PathLike, options: NpzOptions, max_rows: int, max_bytes: int,
             limit: int | None = None, strict: bool = False) -> NpzPlan:
    """One task per shard of up to ``max_rows`` volumes. Reads file sizes and the CSVs' key
    columns only; volumes are opened when converted."""
    storage.check_location(data_folder)  # 's3://' without a bucket must not become the folder 's3:'
    root = os.fspath(data_folder).rstrip("/") if storage.is_url(data_folder) else os.fspath(data_folder)
    volumes = find_volumes(root)
    files = [SourceFile(v.relative, v.size, v.mtime_ns, 1, v.etag) for v in volumes]
    keys = pl.DataFrame({KEY_COLUMN: [volume_key(v.relative) for v in volumes]})
    chosen = files[:limit]  # a copy: the CSVs join `files` below

    csv_rejects: list[tuple[str, int, str | None, str, str]] = []
    missing: dict[str, list[str]] = {}  # volume file -> CSVs without its row
    for _, path in options.tables():
        table = scan_csv(path, options.key_column, infer=False).select(
            ROW_COLUMN, pl.col(options.key_column).alias("name"), KEY_COLUMN).collect()
        stat = storage.stat_file(path)
        files.append(SourceFile(path, stat.size, stat.mtime_ns, table.height, stat.etag))
        repeated = table.filter(pl.col(KEY_COLUMN).is_not_null() & pl.col(KEY_COLUMN).is_duplicated()
                                & (pl.col(ROW_COLUMN) != pl.col(ROW_COLUMN).min().over(KEY_COLUMN)))
        first_rows = dict(table.group_by(KEY_COLUMN).agg(pl.col(ROW_COLUMN).min()).iter_rows())
        for row, name, key in repeated.iter_rows():
            csv_rejects.append((path, row, name, "duplicate_csv_row",
                                f"{options.key_column} {name!r} already in row {first_rows[key]}; the first row is used"))
        orphans = table.join(keys, on=KEY_COLUMN, how="anti", nulls_equal=False)
        for row, name, _ in orphans.sort(ROW_COLUMN).iter_rows():
            detail = (f"no volume file {volume_key(name)}.npz under {root}" if name
                      else f"empty {options.key_column}")
            csv_rejects.append((path, row, name, "csv_row_without_volume", detail))
        present = set(table[KEY_COLUMN].drop_nulls().to_list())
        for volume in chosen:
            if volume_key(volume.path) not in present:
                missing.setdefault(volume.path, []).append(path)
    csv_rejects.sort()
    if strict and (missing or csv_rejects):
        raise InvalidInputError(_strict_message(missing, csv_rejects))

    labels = _label_columns(options.labels, options.key_column) if options.labels else ()
    rejected: dict[str, tuple[str, str]] = {
        file: ("missing_csv_row", "no row in " + ", ".join(paths)) for file, paths in missing.items()}
    repeated_ids = find_repeated_keys(pl.Series([volume_key(f.path) for f in chosen]))
    for position, (reason, detail, first) in repeated_ids.items():
        rejected[chosen[position].path] = (reason, f"{detail} ({chosen[first].path})")
    # float16 halves a stored float32 npz; the writer's byte cap holds whatever the estimate.
    groups = [RowGroup(f.path, 0, 1, f.size // 2) for f in chosen]
    tasks = []
    for task in cut_tasks(_subset(root), groups, max_rows, max_bytes):
        known = tuple((offset, *rejected[piece.file]) for offset, piece in enumerate(task.slices)
                      if piece.file in rejected)
        tasks.append(Task(task.subset, task.number, task.slices, known))
    input_root = root if storage.is_url(root) else str(Path(root).resolve())
    return NpzPlan("npz", input_root, tuple(files), tuple(tasks), tuple(csv_rejects), labels)


def _subset(root: str) -> str:
    """Shard names start with the data folder's name, made file-name safe."""
    name = root.rsplit("/", 1)[-1] if storage.is_url(root) else Path(root).resolve().name
    return safe_name(name, "volumes")


def _strict_message(missing: dict[str, list[str]], csv_rejects: list[tuple]) -> str:
    parts = []
    if missing:
        examples = "; ".join(f"{file} (no row in {', '.join(map(os.path.basename, paths))})"
                             for file, paths in list(missing.items())[:3])
        parts.append(f"{len(missing)} volume(s) without CSV rows, e.g. {examples}")
    if csv_rejects:
        examples = "; ".join(f"{os.path.basename(path)} row {row} {name!r}: {reason}"
                             for path, row, name, reason, _ in csv_rejects[:3])
        parts.append(f"{len(csv_rejects)} CSV row(s) without a volume or repeated, e.g. {examples}")
    return "--strict: " + "; ".join(parts) + " (without --strict these are listed in rejects.jsonl)"
