"""The state of a conversion in its output, read and written by the driver: whether the output
holds a run to resume (and with the same input and options), which tasks are finished, and
clearing an earlier run. A task is finished exactly when its record exists."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastwds.convert.layout import (
    LOCK_FILE,
    MANIFEST_NAME,
    REJECTS_NAME,
    RUN_FILE,
    STATE_DIR,
    WIDS_INDEX_NAME,
    is_task_output,
    task_record,
)
from fastwds.convert.options import ConvertOptions
from fastwds.convert.output import Output
from fastwds.convert.plan import Plan, Task
from fastwds.energon import remove_energon_meta
from fastwds.hf import CARD_NAME, is_ours
from fastwds.errors import InvalidInputError, ResumeMismatchError

log = logging.getLogger("fastwds")


def wanted_run(plan: Plan, options: ConvertOptions) -> dict[str, Any]:
    """What ``run.json`` holds, normalised through JSON (tuples -> lists) as read back."""
    return json.loads(json.dumps({"plan": plan.fingerprint(), "options": options.output_options(),
                                  "tasks": [t.name for t in plan.tasks],
                                  # so that a refused resume can say which files changed
                                  "files": [[f.path, f.size, f.mtime_ns, f.etag] for f in plan.files]}, default=str))


def input_changes(before: list[list[Any]], now: list[list[Any]]) -> str:
    """Which input files were added, removed or modified between two runs' file lists."""
    old, new = ({path: rest for path, *rest in files} for files in (before, now))
    parts = []
    for word, names in (("added", sorted(new.keys() - old.keys())), ("removed", sorted(old.keys() - new.keys())),
                        ("modified", sorted(p for p in new.keys() & old.keys() if new[p] != old[p]))):
        if names:
            more = f" and {len(names) - 3:,} more" if len(names) > 3 else ""
            parts.append(f"{word} {', '.join(names[:3])}{more}")
    return "; ".join(parts) or "the same files, cut into other tasks"


def prepare_output(output: Output, plan: Plan, options: ConvertOptions, resume: bool, overwrite: bool,
                   session: str) -> bool:
    """Decide what to do with an existing output (the caller holds its run lock), and start this
    run's session. Returns True when resuming."""
    wanted = wanted_run(plan, options)
    resuming = False
    if output.exists(RUN_FILE):
        previous = json.loads(output.read_text(RUN_FILE))
        if overwrite:
            clear_output(output, previous)
        elif not resume:
            raise InvalidInputError(f"{output.location} already holds a fastwds run (finished or interrupted); "
                                    "pass --resume to finish it, or --overwrite to start over")
        else:
            if previous["options"] != wanted["options"]:
                changed = sorted(k for k in wanted["options"] if previous["options"].get(k) != wanted["options"][k])
                raise ResumeMismatchError(f"cannot resume {output.location}: options differ from the earlier "
                                          f"run ({', '.join(changed)}); use the same options, or --overwrite")
            if previous["plan"] != wanted["plan"]:
                what = (input_changes(previous["files"], wanted["files"]) if "files" in previous
                        else "files added, removed or modified")  # a run.json of an earlier version
                raise ResumeMismatchError(f"cannot resume {output.location}: the input changed since the "
                                          f"earlier run ({what}); use --overwrite to start over")
            resuming = True
    elif resume:
        log.info("%s: nothing to resume, starting a new run", output.location)
    if not resuming:
        # Files with our names that no fastwds run of this output wrote are not ours to replace.
        names = output.list()
        foreign = [name for task in plan.tasks for name in names if is_task_output(name, task.name)]
        if CARD_NAME in names and not is_ours(output.read_text(CARD_NAME)):
            foreign.append(CARD_NAME)
        if foreign:
            raise InvalidInputError(f"{output.location} already has {', '.join(foreign[:3])}"
                                    f"{' and more' if len(foreign) > 3 else ''}, not written by a fastwds run "
                                    "there; choose an empty folder or move those files")
    # run.json first: records then always belong to a run that --resume can finish. A new session
    # each run: attempts of an earlier run, should any still live, stop publishing.
    output.write_text(RUN_FILE, json.dumps({**wanted, "session": session}, indent=2))
    return resuming


def clear_output(output: Output, previous: dict[str, Any]) -> None:
    """Remove what an earlier fastwds run wrote (only that): the files of every task it planned
    (published whole, finished or not), its dataset files and its state, but the run lock and
    attempts' staging (see commit.remove_dead_attempts)."""
    planned = previous.get("tasks") or sorted(output.recorded_tasks())
    names = output.list()
    output.delete([name for name in names for task in planned if is_task_output(name, task)]
                  + [name for name in (MANIFEST_NAME, REJECTS_NAME, WIDS_INDEX_NAME) if name in names]
                  + ([CARD_NAME] if CARD_NAME in names and is_ours(output.read_text(CARD_NAME)) else []))
    remove_energon_meta(output)
    state = [f"{STATE_DIR}/{name}" for name in output.list(STATE_DIR)]
    output.delete([name for name in state if name != LOCK_FILE and not name.startswith(f"{STATE_DIR}/attempts/")])


def read_record(output: Output, task: Task) -> dict[str, Any]:
    return json.loads(output.read_text(task_record(task.name)))


def missing_shards(records: dict[str, dict[str, Any]], present: set[str]) -> dict[str, list[str]]:
    """The finished tasks (name: record) whose shards are no longer among ``present``, with the
    names gone: a resume converts them again instead of finishing a manifest that lists files
    that are gone."""
    missing = {}
    for name, record in records.items():
        if gone := [shard["name"] for shard in record["shards"] if shard["name"] not in present]:
            missing[name] = gone
    return missing


def write_record(output: Output, task: Task, record: dict[str, Any]) -> None:
    """The task's last write: from here on ``--resume`` treats the task as finished."""
    output.write_text(task_record(task.name), json.dumps(record, ensure_ascii=False))
