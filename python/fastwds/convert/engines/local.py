"""The local engine: tasks in this process (one worker), or in worker processes on this machine.

Each worker process runs one task at a time and talks to the driver over its own pipe (the task
out; progress and the outcome back), so the driver always knows which task a worker is running.
A worker that dies (the out-of-memory killer's SIGKILL, a crash in native code) is noticed at
once through its process sentinel: its task is retried once in a fresh worker, and if that worker
dies too the job fails naming the task. Workers die with the driver (``PR_SET_PDEATHSIG`` on
Linux, a watchdog thread elsewhere), so a killed run leaves no orphan writing into the folder.
The stdlib pools offer neither: ``multiprocessing.Pool`` waits forever for a dead worker's task,
and ``ProcessPoolExecutor`` fails every pending task without saying which one died.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from typing import Any

from fastwds.convert.engines import TaskFailed, TaskProgress
from fastwds.convert.execute import TaskJob, execute_task
from fastwds.cores import available_cores
from fastwds.errors import FastwdsError

# Attempts a task gets when its worker process dies under it (a data error is never retried).
ATTEMPTS_ON_WORKER_DEATH = 2
log = logging.getLogger("fastwds")
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when the driver does, however the driver ends."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    else:  # no parent-death signal: watch for being re-parented
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="fastwds-parent-watch").start()
    if os.getppid() != parent_pid:  # the driver died before the signal was armed
        os._exit(1)


def _worker_main(conn: multiprocessing.connection.Connection, parent_pid: int, polars_threads: int) -> None:
    die_with_parent(parent_pid)
    os.environ.setdefault("POLARS_MAX_THREADS", str(polars_threads))

    def report(task: str, rows: int, written: int, size: int) -> None:
        conn.send(("progress", (task, rows, written, size)))

    while True:
        try:
            job: TaskJob = conn.recv()
        except EOFError:  # the driver closed the pipe: no more work
            return
        try:
            conn.send(("done", execute_task(job, report)["shards"]))
        except (FastwdsError, OSError, ValueError) as error:
            conn.send(("failed", f"task {job.task.name}: {error}"))
        except Exception:  # a bug: keep the worker's traceback for the report
            conn.send(("failed", f"task {job.task.name} failed unexpectedly (please report):\n{traceback.format_exc()}"))


def describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (what the out-of-memory killer sends)" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with status {exitcode}"


class Worker:
    """One worker process and its pipe; runs one job at a time."""

    def __init__(self, context: Any, polars_threads: int) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, os.getpid(), polars_threads),
                                       name="fastwds-worker", daemon=True)
        self.process.start()
        child.close()
        self.job: TaskJob | None = None

    def start(self, job: TaskJob) -> None:
        self.job = job
        self.conn.send(job)

    def stop(self) -> None:
        self.conn.close()
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class LocalEngine:
    name = "local"

    def __init__(self, num_workers: int = 1) -> None:
        self.num_workers = num_workers

    def run(self, jobs: Sequence[TaskJob], progress: TaskProgress) -> None:
        if self.num_workers <= 1 or len(jobs) <= 1:
            log.debug("%d task(s), one at a time in this process", len(jobs))
            for job in jobs:
                progress.task_finished(job.task.name, execute_task(job, progress.task_totals)["shards"])
            return
        context = multiprocessing.get_context("spawn")  # fork is unsafe once polars' threads exist
        count = min(self.num_workers, len(jobs))
        polars_threads = max(1, available_cores() // count)
        log.debug("%d task(s) on %d worker processes", len(jobs), count)
        # Ctrl-C is the driver's to handle. Workers start with SIGINT ignored (kept through exec),
        # so none dies mid-task from the terminal's Ctrl-C; the driver stops them.
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            workers = [Worker(context, polars_threads) for _ in range(count)]
        finally:
            signal.signal(signal.SIGINT, handler)
        try:
            self._run(jobs, workers, context, polars_threads, progress)
        finally:
            for worker in workers:
                worker.stop()

    def _run(self, jobs: Sequence[TaskJob], workers: list[Worker], context: Any, polars_threads: int,
             progress: TaskProgress) -> None:
        pending = deque(jobs)
        deaths: dict[str, list[str]] = {}
        while pending or any(w.job is not None for w in workers):
            for worker in workers:
                if worker.job is None and pending:
                    worker.start(pending.popleft())
            busy = [w for w in workers if w.job is not None]
            ready = multiprocessing.connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for index, worker in enumerate(workers):
                if worker.job is None or not (worker.conn in ready or worker.process.sentinel in ready):
                    continue
                if self._read_messages(worker, progress):
                    continue
                # The worker died with its task unfinished.
                job = worker.job
                worker.process.join()
                deaths.setdefault(job.task.name, []).append(f"pid {worker.process.pid} "
                                                            f"{describe_exit(worker.process.exitcode)}")
                worker.stop()
                if len(deaths[job.task.name]) >= ATTEMPTS_ON_WORKER_DEATH:
                    raise TaskFailed(f"task {job.task.name}: its worker process died {len(deaths[job.task.name])} "
                                     f"times ({'; '.join(deaths[job.task.name])}); finished tasks are kept, "
                                     "--resume retries it")
                pending.appendleft(job)  # retried first, in a fresh worker
                handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
                try:
                    workers[index] = Worker(context, polars_threads)
                finally:
                    signal.signal(signal.SIGINT, handler)

    @staticmethod
    def _read_messages(worker: Worker, progress: TaskProgress) -> bool:
        """Handle what the worker sent; False when it is dead with its task unfinished."""
        try:
            while worker.conn.poll():
                kind, payload = worker.conn.recv()
                if kind == "progress":
                    progress.task_totals(*payload)
                elif kind == "done":
                    progress.task_finished(worker.job.task.name, payload)
                    worker.job = None
                    return True
                else:
                    raise TaskFailed(payload)
        except (EOFError, OSError):
            return False
        return worker.process.is_alive()
