"""One task, start to finish, wherever an engine runs it: read, validate and encode, write its
shard(s), record it as finished. Depends on nothing but its arguments, so it runs in any process
or on any machine that sees the input and the output."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

from fastwds.convert.commit import Attempt
from fastwds.convert.output import open_output
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
    output_dir: str  # a local folder or an s3:// URL
    session: str  # the run's session: an attempt of an older run never publishes (see commit.py)


def execute_task(job: TaskJob, report: Callable[[str, int, int, int], None]) -> dict[str, Any]:
    """Run one attempt at a task: stage its shards, publish them, record the task as finished;
    returns its record. ``report(task, rows, written, bytes)`` receives the attempt's running
    totals. Any number of attempts of one task may run at once (see commit.py)."""
    source = get_source(job.source)
    output = open_output(job.output_dir)
    totals = [0, 0, 0]

    def progress(rows: int, written: int, size: int) -> None:
        totals[0] += rows
        totals[1] += written
        totals[2] += size
        report(job.task.name, *totals)

    report(job.task.name, 0, 0, 0)  # a retry starts its count again
    with Attempt(output, job.task.name, job.session) as attempt:
        with ThreadPoolExecutor(job.options.task_threads, thread_name_prefix="fastwds-work") as executor:
            converter = source.make_converter(job.task, job.options, executor)
            batches = source.read_task(job.input_root, job.task, job.options)
            result = run_task(job.task, batches, converter, job.options, attempt.dir, progress=progress)
        # Shallow: its lists are the result's own (dataclasses.asdict deep-copied every Energon
        # index entry and reject, ~50 ms per 1,000 samples with the GIL held).
        record = {field.name: getattr(result, field.name) for field in fields(result)}
        attempt.publish()
        attempt.check_current()
        write_record(output, job.task, record)
    return record
