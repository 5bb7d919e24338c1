"""One task, start to finish, wherever an engine runs it: read, validate and encode, write its
shard(s), record it as finished. Depends on nothing but its arguments, so it runs in any process
or on any machine that sees the input and the output."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastwds.convert.options import ConvertOptions
from fastwds.convert.pipeline import run_task
from fastwds.convert.plan import Task
from fastwds.convert.state import write_record
from fastwds.sources import get_source


@dataclass(frozen=True)
class TaskJob:
    """Everything a worker needs to run one task (picklable: it crosses process and machine
    boundaries)."""

    source: str  # registered source name
    task: Task
    input_root: str
    options: ConvertOptions
    output_dir: str


def execute_task(job: TaskJob, report: Callable[[str, int, int, int], None]) -> dict[str, Any]:
    """Run one task and record it as finished; returns its record. ``report(task, rows, written,
    bytes)`` receives the task's running totals."""
    source = get_source(job.source)
    output = Path(job.output_dir)
    totals = [0, 0, 0]

    def progress(rows: int, written: int, size: int) -> None:
        totals[0] += rows
        totals[1] += written
        totals[2] += size
        report(job.task.name, *totals)

    with ThreadPoolExecutor(job.options.image_threads, thread_name_prefix="fastwds-work") as executor:
        converter = source.make_converter(job.task, job.options, executor)
        batches = source.read_task(job.input_root, job.task, job.options)
        result = run_task(job.task, batches, converter, job.options, output, progress=progress)
    record = asdict(result)
    write_record(output, job.task, record)
    return record
