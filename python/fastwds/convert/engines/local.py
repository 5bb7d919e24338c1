"""The local engine: tasks in this process (one worker) or in a pool of worker processes."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import traceback
from collections.abc import Sequence
from typing import Any

from fastwds.convert.engines import TaskFailed, TaskProgress
from fastwds.convert.execute import TaskJob, execute_task
from fastwds.errors import FastwdsError

# Progress from worker processes reaches the parent through this queue (set per worker).
_progress_queue: Any = None


def _init_worker(progress_queue: Any, polars_threads: int) -> None:
    global _progress_queue
    _progress_queue = progress_queue
    os.environ.setdefault("POLARS_MAX_THREADS", str(polars_threads))


def _report_to_parent(task: str, rows: int, written: int, size: int) -> None:
    _progress_queue.put((task, rows, written, size))


def _execute_in_worker(job: TaskJob) -> dict[str, Any]:
    try:
        return execute_task(job, _report_to_parent)
    except (FastwdsError, OSError, ValueError) as error:
        # Only plain exceptions cross the process boundary reliably.
        raise TaskFailed(f"task {job.task.name}: {error}") from None
    except Exception:
        # Anything else is a bug: keep the worker's traceback for the report.
        raise TaskFailed(f"task {job.task.name} failed unexpectedly (please report):\n{traceback.format_exc()}") from None


class LocalEngine:
    name = "local"

    def __init__(self, num_workers: int = 1) -> None:
        self.num_workers = num_workers

    def run(self, jobs: Sequence[TaskJob], progress: TaskProgress) -> None:
        if self.num_workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                execute_task(job, progress)
            return
        context = multiprocessing.get_context("spawn")  # fork is unsafe once polars' threads exist
        progress_queue = context.Queue()
        workers = min(self.num_workers, len(jobs))
        polars_threads = max(1, (os.cpu_count() or 1) // workers)
        # Ctrl-C is the parent's to handle: it stops the workers and cleans up after them. Workers
        # start with SIGINT ignored (inherited through exec), so none can die mid-start-up either.
        parent_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            pool = context.Pool(workers, initializer=_init_worker, initargs=(progress_queue, polars_threads))
        finally:
            signal.signal(signal.SIGINT, parent_handler)
        try:
            results = pool.imap_unordered(_execute_in_worker, jobs)
            remaining = len(jobs)
            while remaining:
                try:
                    results.next(timeout=0.05)
                    remaining -= 1
                except multiprocessing.TimeoutError:
                    pass
                _drain(progress_queue, progress)
            _drain(progress_queue, progress)
            pool.close()
        except BaseException:
            pool.terminate()  # unfinished tasks leave only .partial files; cleaned on resume
            pool.join()
            raise
        pool.join()


def _drain(progress_queue: Any, progress: TaskProgress) -> None:
    while True:
        try:
            progress(*progress_queue.get_nowait())
        except queue.Empty:
            return
