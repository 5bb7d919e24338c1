"""The state of a conversion in its output folder, read and written by the driver: whether the
folder holds a run to resume (and with the same input and options), which tasks are finished, and
clearing an earlier run. A task is finished exactly when its record exists."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from fastwds.convert.layout import (
    ATTEMPTS_DIR,
    LOCK_FILE,
    MANIFEST_NAME,
    REJECTS_NAME,
    WIDS_INDEX_NAME,
    run_file,
    state_dir,
    task_outputs,
    task_record_path,
    tasks_dir,
)
from fastwds.convert.options import ConvertOptions
from fastwds.convert.plan import Plan, Task
from fastwds.durable import write_text_atomically
from fastwds.energon import remove_energon_meta
from fastwds.errors import InvalidInputError, ResumeMismatchError

log = logging.getLogger("fastwds")


def wanted_run(plan: Plan, options: ConvertOptions) -> dict[str, Any]:
    """What ``run.json`` holds, normalised through JSON (tuples -> lists) as read back."""
    return json.loads(json.dumps({"plan": plan.fingerprint(), "options": options.output_options(),
                                  "tasks": [t.name for t in plan.tasks]}, default=str))


def prepare_output(output_dir: Path, plan: Plan, options: ConvertOptions, resume: bool, overwrite: bool,
                   session: str) -> bool:
    """Decide what to do with an existing output folder (the caller holds its run lock), and
    start this run's session. Returns True when resuming."""
    wanted = wanted_run(plan, options)
    resuming = False
    if run_file(output_dir).exists():
        previous = json.loads(run_file(output_dir).read_text())
        if overwrite:
            clear_output(output_dir, previous)
        elif not resume:
            raise InvalidInputError(f"{output_dir} already holds a fastwds run (finished or interrupted); "
                                    "pass --resume to finish it, or --overwrite to start over")
        else:
            if previous["options"] != wanted["options"]:
                changed = sorted(k for k in wanted["options"] if previous["options"].get(k) != wanted["options"][k])
                raise ResumeMismatchError(f"cannot resume {output_dir}: options differ from the interrupted "
                                          f"run ({', '.join(changed)}); use the same options, or --overwrite")
            if previous["plan"] != wanted["plan"]:
                raise ResumeMismatchError(f"cannot resume {output_dir}: the input changed since the interrupted "
                                          "run (files added, removed or modified); use --overwrite to start over")
            resuming = True
    elif resume:
        log.info("%s: nothing to resume, starting a new run", output_dir)
    if not resuming:
        # Files with our names that no fastwds run of this folder wrote are not ours to replace.
        foreign = [p.name for t in plan.tasks for p in task_outputs(output_dir, t.name)]
        if foreign:
            raise InvalidInputError(f"{output_dir} already has {', '.join(foreign[:3])}"
                                    f"{' and more' if len(foreign) > 3 else ''}, not written by a fastwds run "
                                    "there; choose an empty folder or move those files")
    # run.json first: a tasks folder then always means a run that --resume can finish. A new
    # session each run: attempts of an earlier run, should any still live, stop publishing.
    state_dir(output_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomically(run_file(output_dir), json.dumps({**wanted, "session": session}, indent=2))
    tasks_dir(output_dir).mkdir(exist_ok=True)
    return resuming


def clear_output(output_dir: Path, previous: dict[str, Any]) -> None:
    """Remove what an earlier fastwds run wrote (only that): the files of every task it planned
    (published whole, finished or not), its dataset files and its state, but the run lock."""
    for task_name in previous.get("tasks") or [p.stem for p in tasks_dir(output_dir).glob("*.json")]:
        remove_task_outputs(output_dir, task_name)
    for name in (MANIFEST_NAME, REJECTS_NAME, WIDS_INDEX_NAME):
        (output_dir / name).unlink(missing_ok=True)
    remove_energon_meta(output_dir)
    for entry in state_dir(output_dir).iterdir():
        if entry.name in (LOCK_FILE, ATTEMPTS_DIR):  # attempts: see commit.remove_dead_attempts
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def remove_task_outputs(output_dir: Path, task_name: str) -> None:
    for path in task_outputs(output_dir, task_name):
        path.unlink()


def is_finished(output_dir: Path, task: Task) -> bool:
    return task_record_path(output_dir, task.name).exists()


def read_record(output_dir: Path, task: Task) -> dict[str, Any]:
    return json.loads(task_record_path(output_dir, task.name).read_text())


def write_record(output_dir: Path, task: Task, record: dict[str, Any]) -> None:
    """The task's last write: from here on ``--resume`` treats the task as finished."""
    write_text_atomically(task_record_path(output_dir, task.name), json.dumps(record, ensure_ascii=False))
