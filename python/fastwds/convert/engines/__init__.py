"""Engines run a list of tasks: the seam between planning and execution. Every engine runs
``fastwds.convert.execute.execute_task`` on each job and reports progress; the driver does the
rest (the output folder, resume, the manifest). An engine is one module here, registered in
``ENGINES`` (see ARCHITECTURE.md)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from fastwds.convert.execute import TaskJob
from fastwds.errors import FastwdsError

# (task name, rows done, rows written, bytes written): a task's running totals of its current
# attempt, so a retried task replaces its own count rather than adding to it.
TaskProgress = Callable[[str, int, int, int], None]

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
