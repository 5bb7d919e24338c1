"""Run a plan: prepare the output folder (resume rules, see ``state``), run the pending tasks on an
engine, then write what spans all tasks exactly once: the source's dataset files, rejects.jsonl,
the wids index and, last, manifest.json."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from typing import Any

from fastwds import hf, storage
from fastwds.convert.commit import new_session, remove_dead_attempts
from fastwds.convert.engines import get_engine
from fastwds.convert.execute import TaskJob
from fastwds.convert.layout import MANIFEST_NAME, REJECTS_NAME, STATE_DIR, WIDS_INDEX_NAME
from fastwds.convert.manifest import build_manifest
from fastwds.convert.options import ConvertOptions
from fastwds.convert.output import Output, open_output
from fastwds.convert.plan import Plan, changed_files
from fastwds.convert.state import missing_shards, prepare_output, read_record
from fastwds.errors import InputChangedError, InvalidInputError, NothingWrittenError
from fastwds.indexes import wids_document
from fastwds.progress import ProgressReporter
from fastwds.reasons import check_reason
from fastwds.sources import get_source

log = logging.getLogger("fastwds")


def convert(plan: Plan, output_dir: str | os.PathLike, options: ConvertOptions, *, command: str,
            resume: bool = False, overwrite: bool = False, show_progress: bool = True,
            engine: str = "local", engine_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``plan`` into ``output_dir`` (a folder or an s3:// URL); returns the manifest. Holds
    the output's run lock throughout (see commit.py): a second run on the same output is refused."""
    started = time.perf_counter()
    if not any(task.num_rows for task in plan.tasks):  # before anything is written: 0 samples is no success
        where = storage.join(plan.input_root, plan.files[0].path) if len(plan.files) == 1 else plan.input_root
        raise InvalidInputError(f"{where}: the input has no rows ({len(plan.files):,} file(s), 0 rows); "
                                "nothing to convert")
    created = not storage.is_url(output_dir) and not os.path.exists(output_dir)
    output = open_output(output_dir)
    fresh = not output.list(STATE_DIR)

    def leave_as_it_was() -> None:
        """A run that wrote nothing removes its state (and the folder it made, if still empty)."""
        output.delete([STATE_DIR])
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(output_dir)

    with output.lock(), contextlib.closing(output):
        session = new_session()
        try:
            resumed = prepare_output(output, plan, options, resume, overwrite, session)
        except BaseException:
            if fresh:  # refused before starting
                leave_as_it_was()
            raise
        if removed := remove_dead_attempts(output):
            log.info("removed the staging files of %d attempt(s) of an earlier run", removed)
        if removed := output.remove_temporaries():
            log.info("removed %d temporary file(s) an earlier run left", removed)
        finished = output.recorded_tasks()
        # The records of tasks finished by earlier runs, read once (a GET each in a bucket): for
        # the check below and for the manifest.
        earlier = {t.name: read_record(output, t) for t in plan.tasks if t.name in finished} if resumed else {}
        for name, gone in missing_shards(earlier, set(output.list())).items():
            # A finished task whose shard was deleted since is converted again.
            log.warning("task %s had finished, but %s %s gone from the output: converting it again", name,
                        ", ".join(gone), "is" if len(gone) == 1 else "are")
            finished.discard(name)
            del earlier[name]
        pending = [t for t in plan.tasks if t.name not in finished]
        if resumed:
            log.info("resuming: %d of %d tasks already finished", len(plan.tasks) - len(pending), len(plan.tasks))
        progress = ProgressReporter(sum(t.num_rows for t in pending), enabled=show_progress, total_tasks=len(pending))
        jobs = [TaskJob(plan.source, task, plan.input_root, options, output.location, session) for task in pending]
        settings = dict(engine_settings or {})
        if engine == "local":
            settings.setdefault("num_workers", options.num_workers)
        elif engine == "ray":  # nodes must decode and encode images alike when images are decoded
            settings.setdefault("check_images", options.verify_images == "full" or options.reencode is not None)
            if not storage.is_url(plan.input_root):  # every node must see the same local files
                settings.setdefault("input_files", [f for f in plan.files if not storage.is_url(f.path)])
        log.debug("plan: %d task(s), %d pending, %s rows to convert", len(plan.tasks), len(pending),
                  f"{sum(t.num_rows for t in pending):,}")
        try:
            get_engine(engine, **settings).run(jobs, progress)
        except BaseException as error:
            progress.close()
            remove_dead_attempts(output)  # the engine's workers are stopped: tidy their staging
            if fresh and not output.recorded_tasks() and not any(name.endswith((".tar", ".idx"))
                                                                 for name in output.list()):
                # Nothing ran (a cluster that cannot be reached, a node refused) or nothing was
                # published: the same command can simply run again.
                leave_as_it_was()
            if isinstance(error, KeyboardInterrupt):
                finished_now = output.recorded_tasks()
                raise ConversionInterrupted(len(finished_now), len(plan.tasks), progress.rows,
                                            sum(t.num_rows for t in plan.tasks)) from None
            raise
        finally:
            if aborted := output.abort_uploads():  # what killed uploads of dead attempts left
                log.info("aborted %d pending multipart upload(s) of dead attempts", aborted)
        progress.show()
        progress.close()
        remove_dead_attempts(output)  # attempts whose worker died and whose task was retried
        if changed := changed_files(plan.input_root, plan.files):
            more = f" (and {len(changed) - 1:,} more)" if len(changed) > 1 else ""
            raise InputChangedError(f"{changed[0]}{more}: changed while it was being converted (its size or "
                                    "modification time, or ETag in a bucket, is not the plan's), so its shards "
                                    "may mix old and new rows; the run did not finish. Convert again with "
                                    "--overwrite once the input stays as it is.")
        records = [earlier[t.name] if t.name in earlier else read_record(output, t) for t in plan.tasks]
        manifest = finalize(output, plan, options, records, command, time.perf_counter() - started, resumed,
                            engine)
        done = {t.name for t in pending}
        manifest["this_run"] = {"rows": sum(t.num_rows for t in pending),
                                "bytes": sum(s["bytes"] for s in manifest["shards"] if s["task"] in done)}
    if manifest["totals"]["rows"] and not manifest["totals"]["samples"]:
        raise NothingWrittenError(nothing_written_message(manifest, output), manifest)
    return manifest


class ConversionInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run: how far it got (finished tasks are complete and kept)."""

    def __init__(self, finished: int, tasks: int, rows: int, total_rows: int) -> None:
        super().__init__(finished, tasks, rows, total_rows)
        self.finished, self.tasks, self.rows, self.total_rows = finished, tasks, rows, total_rows

    def progress(self) -> str:
        if not self.finished:
            return (f"no task had finished ({self.rows:,} of {self.total_rows:,} rows were read); nothing is "
                    "published yet")
        return (f"{self.finished:,} of {self.tasks:,} tasks had finished and their shards are complete and kept "
                f"({self.rows:,} rows read in this run)")


def nothing_written_message(manifest: dict[str, Any], output: Output) -> str:
    reasons = sorted(manifest["invalid_by_reason"].items(), key=lambda item: -item[1])
    top = ", ".join(f"{reason}: {count:,}" for reason, count in reasons[:3])
    return (f"every one of the {manifest['totals']['rows']:,} input rows was rejected ({top}); no shard was "
            f"written. The reasons, row by row: {output.location}/{REJECTS_NAME}")


def finalize(output: Output, plan: Plan, options: ConvertOptions, records: list[dict], command: str,
             elapsed: float, resumed: bool, engine: str = "local") -> dict[str, Any]:
    source = get_source(plan.source)
    staging = output.staging_root().parent / "finish"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        finish = source.finish(output, plan, options, records, staging)
        for relative in finish.files:  # in the order the source gives: a completion marker goes last
            output.publish(staging / relative, relative)
        output.flush()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    rejects = [r for record in records for r in record["rejects"]] + finish.rejects
    output.write_text(REJECTS_NAME, "".join(_json_line(r) for r in rejects))
    manifest = build_manifest(command, plan, options.output_options(), records, elapsed, resumed)
    manifest["engine"] = engine  # of this run: a run may resume on another engine, with the same bytes
    if finish.stats:
        manifest["stats"] = finish.stats
    manifest.update(finish.sections)
    members = sorted({member for record in records for member in record.get("members", [])})
    features = hf.feature_list(members)
    # Titled after the input, not the output folder: the same input gives the same bytes wherever it goes.
    title = plan.input_root.rstrip("/").replace(os.sep, "/").rsplit("/", 1)[-1] or "dataset"
    output.write_text(hf.CARD_NAME, hf.dataset_card(title, manifest["totals"]["samples"], features, command))
    manifest["hf"] = {"card": hf.CARD_NAME, "features": features}
    if features is None and len({tuple(r.get("members", [])) for r in records if r["written"]}) > 1:
        log.warning("HF datasets: the samples' members differ and include types it infers itself; "
                    "load_dataset takes its columns from the first samples only (fastwds verify lists them)")
    wids = wids_document([(s["name"], s["samples"], s["bytes"]) for s in manifest["shards"]], output.name)
    output.write_text(WIDS_INDEX_NAME, json.dumps(wids, indent=2) + "\n")
    manifest["indexes"] = {"wids": WIDS_INDEX_NAME, "rejects": REJECTS_NAME}
    output.write_text(MANIFEST_NAME, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def _json_line(reject: dict) -> str:
    check_reason(reject["reason"])  # a code no one registered is a bug: fail before writing it
    return json.dumps(reject, ensure_ascii=False) + "\n"
