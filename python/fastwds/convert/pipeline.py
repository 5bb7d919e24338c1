"""One shard task: read -> validate/encode -> write, as an asyncio pipeline with bounded queues.

Reading (polars) and writing (Rust) release the GIL and run in threads; validation is Python plus
the Rust image checks (GIL released); full decodes and re-encodes go to a thread pool, since
Pillow releases the GIL while it works. So one task keeps several cores busy, and memory stays at
a few batches per task whatever the input size.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fastwds.convert.options import ConvertOptions
from fastwds.convert.plan import Task
from fastwds.errors import InvalidSamplesError
from fastwds.media import ImageInfo, ImageProblem, decode_problem, inspect_images, reencode_jpeg
from fastwds.sources.base import RowBatch
from fastwds.validate import check_sample, image_member_names
from fastwds.writer import ShardWriter

QUEUE_BATCHES = 2
# Rejections that leave no usable key, so even --on-invalid keep cannot write the row.
UNWRITABLE = {"missing_id", "duplicate_id", "key_collision"}

Progress = Callable[[int, int, int], None]  # (rows done, rows written, bytes written)


@dataclass
class PreparedBatch:
    ids: list[str] = field(default_factory=list)
    columns: dict[str, list[bytes | None]] = field(default_factory=dict)
    rows: int = 0
    payload_bytes: int = 0

    def add(self, sample_id: str, members: dict[str, bytes]) -> None:
        position = len(self.ids)
        self.ids.append(sample_id)
        for ext, data in members.items():
            self.columns.setdefault(ext, [None] * position).append(data)
            self.payload_bytes += len(data)
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


class TaskConverter:
    """Validates and encodes the batches of one task."""

    def __init__(self, task: Task, options: ConvertOptions, images: ThreadPoolExecutor) -> None:
        self.task = task
        self.options = options
        self.images = images
        self.rejected = {offset: (reason, detail) for offset, reason, detail in task.rejected}
        self.result = TaskResult(task.name)

    def reject(self, batch: RowBatch, index: int, reason: str, detail: str, kept: bool) -> None:
        row = batch.first_row + index
        record = {"subset": self.task.subset, "file": batch.file, "row": row, "id": batch.ids[index],
                  "reason": reason, "detail": detail, "action": "kept" if kept else "skipped"}
        if self.options.on_invalid == "fail":
            raise InvalidSamplesError(f"{batch.file} row {row} (id {batch.ids[index]!r}): {reason}: {detail}")
        self.result.rejects.append(record)

    def prepare(self, batch: RowBatch) -> PreparedBatch:
        flat = [image for images in batch.images for image in images]
        checks: list[ImageInfo | ImageProblem] = inspect_images(flat)
        if self.options.verify_images == "full":
            decoded = self.images.map(lambda pair: decode_problem(pair[0]) if isinstance(pair[1], ImageInfo) else None,
                                      zip(flat, checks))
            checks = [problem or check for problem, check in zip(decoded, checks)]
        prepared = PreparedBatch(rows=len(batch))
        position = 0
        for index, sample_id in enumerate(batch.ids):
            images = batch.images[index]
            image_checks = checks[position:position + len(images)]
            position += len(images)
            offset = self.result.rows + index
            if sample_id is None or sample_id == "":
                self.reject(batch, index, "missing_id", "the id is null or empty", kept=False)
                continue
            if offset in self.rejected:
                self.reject(batch, index, *self.rejected[offset], kept=False)
                continue
            checked = check_sample(batch.conversations[index], image_checks)
            keep_invalid = checked.problem is not None and self.options.on_invalid == "keep"
            if checked.problem is not None:
                self.reject(batch, index, checked.problem.reason, checked.problem.detail, kept=keep_invalid)
                if not keep_invalid:
                    continue
            prepared.add(sample_id, self.members(batch, index, images, image_checks, checked))
        self.result.rows += len(batch)
        return prepared

    def members(self, batch, index, images, image_checks, checked) -> dict[str, bytes]:
        infos = [c if isinstance(c, ImageInfo) else None for c in image_checks]
        if self.options.reencode == "jpeg":
            encoded = list(self.images.map(
                lambda pair: reencode_jpeg(pair[0], self.options.quality, self.options.max_side)
                if pair[1] is not None else (pair[0], None), zip(images, infos)))
            images = [data for data, _ in encoded]
            infos = [info for _, info in encoded]
        names = image_member_names([info.extension if info else "bin" for info in infos])
        document = {
            "id": batch.ids[index],
            "conversations": checked.conversations if checked.conversations is not None
            else batch.conversations[index],
            **batch.extras[index],
            "images": [{"member": name, "format": info.format if info else None,
                        "width": info.width if info else None, "height": info.height if info else None}
                       for name, info in zip(names, infos)],
            "source": {"file": batch.file, "row": batch.first_row + index},
        }
        if checked.problem is not None:
            document["invalid"] = {"reason": checked.problem.reason, "detail": checked.problem.detail}
        members = {name: data for name, data in zip(names, images) if data}
        members["json"] = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return members


async def _run_pipeline(batches: Iterator[RowBatch], converter: TaskConverter, writer: ShardWriter,
                        progress: Progress) -> None:
    read_queue: asyncio.Queue = asyncio.Queue(QUEUE_BATCHES)
    write_queue: asyncio.Queue = asyncio.Queue(QUEUE_BATCHES)
    done = object()

    async def read() -> None:
        while (batch := await asyncio.to_thread(next, batches, done)) is not done:
            await read_queue.put(batch)
        await read_queue.put(done)

    async def validate() -> None:
        while (batch := await read_queue.get()) is not done:
            await write_queue.put(await asyncio.to_thread(converter.prepare, batch))
        await write_queue.put(done)

    async def write() -> None:
        while (prepared := await write_queue.get()) is not done:
            if prepared.ids:
                await asyncio.to_thread(writer.write_batch, prepared.ids, prepared.columns)
            converter.result.written += len(prepared.ids)
            progress(prepared.rows, len(prepared.ids), prepared.payload_bytes)

    async with asyncio.TaskGroup() as group:
        for stage in (read, validate, write):
            group.create_task(stage())


def run_task(task: Task, batches: Iterator[RowBatch], options: ConvertOptions, output_dir: Path,
             progress: Progress = lambda rows, written, size: None) -> TaskResult:
    """Convert one task into its shard(s) in ``output_dir``. Raises on failure, leaving no
    finished-looking shard behind for this task."""
    started = time.perf_counter()
    with ThreadPoolExecutor(options.image_threads, thread_name_prefix="fastwds-image") as images:
        converter = TaskConverter(task, options, images)
        writer = ShardWriter(str(output_dir / f"{task.name}.tar"), maxcount=2**62,
                             maxsize=options.max_shard_bytes, fsync=options.fsync,
                             dali_index=options.dali_index, energon_index=options.energon_index)
        try:
            asyncio.run(_run_pipeline(batches, converter, writer, progress))
        except BaseException:
            writer.abort()
            raise
        records = writer.close()
    result = converter.result
    result.shards = [{"name": r.name, "samples": r.num_samples, "bytes": r.size, "sha256": r.sha256}
                     for r in records]
    result.seconds = time.perf_counter() - started
    return result
