"""Conversion options. ``output_options()`` are the ones that change the bytes written: a resumed
run must use the same ones (the others, like worker counts, may change between runs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

ON_INVALID = ("skip", "keep", "fail")


@dataclass(frozen=True)
class ConvertOptions:
    max_samples_per_shard: int = 10_000
    max_shard_bytes: int = 3_000_000_000
    on_invalid: Literal["skip", "keep", "fail"] = "skip"
    verify_images: Literal["fast", "full"] = "fast"
    # Images with more pixels are rejected from their headers: Pillow, in the training loader,
    # refuses to open anything above this (DecompressionBombError).
    max_image_pixels: int = 178_956_970
    reencode: Literal["jpeg"] | None = None
    quality: int = 90
    max_side: int | None = None
    dali_index: bool = False
    energon_index: bool = False
    # The source's own options (a frozen dataclass: ParquetColumns, NpzOptions, ...).
    source_options: Any = None
    limit: int | None = None
    # Execution only: these do not change the output.
    num_workers: int = 1
    # Threads a task's converter uses for CPU work that releases the GIL (image checks, NPZ
    # volumes inflated and cast): one task keeps about this many cores busy.
    task_threads: int = 2
    batch_rows: int = 256
    # Batches each pipeline queue holds: memory is about (2 * queue_batches + 2) batches per task.
    queue_batches: int = 2
    fsync: bool = True

    def output_options(self) -> dict[str, Any]:
        options = asdict(self)
        for execution_only in ("num_workers", "task_threads", "batch_rows", "queue_batches", "fsync"):
            options.pop(execution_only)
        return options
