"""NPZ volumes (CT-RATE style) plus CSV tables keyed by ``VolumeName``: float16 WebDataset samples.

Input: ``DATA/*.npz``, ``DATA/PATIENT/*.npz`` or ``DATA/PATIENT/ACCESSION/*.npz`` (mixed is fine),
each holding one array, and up to three CSVs (reports, metadata, multi-label classification
labels) with a key column whose value names a volume: ``train_1_a_1.nii.gz`` (or ``.nii``,
``.npz``, ``.npy``, or no suffix) matches the volume file ``train_1_a_1.npz``.

Each volume becomes one sample, keyed by its file name without ``.npz``:
- ``npy``: the volume as float16, written exactly as ``np.save`` would (``npy.zst`` with
  ``--compress zstd``: the same bytes, zstd-compressed);
- ``json``: ``id``, ``volume_name`` (the CSV's key), ``file``, ``report``, ``metadata`` and
  ``labels`` (each CSV's row as {column: value}, null without a row) and ``volume`` (shape,
  source dtype, NaN/inf/overflow counts, max abs error and RMSE of the float16 conversion);
- ``labels.npy``: the label row as a float32 vector in the labels CSV's column order (listed in
  ``manifest.json`` under stats.labels), NaN for an empty cell: ready for a BCE loss and for
  batching, while the JSON keeps the names. Left out when the volume has no labels row.

Memory per worker process (see ``fastwds.volume``): the pipeline runs with one volume per batch
and queues one deep, and the read stage only names the next volume (the converter reads it). So a
worker holds at most: the volume being converted (float16 array + its encoded bytes, 2x the
float16 size; the float32 data passes in 4 MB chunks), one encoded volume waiting in the write
queue and one being written: about 4x the float16 size, ~440 MB for a (1, 240, 480, 480) volume,
whatever the dataset size.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from fastwds.convert.options import ConvertOptions
from fastwds.convert.pipeline import PreparedBatch, RejectLog
from fastwds.convert.plan import Plan, RowGroup, SourceFile, Task, cut_tasks, find_repeated_keys
from fastwds.convert.run import REJECTS_NAME, task_record_path
from fastwds.errors import InvalidInputError, InvalidSamplesError
from fastwds.indexes import write_text_atomically
from fastwds.volume import VolumeReadError, VolumeStats, npy_member, npz_to_float16

ON_OVERFLOW = ("skip", "clip", "fail")
LAYOUTS = ("DATA/*.npz", "DATA/PATIENT/*.npz", "DATA/PATIENT/ACCESSION/*.npz")
# Suffixes a key column may carry that the volume file name does not.
KEY_SUFFIX = re.compile(r"(\.nii\.gz|\.nii|\.npz|\.npy)$", re.IGNORECASE)
LABELS_MEMBER = "labels.npy"
VOLUMES_FILE = "volumes.jsonl"
# Helper columns added to the CSV frames; named so no real CSV column collides with them.
_ROW, _KEY = "__fastwds_row__", "__fastwds_key__"


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


def find_volumes(root: Path) -> list[str]:
    """Volume files relative to ``root`` (``/`` separated, sorted), at depth 0, 1 or 2."""
    if not root.is_dir():
        raise InvalidInputError(f"{root}: data folder not found")
    found = []
    for directory, dirnames, filenames in os.walk(root):
        relative = Path(directory).relative_to(root)
        if len(relative.parts) >= 2:
            dirnames.clear()  # PATIENT/ACCESSION is the deepest layout
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [(relative / f).as_posix() for f in filenames if f.endswith(".npz") and not f.startswith(".")]
    if not found:
        tried = ", ".join(layout.replace("DATA", str(root)) for layout in LAYOUTS)
        raise InvalidInputError(f"{root}: no .npz files found (looked for {tried})")
    return sorted(found)


def _scan_csv(path: str, key_column: str, infer: bool) -> pl.LazyFrame:
    """The CSV with its key column checked. ``infer`` types the other columns from the whole file
    (a late float or text value cannot break the read); else every column is text."""
    try:
        if infer:
            frame = pl.scan_csv(path, infer_schema_length=None, schema_overrides={key_column: pl.String})
        else:
            frame = pl.scan_csv(path, infer_schema=False)
        names = frame.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as error:
        raise InvalidInputError(f"{path}: not a readable CSV file: {error}") from None
    if key_column not in names:
        raise InvalidInputError(f"{path}: no column {key_column!r} (columns: {', '.join(names)}); "
                                "name the key column with --key-column")
    return frame.with_row_index(_ROW).with_columns(
        pl.col(key_column).str.replace("(?i)" + KEY_SUFFIX.pattern, "").str.replace(r"^.*/", "").alias(_KEY))


def _label_columns(path: str, key_column: str) -> tuple[str, ...]:
    """The label columns, checked to be numbers (or true/false) in every row."""
    try:
        frame = _scan_csv(path, key_column, infer=True).collect()
    except pl.exceptions.PolarsError as error:
        raise InvalidInputError(f"{path}: not a readable CSV file: {error}") from None
    columns = [c for c in frame.columns if c not in (key_column, _ROW, _KEY)]
    for column in columns:
        dtype = frame.schema[column]
        if not (dtype.is_numeric() or dtype in (pl.Boolean, pl.Null)):
            bad = frame.filter(pl.col(column).is_not_null() & pl.col(column).cast(pl.Float64, strict=False).is_null())
            example = f" (row {bad[_ROW][0]}: {bad[column][0]!r})" if bad.height else ""
            raise InvalidInputError(f"{path}: label column {column!r} is not numeric{example}")
    return tuple(columns)


def plan_npz(data_folder: str | os.PathLike, options: NpzOptions, max_rows: int, max_bytes: int,
             limit: int | None = None, strict: bool = False) -> NpzPlan:
    """One task per shard of up to ``max_rows`` volumes. Reads file sizes and the CSVs' key
    columns only; volumes are opened when converted."""
    root = Path(data_folder)
    volumes = find_volumes(root)
    files = []
    for relative in volumes:
        stat = (root / relative).stat()
        files.append(SourceFile(relative, stat.st_size, stat.st_mtime_ns, 1))
    keys = pl.DataFrame({_KEY: [volume_key(v) for v in volumes]})
    chosen = files[:limit]  # a copy: the CSVs join `files` below

    csv_rejects: list[tuple[str, int, str | None, str, str]] = []
    missing: dict[str, list[str]] = {}  # volume file -> CSVs without its row
    for _, path in options.tables():
        table = _scan_csv(path, options.key_column, infer=False).select(
            _ROW, pl.col(options.key_column).alias("name"), _KEY).collect()
        stat = os.stat(path)
        files.append(SourceFile(path, stat.st_size, stat.st_mtime_ns, table.height))
        repeated = table.filter(pl.col(_KEY).is_not_null() & pl.col(_KEY).is_duplicated()
                                & (pl.col(_ROW) != pl.col(_ROW).min().over(_KEY)))
        first_rows = dict(table.group_by(_KEY).agg(pl.col(_ROW).min()).iter_rows())
        for row, name, key in repeated.iter_rows():
            csv_rejects.append((path, row, name, "duplicate_csv_row",
                                f"{options.key_column} {name!r} already in row {first_rows[key]}; the first row is used"))
        orphans = table.join(keys, on=_KEY, how="anti", nulls_equal=False)
        for row, name, _ in orphans.sort(_ROW).iter_rows():
            detail = (f"no volume file {volume_key(name)}.npz under {root}" if name
                      else f"empty {options.key_column}")
            csv_rejects.append((path, row, name, "csv_row_without_volume", detail))
        present = set(table[_KEY].drop_nulls().to_list())
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
    return NpzPlan("npz", str(root.resolve()), tuple(files), tuple(tasks), tuple(csv_rejects), labels)


def _subset(root: Path) -> str:
    """Shard names start with the data folder's name, made file-name safe."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name).strip("._") or "volumes"


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


