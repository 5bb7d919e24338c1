"""Run a plan on this machine: check the output folder and resume rules, run the pending tasks
(in worker processes when asked), then write the manifest, rejects file and wids index.

State lives in ``OUTPUT_DIR/.fastwds/``: ``run.json`` (plan fingerprint and output options) and a
record per finished task under ``tasks/``. A task is finished exactly when its record exists: its
record is written after its shards are renamed into place, so a resumed run redoes any task
without one, after deleting whatever that task left behind.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import os
import queue
import re
import shutil
import signal
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastwds.convert.options import ConvertOptions
from fastwds.convert.pipeline import run_task
from fastwds.convert.plan import Plan, Task
from fastwds.errors import FastwdsError, InvalidInputError, ResumeMismatchError
from fastwds.indexes import write_text_atomically, write_wids_index
from fastwds.manifest import MANIFEST_NAME, build_manifest, write_manifest
from fastwds.progress import ProgressReporter

log = logging.getLogger("fastwds")

STATE_DIR = ".fastwds"
REJECTS_NAME = "rejects.jsonl"
WIDS_INDEX_NAME = "index.wids.json"


class TaskFailed(FastwdsError):
    """A task failed in a worker process (the message names the task and the cause)."""


def task_record_path(output_dir: Path, task: Task) -> Path:
    return output_dir / STATE_DIR / "tasks" / f"{task.name}.json"


def task_outputs(output_dir: Path, task_name: str) -> list[Path]:
    """Every file of one task: its shard, spill shards (``name-1.tar``), sidecar indexes and
    ``.partial`` files."""
    own = re.compile(rf"^{re.escape(task_name)}(-\d+)?\.(tar|idx)")
    return [entry for entry in output_dir.iterdir() if own.match(entry.name)]


def remove_task_outputs(output_dir: Path, task_name: str) -> None:
    for path in task_outputs(output_dir, task_name):
        path.unlink()


# Source kind -> module providing read_task(root, task, options) (an iterator or async iterator
# of batches) and make_converter(task, options, executor); optionally summarize(task_records)
# -> dict (added to the manifest as "stats") and finalize(output_dir, plan, options, manifest)
# (extra dataset files, e.g. Energon's .nv-meta). Imported on use, so each source's dependencies
# load only when that source runs.
SOURCES = {"parquet": "fastwds.sources.parquet"}
SOURCES["sft"] = "fastwds.sources.sft"
SOURCES["npz"] = "fastwds.sources.npz"


def execute_task(source: str, task: Task, plan_root: str, options: ConvertOptions, output_dir: str) -> dict[str, Any]:
    """Run one task and record it as finished. Depends on nothing but its arguments, so it can run
    in any process or on any machine that sees the input and output folders."""
    output = Path(output_dir)
    module = importlib.import_module(SOURCES[source])
    with ThreadPoolExecutor(options.image_threads, thread_name_prefix="fastwds-work") as executor:
        converter = module.make_converter(task, options, executor)
        batches = module.read_task(plan_root, task, options)
        result = run_task(task, batches, converter, options, output, progress=_report_progress)
    record = asdict(result)
    write_text_atomically(task_record_path(output, task), json.dumps(record, ensure_ascii=False))
    return record


# Progress from worker processes reaches the parent through this queue (set per worker).
_progress_queue: Any = None


def _report_progress(rows: int, written: int, size: int) -> None:
    if _progress_queue is not None:
        _progress_queue.put((rows, written, size))
    elif _local_progress is not None:
        _local_progress.update(rows, written, size)


_local_progress: ProgressReporter | None = None


def _init_worker(progress_queue: Any, polars_threads: int) -> None:
    global _progress_queue
    _progress_queue = progress_queue
    os.environ.setdefault("POLARS_MAX_THREADS", str(polars_threads))


def _execute_in_worker(args: tuple) -> dict[str, Any]:
    task = args[1]
    try:
        return execute_task(*args)
    except (FastwdsError, OSError, ValueError) as error:
        # Only plain exceptions cross the process boundary reliably.
        raise TaskFailed(f"task {task.name}: {error}") from None
    except Exception:
        # Anything else is a bug: keep the worker's traceback for the report.
        raise TaskFailed(f"task {task.name} failed unexpectedly (please report):\n{traceback.format_exc()}") from None


def check_output_dir(output_dir: Path, plan: Plan, options: ConvertOptions, resume: bool, overwrite: bool) -> bool:
    """Decide what to do with an existing output folder. Returns True when resuming."""
    run_path = output_dir / STATE_DIR / "run.json"
    # Compared with what run.json read back gives, so normalised through JSON (tuples -> lists).
    wanted = json.loads(json.dumps({"plan": plan.fingerprint(), "options": options.output_options()}, default=str))
    if run_path.exists():
        if overwrite:
            clear_output(output_dir)
        elif not resume:
            raise InvalidInputError(f"{output_dir} already holds a fastwds run (finished or interrupted); "
                                    "pass --resume to finish it, or --overwrite to start over")
        else:
            previous = json.loads(run_path.read_text())
            if previous["options"] != wanted["options"]:
                changed = sorted(k for k in wanted["options"]
                                 if previous["options"].get(k) != wanted["options"][k])
                raise ResumeMismatchError(f"cannot resume {output_dir}: options differ from the interrupted "
                                          f"run ({', '.join(changed)}); use the same options, or --overwrite")
            if previous["plan"] != wanted["plan"]:
                raise ResumeMismatchError(f"cannot resume {output_dir}: the input changed since the interrupted "
                                          "run (files added, removed or modified); use --overwrite to start over")
            return True
    elif resume:
        log.info("%s: nothing to resume, starting a new run", output_dir)
    # Files with our names that no fastwds run of this folder wrote are not ours to replace.
    foreign = [p.name for t in plan.tasks for p in task_outputs(output_dir, t.name)]
    if foreign:
        raise InvalidInputError(f"{output_dir} already has {', '.join(foreign[:3])}"
                                f"{' and more' if len(foreign) > 3 else ''}, not written by a fastwds run "
                                "there; choose an empty folder or move those files")
    # run.json first: a tasks folder then always means a run that --resume can finish.
    run_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(run_path, json.dumps(wanted, indent=2))
    (output_dir / STATE_DIR / "tasks").mkdir(exist_ok=True)
    return False


def clear_output(output_dir: Path) -> None:
    """Remove what an earlier fastwds run wrote (only that)."""
    state = output_dir / STATE_DIR
    for record_path in (state / "tasks").glob("*.json"):
        remove_task_outputs(output_dir, record_path.stem)
    for name in (MANIFEST_NAME, REJECTS_NAME, WIDS_INDEX_NAME):
        (output_dir / name).unlink(missing_ok=True)
    shutil.rmtree(state)


def run_tasks(tasks: list[Task], plan: Plan, options: ConvertOptions, output_dir: Path,
              progress: ProgressReporter) -> None:
    global _local_progress
    jobs = [(plan.source, task, plan.input_root, options, str(output_dir)) for task in tasks]
    if options.num_workers <= 1 or len(tasks) <= 1:
        _local_progress = progress
        try:
            for job in jobs:
                execute_task(*job)
        finally:
            _local_progress = None
        return
    context = multiprocessing.get_context("spawn")  # fork is unsafe once polars' threads exist
    progress_queue = context.Queue()
    workers = min(options.num_workers, len(tasks))
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
        pool.terminate()  # unfinished tasks leave only .partial files; cleaned below / on resume
        pool.join()
        for task in tasks:
            if not task_record_path(output_dir, task).exists():
                remove_task_outputs(output_dir, task.name)
        raise
    pool.join()


def _drain(progress_queue: Any, progress: ProgressReporter) -> None:
    while True:
        try:
            progress.update(*progress_queue.get_nowait())
        except queue.Empty:
            return


def convert(plan: Plan, output_dir: str | os.PathLike, options: ConvertOptions, *, command: str,
            resume: bool = False, overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Run ``plan`` into ``output_dir``; returns the manifest."""
    started = time.perf_counter()
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    resumed = check_output_dir(output, plan, options, resume, overwrite)
    pending = [t for t in plan.tasks if not task_record_path(output, t).exists()]
    if resumed:
        log.info("resuming: %d of %d tasks already finished", len(plan.tasks) - len(pending), len(plan.tasks))
        for task in pending:  # what the interrupted run left of its unfinished tasks
            remove_task_outputs(output, task.name)
    progress = ProgressReporter(sum(t.num_rows for t in pending), enabled=show_progress)
    try:
        run_tasks(pending, plan, options, output, progress)
    except KeyboardInterrupt:
        progress.close()
        log.error("interrupted: finished shards are kept; run again with --resume to complete")
        raise
    progress.show()
    progress.close()
    records = [json.loads(task_record_path(output, t).read_text()) for t in plan.tasks]
    return finalize(output, plan, options, records, command, time.perf_counter() - started, resumed)


def finalize(output: Path, plan: Plan, options: ConvertOptions, records: list[dict], command: str,
             elapsed: float, resumed: bool) -> dict[str, Any]:
    rejects = [json.dumps(r, ensure_ascii=False) + "\n" for record in records for r in record["rejects"]]
    write_text_atomically(output / REJECTS_NAME, "".join(rejects))
    manifest = build_manifest(command, plan, options.output_options(), records, elapsed, resumed)
    source = importlib.import_module(SOURCES[plan.source])
    if hasattr(source, "summarize"):
        manifest["stats"] = source.summarize(records)
    if hasattr(source, "finalize"):
        source.finalize(output, plan, options, manifest)
    write_wids_index([(s["name"], s["samples"], s["bytes"]) for s in manifest["shards"]],
                     output / WIDS_INDEX_NAME, name=output.resolve().name)
    manifest["indexes"] = {"wids": WIDS_INDEX_NAME, "rejects": REJECTS_NAME}
    write_manifest(output, manifest)
    return manifest
