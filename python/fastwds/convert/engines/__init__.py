"""Engines run a list of tasks: the seam between planning and execution. Every engine runs
``fastwds.convert.execute.execute_task`` on each job and reports progress; the driver does the
rest (the output folder, resume, the manifest). An engine is one module here, registered in
``ENGINES`` (see ARCHITECTURE.md)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol

from fastwds.convert.execute import TaskJob
from fastwds.errors import FastwdsError

class TaskProgress(Protocol):
    """Where an engine reports (``fastwds.progress.ProgressReporter``)."""

    def task_totals(self, task: str, rows: int, written: int, size: int) -> None:
        """A task's running totals of its current attempt (a retry replaces its count, never adds)."""

    def task_finished(self, task: str, shards: list[dict]) -> None:
        """The task is recorded: its shards (their records: name, samples, bytes, ...) are published."""

ENGINES: dict[str, str] = {
    "local": "fastwds.convert.engines.local:LocalEngine",
    "ray": "fastwds.convert.engines.ray:RayEngine",
}


class TaskFailed(FastwdsError):
    """A task failed (the message names the task and the cause)."""


class Engine(Protocol):
    name: str

    def run(self, jobs: Sequence[TaskJob], progress: TaskProgress) -> None:
        """Run every job; return when all are finished, raise ``TaskFailed`` naming a task that
        failed. Finished tasks have written their records."""


def get_engine(name: str, **settings: Any) -> Engine:
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)(**settings)