@dataclass
class VolumeJob:
    """One volume to convert, with its CSV rows (the converter reads the volume itself)."""

    file: str  # relative to the data folder
    path: str
    sample_id: str
    input_bytes: int
    volume_name: str | None
    rows: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # JSON section -> CSV row


def _plain(value: Any) -> Any:
    """A CSV cell as JSON allows it: NaN and inf become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def load_rows(path: str, key_column: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    """``{volume key: {column: value}}`` for ``keys``: the first row of each (polars filters the
    CSV while reading it, so only these rows are held)."""
    frame = (_scan_csv(path, key_column, infer=True).filter(pl.col(_KEY).is_in(keys))
             .sort(_ROW).unique(_KEY, keep="first", maintain_order=True).collect())
    rows = {}
    for row in frame.iter_rows(named=True):
        key = row.pop(_KEY)
        del row[_ROW]
        rows[key] = {column: _plain(value) for column, value in row.items()}
    return rows


def read_task(root: str, task: Task, options: ConvertOptions) -> Iterator[VolumeJob]:
    npz: NpzOptions = options.source_options
    keys = [volume_key(piece.file) for piece in task.slices]
    tables = {section: load_rows(path, npz.key_column, keys) for section, path in npz.tables()}
    for piece, key in zip(task.slices, keys):
        path = os.path.join(root, piece.file)
        # Copies: two volume files with the same name (rejected later) share the CSV rows.
        rows = {section: dict(table[key]) if key in table else None for section, table in tables.items()}
        names = [row.pop(npz.key_column) for row in rows.values() if row is not None]
        yield VolumeJob(piece.file, path, key, os.path.getsize(path), names[0] if names else None, rows)


class VolumeConverter(RejectLog):
    """Converts one task's volumes to float16 samples and records each volume's statistics."""

    def __init__(self, task: Task, options: ConvertOptions) -> None:
        super().__init__(task, options)
        self.npz: NpzOptions = options.source_options
        self.known = {offset: (reason, detail) for offset, reason, detail in task.rejected}
        self.volumes: list[dict[str, Any]] = []
        self.result.stats = {"volumes": self.volumes}

    def prepare(self, job: VolumeJob) -> PreparedBatch:
        offset = self.result.rows
        self.result.rows += 1
        prepared = PreparedBatch(rows=1)
        record: dict[str, Any] = {"id": job.sample_id, "file": job.file, "input_bytes": job.input_bytes,
                                  "status": "skipped", "reason": None}
        self.volumes.append(record)
        known = self.known.get(offset)
        # --on-invalid keep can write a volume without CSV rows; never a second sample of one key.
        keep = self.options.on_invalid == "keep" and known is not None and known[0] == "missing_csv_row"
        if known is not None and not keep:
            self.skip(job, record, *known)
            return prepared
        try:
            flat, stats = npz_to_float16(job.path, self.npz.array, clip=self.npz.on_overflow == "clip")
        except VolumeReadError as error:
            self.skip(job, record, error.reason, error.detail)
            return prepared
        record["volume"] = stats.to_json()
        if stats.problems and self.npz.on_overflow != "clip":
            detail = stats.problem_text()
            if self.npz.on_overflow == "fail":
                raise InvalidSamplesError(f"{job.path}: {detail}; use --on-overflow clip or skip")
            self.skip(job, record, "non_finite" if stats.problems > stats.overflow else "float16_overflow", detail)
            return prepared
        volume_ext = "npy.zst" if self.npz.compress == "zstd" else "npy"
        zstd_level = self.npz.zstd_level if self.npz.compress == "zstd" else None
        data = npy_member(flat, stats.shape, stats.fortran_order, zstd_level)
        del flat  # the bytes are the only copy from here on
        document = self.document(job, stats, volume_ext)
        if known is not None:  # --on-invalid keep
            self.reject(job.file, 0, job.sample_id, *known, kept=True)
            document["invalid"] = {"reason": known[0], "detail": known[1]}
        members = {volume_ext: data,
                   "json": json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()}
        labels = job.rows.get("labels")
        if labels is not None:
            members[LABELS_MEMBER] = _labels_npy(labels)
        record["status"] = "clipped" if stats.clipped else "written"
        prepared.add(job.sample_id, members)
        return prepared

    def skip(self, job: VolumeJob, record: dict[str, Any], reason: str, detail: str) -> None:
        self.reject(job.file, 0, job.sample_id, reason, detail)
        record["reason"] = reason

    def document(self, job: VolumeJob, stats: VolumeStats, volume_ext: str) -> dict[str, Any]:
        volume = {"member": volume_ext, "dtype": "float16", **stats.to_json()}
        return {"id": job.sample_id, "volume_name": job.volume_name, "file": job.file, "volume": volume,
                **{section: job.rows.get(section) for section in ("report", "metadata", "labels")}}


def _labels_npy(row: dict[str, Any]) -> bytes:
    vector = np.array([np.nan if v is None else float(v) for v in row.values()], dtype=np.float32)
    buffer = BytesIO()
    np.save(buffer, vector, allow_pickle=False)
    return buffer.getvalue()


def make_converter(task: Task, options: ConvertOptions, executor: ThreadPoolExecutor) -> VolumeConverter:
    return VolumeConverter(task, options)


def summarize(task_records: list[dict]) -> dict[str, Any]:
    """``manifest["stats"]``: sizes before and after, and the float16 precision over all volumes."""
    volumes = [v for record in task_records for v in record["stats"].get("volumes", [])]
    converted = [v for v in volumes if v["status"] in ("written", "clipped")]
    stats = [v["volume"] for v in converted]
    output = sum(shard["bytes"] for record in task_records for shard in record["shards"])
    input_written = sum(v["input_bytes"] for v in converted)
    compared = sum(s["compared"] for s in stats)
    squared = sum(s["rmse"] ** 2 * s["compared"] for s in stats if s["rmse"] is not None)
    worst = max((v for v in converted if v["volume"]["max_abs_error"] is not None),
                key=lambda v: v["volume"]["max_abs_error"], default=None)
    return {
        "volumes": {"total": len(volumes), "written": len(converted),
                    "clipped": sum(v["status"] == "clipped" for v in volumes),
                    "skipped": len(volumes) - len(converted)},
        "bytes": {
            "input": sum(v["input_bytes"] for v in volumes),
            "input_written": input_written,  # the npz files of the volumes written
            "output": output,  # every shard (volumes, JSON, labels, tar headers)
            "compression_ratio": round(input_written / output, 4) if output else None,
            "space_saved": input_written - output,
            "space_saved_fraction": round(1 - output / input_written, 4) if input_written else None,
        },
        "precision": {
            "dtype": "float16",
            "values_compared": compared,
            "max_abs_error": worst["volume"]["max_abs_error"] if worst else None,
            "max_abs_error_volume": worst["id"] if worst else None,
            "rmse": math.sqrt(squared / compared) if compared else None,
            "max_volume_rmse": max((s["rmse"] for s in stats if s["rmse"] is not None), default=None),
            "source_min": min((s["source_min"] for s in stats if s["source_min"] is not None), default=None),
            "source_max": max((s["source_max"] for s in stats if s["source_max"] is not None), default=None),
            **{name: sum(v.get("volume", {}).get(name, 0) for v in volumes)
               for name in ("nan", "posinf", "neginf", "overflow", "clipped")},
        },
    }


def finalize(output: Path, plan: Plan, options: ConvertOptions, manifest: dict[str, Any]) -> None:
    """Add what only the whole run knows: CSV rows without volumes (to rejects.jsonl and the
    manifest), the label columns, and ``volumes.jsonl`` (one line of statistics per volume)."""
    assert isinstance(plan, NpzPlan)
    npz: NpzOptions = options.source_options
    stats = manifest.setdefault("stats", {})
    lines = [json.dumps({"subset": "csv", "file": path, "row": row, "id": name, "reason": reason,
                         "detail": detail, "action": "ignored"}, ensure_ascii=False) + "\n"
             for path, row, name, reason, detail in plan.csv_rejects]
    if lines:
        rejects = output / REJECTS_NAME
        write_text_atomically(rejects, rejects.read_text(encoding="utf-8") + "".join(lines))
    by_reason: dict[str, int] = {}
    for _, _, _, reason, _ in plan.csv_rejects:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    stats["csv"] = {"tables": {section: path for section, path in npz.tables()},
                    "key_column": npz.key_column, "rows_ignored": len(plan.csv_rejects),
                    "rows_ignored_by_reason": dict(sorted(by_reason.items()))}
    if plan.label_columns:
        stats["labels"] = {"member": LABELS_MEMBER, "dtype": "float32", "columns": list(plan.label_columns)}
    volume_lines = []
    for task in plan.tasks:
        record = json.loads(task_record_path(output, task).read_text())
        volume_lines += [json.dumps(v, ensure_ascii=False) + "\n" for v in record["stats"]["volumes"]]
    write_text_atomically(output / VOLUMES_FILE, "".join(volume_lines))
    stats["volumes_file"] = VOLUMES_FILE
