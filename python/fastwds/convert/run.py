"""Run a plan: prepare the output folder (resume rules, see ``state``), run the pending tasks on an
engine, then write what spans all tasks exactly once: the source's dataset files, rejects.jsonl,
the wids index and, last, manifest.json."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from fastwds.convert.commit import RunLock, new_session, remove_dead_attempts
from fastwds.convert.engines import get_engine
from fastwds.convert.execute import TaskJob
from fastwds.convert.layout import FINISH_STAGING_DIR, REJECTS_NAME, WIDS_INDEX_NAME, state_dir
from fastwds.convert.manifest import build_manifest, write_manifest
from fastwds.convert.options import ConvertOptions
from fastwds.convert.plan import Plan
from fastwds.convert.state import is_finished, prepare_output, read_record
from fastwds.durable import fsync_directory, write_text_atomically
from fastwds.errors import NothingWrittenError
from fastwds.indexes import write_wids_index
from fastwds.progress import ProgressReporter
from fastwds.reasons import check_reason
from fastwds.sources import get_source

log = logging.getLogger("fastwds")


def convert(plan: Plan, output_dir: str | os.PathLike, options: ConvertOptions, *, command: str,
            resume: bool = False, overwrite: bool = False, show_progress: bool = True,
            engine: str = "local", engine_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``plan`` into ``output_dir``; returns the manifest. Holds the folder's run lock
    throughout (see commit.py): a second run on the same folder is refused."""
    started = time.perf_counter()
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    fresh = not state_dir(output).exists()
    with RunLock(output):
        session = new_session()
        try:
            resumed = prepare_output(output, plan, options, resume, overwrite, session)
        except BaseException:
            if fresh:  # refused before starting: leave the folder as it was
                shutil.rmtree(state_dir(output), ignore_errors=True)
            raise
        if removed := remove_dead_attempts(output):
            log.info("removed the staging files of %d attempt(s) of an earlier run", removed)
        pending = [t for t in plan.tasks if not is_finished(output, t)]
        if resumed:
            log.info("resuming: %d of %d tasks already finished", len(plan.tasks) - len(pending), len(plan.tasks))
        progress = ProgressReporter(sum(t.num_rows for t in pending), enabled=show_progress)
        jobs = [TaskJob(plan.source, task, plan.input_root, options, str(output), session) for task in pending]
        settings = dict(engine_settings or {})
        if engine == "local":
            settings.setdefault("num_workers", options.num_workers)
        elif engine == "ray":  # nodes must decode and encode images alike when images are decoded
            settings.setdefault("check_images", options.verify_images == "full" or options.reencode is not None)
        try:
            get_engine(engine, **settings).run(jobs, progress.task_totals)
        except BaseException as error:
            progress.close()
            remove_dead_attempts(output)  # the engine's workers are stopped: tidy their staging
            if isinstance(error, KeyboardInterrupt):
                log.error("interrupted: finished shards are kept; run again with --resume to complete")
            raise
        progress.show()
        progress.close()
        remove_dead_attempts(output)  # attempts whose worker died and whose task was retried
        records = [read_record(output, t) for t in plan.tasks]
        manifest = finalize(output, plan, options, records, command, time.perf_counter() - started, resumed,
                            engine)
    if manifest["totals"]["rows"] and not manifest["totals"]["samples"]:
        raise NothingWrittenError(nothing_written_message(manifest, output), manifest)
    return manifest


def nothing_written_message(manifest: dict[str, Any], output: Path) -> str:
    reasons = sorted(manifest["invalid_by_reason"].items(), key=lambda item: -item[1])
    top = ", ".join(f"{reason}: {count:,}" for reason, count in reasons[:3])
    return (f"every one of the {manifest['totals']['rows']:,} input rows was rejected ({top}); no shard was "
            f"written. The reasons, row by row: {output / REJECTS_NAME}")


def finalize(output: Path, plan: Plan, options: ConvertOptions, records: list[dict], command: str,
             elapsed: float, resumed: bool, engine: str = "local") -> dict[str, Any]:
    source = get_source(plan.source)
    staging = state_dir(output) / FINISH_STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    finish = source.finish(output, plan, options, records, staging)
    for relative in finish.files:  # in the order the source gives: a completion marker goes last
        target = output / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / relative, target)
        fsync_directory(target.parent)
    shutil.rmtree(staging)
    rejects = [r for record in records for r in record["rejects"]] + finish.rejects
    write_text_atomically(output / REJECTS_NAME, "".join(_json_line(r) for r in rejects))
    manifest = build_manifest(command, plan, options.output_options(), records, elapsed, resumed)
    manifest["engine"] = engine  # of this run: a run may resume on another engine, with the same bytes
    if finish.stats:
        manifest["stats"] = finish.stats
    manifest.update(finish.sections)
    write_wids_index([(s["name"], s["samples"], s["bytes"]) for s in manifest["shards"]],
                     output / WIDS_INDEX_NAME, name=output.resolve().name)
    manifest["indexes"] = {"wids": WIDS_INDEX_NAME, "rejects": REJECTS_NAME}
    write_manifest(output, manifest)
    return manifest


def _json_line(reject: dict) -> str:
    check_reason(reject["reason"])  # a code no one registered is a bug: fail before writing it
    return json.dumps(reject, ensure_ascii=False) + "\n"
