"""Converting NPZ volumes (CT-RATE style) plus CSV rows into float16 WebDataset samples.

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

Parallelism inside a task: ``VolumeConverter.load`` (inflate, cast, check, encode: zlib and numpy
release the GIL) runs on ``task_threads`` volumes at once, ``prepare`` takes them in input order,
so a job of one shard task keeps two cores busy and writes the same bytes as one thread.

Memory per worker process (see ``fastwds.volume``): the pipeline runs with one volume per batch
and queues one deep, and the read stage only names the next volume (the converter reads it). So a
worker holds at most: the ``task_threads`` volumes being converted (float16 array + its encoded
bytes, 2x the float16 size each; the float32 data passes in 4 MB chunks), one encoded volume
waiting in the write queue and one being written: about 6x the float16 size with two threads,
~660 MB for a (1, 240, 480, 480) volume, whatever the dataset size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import numpy as np
import polars as pl

from fastwds import storage
from fastwds.convert.options import ConvertOptions
from fastwds.convert.pipeline import PreparedBatch, RejectLog
from fastwds.convert.plan import Task
from fastwds.errors import InvalidSamplesError
from fastwds.sources.npz.plan import KEY_COLUMN, ROW_COLUMN, NpzOptions, scan_csv, volume_key
from fastwds.volume import VolumeReadError, VolumeStats, npy_member, npz_to_float16

LABELS_MEMBER = "labels.npy"


@dataclass
class VolumeJob:
    """One volume to convert, with its CSV rows (the converter reads the volume itself)."""

    offset: int  # its row number in the task
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
    frame = (scan_csv(path, key_column, infer=True).filter(pl.col(KEY_COLUMN).is_in(keys))
             .sort(ROW_COLUMN).unique(KEY_COLUMN, keep="first", maintain_order=True).collect())
    rows = {}
    for row in frame.iter_rows(named=True):
        key = row.pop(KEY_COLUMN)
        del row[ROW_COLUMN]
        rows[key] = {column: _plain(value) for column, value in row.items()}
    return rows


def read_task(root: str, task: Task, options: ConvertOptions) -> Iterator[VolumeJob]:
    npz: NpzOptions = options.source_options
    keys = [volume_key(piece.file) for piece in task.slices]
    tables = {section: load_rows(path, npz.key_column, keys) for section, path in npz.tables()}
    for offset, (piece, key) in enumerate(zip(task.slices, keys)):
        path = storage.join(root, piece.file)
        # Copies: two volume files with the same name (rejected later) share the CSV rows.
        rows = {section: dict(table[key]) if key in table else None for section, table in tables.items()}
        names = [row.pop(npz.key_column) for row in rows.values() if row is not None]
        yield VolumeJob(offset, piece.file, path, key, storage.stat_file(path).size, names[0] if names else None, rows)


@dataclass
class LoadedVolume:
    """A volume after the heavy work: its encoded member and statistics, or why it has none."""

    job: VolumeJob
    known: tuple[str, str] | None = None  # a reject found at plan time (e.g. no CSV row)
    skip: tuple[str, str] | None = None  # (reason, detail) found reading it
    stats: VolumeStats | None = None
    data: bytes | None = None


class VolumeConverter(RejectLog):
    """Converts one task's volumes to float16 samples and records each volume's statistics."""

    def __init__(self, task: Task, options: ConvertOptions, executor: Executor | None = None) -> None:
        super().__init__(task, options)
        self.npz: NpzOptions = options.source_options
        self.known = {offset: (reason, detail) for offset, reason, detail in task.rejected}
        self.volumes: list[dict[str, Any]] = []
        self.result.stats = {"volumes": self.volumes}
        self.parallel_loads = options.task_threads
        # The task's own pool (task_threads threads): loads on asyncio's default pool spread over
        # up to cores + 4 threads, each keeping freed volume memory in its own malloc arena.
        self.load_executor = executor

    def load(self, job: VolumeJob) -> LoadedVolume:
        """The heavy, independent part (any thread, any order): inflate, cast, check, encode."""
        known = self.known.get(job.offset)
        # --on-invalid keep can write a volume without CSV rows; never a second sample of one key.
        keep = self.options.on_invalid == "keep" and known is not None and known[0] == "missing_csv_row"
        loaded = LoadedVolume(job, known)
        if known is not None and not keep:
            return loaded
        try:
            flat, loaded.stats = npz_to_float16(job.path, self.npz.array, clip=self.npz.on_overflow == "clip")
        except VolumeReadError as error:
            loaded.skip = (error.reason, error.detail)
            return loaded
        stats = loaded.stats
        if stats.problems and self.npz.on_overflow != "clip":
            return loaded  # prepare decides: skip or fail
        zstd_level = self.npz.zstd_level if self.npz.compress == "zstd" else None
        loaded.data = npy_member(flat, stats.shape, stats.fortran_order, zstd_level)
        return loaded

    def prepare(self, job: VolumeJob | LoadedVolume) -> PreparedBatch:
        """In input order: the volume's record, reject or sample."""
        loaded = job if isinstance(job, LoadedVolume) else self.load(job)
        job = loaded.job
        self.result.rows += 1
        prepared = PreparedBatch(rows=1)
        record: dict[str, Any] = {"id": job.sample_id, "file": job.file, "input_bytes": job.input_bytes,
                                  "status": "skipped", "reason": None}
        self.volumes.append(record)
        known = loaded.known
        if known is not None and loaded.stats is None and loaded.skip is None:
            self.skip(job, record, *known)
            return prepared
        if loaded.skip is not None:
            self.skip(job, record, *loaded.skip)
            return prepared
        stats = loaded.stats
        record["volume"] = stats.to_json()
        if loaded.data is None:  # float16 problems, not clipped
            detail = stats.problem_text()
            if self.npz.on_overflow == "fail":
                raise InvalidSamplesError(f"{job.path}: {detail}; use --on-overflow clip or skip")
            self.skip(job, record, "non_finite" if stats.problems > stats.overflow else "float16_overflow", detail)
            return prepared
        volume_ext = "npy.zst" if self.npz.compress == "zstd" else "npy"
        data, loaded.data = loaded.data, None  # the bytes are the only copy from here on
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
