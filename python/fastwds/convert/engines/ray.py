"""The Ray engine: every task a Ray core task on a cluster that sees the input and the output.

Not Ray Data: its webdataset sink names files with a fresh uuid per write, re-blocks rows on the
fly and writes straight to the final path, so no run can be reproduced or resumed. Here each task
runs ``execute_task`` exactly as the local engine does, so the bytes are the same on every engine.

- Tasks are submitted in plan order with a bounded number in flight (``ray.wait``).
- Ray retries a task whose worker or node died (``max_retries``); an attempt of a task may
  overlap an earlier one (a retry while the first still runs, a straggler's duplicate). The
  commit protocol (``fastwds.convert.commit``) makes that safe: attempts stage under names of
  their own, publishing is idempotent, the task record is the last write.
- Data errors (bad input, ``--on-invalid fail``) are not retried: the job fails once, naming the
  task and the file. Only transient I/O errors (timeouts, EIO, stale handles) are retried.
- A task running far longer than its finished peers gets one duplicate attempt; the first to
  finish wins and the other is cancelled.
- Before anything is submitted, every node runs a probe: the same fastwds version and ``_core``
  build, the same Pillow and libjpeg when images are decoded, the input readable and the output
  folder the same folder the driver sees. A node that fails is named and the job refused.
- Progress goes from the tasks to a small actor pinned to the driver's node (unpinned, it could
  land on a node that dies); an attempt's counts replace its task's, never add to them.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import socket
import statistics
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from fastwds.convert.engines import TaskFailed, TaskProgress
from fastwds.convert.execute import TaskJob, execute_task
from fastwds import storage
from fastwds.convert.layout import PROBES_DIR
from fastwds.convert.output import open_output
from fastwds.convert.plan import SourceFile, changed_files
from fastwds.errors import FastwdsError, InvalidInputError

log = logging.getLogger("fastwds")

# errno values worth another attempt: the network or a network file system hiccuped.
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.EAGAIN,
                              errno.ESTALE, errno.EHOSTUNREACH, errno.ENETUNREACH})
POLL_SECONDS = 0.2
# How long a node may take to answer the probe before the job is refused (a node that starts a
# worker process for it may need a few seconds; a hung one must not hang the job).
PROBE_SECONDS = 60
ADDRESS_SECONDS = 5  # to connect to an explicit --ray-address before Ray tries forever
# A straggler: running longer than this many times the median of finished tasks (and at least
# STRAGGLER_MIN_SECONDS), once STRAGGLER_MIN_FINISHED tasks have finished.
STRAGGLER_MIN_FINISHED = 3
STRAGGLER_MIN_SECONDS = 10.0


class TaskDataError(Exception):
    """A task failed on its data or options: not worth retrying (one message argument, so it
    pickles across Ray as it is)."""


class TransientIOError(Exception):
    """A task failed on an I/O error that may pass: Ray retries it."""


def _require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InvalidInputError("--engine ray needs Ray: pip install 'fastwds[ray]'") from None
    return ray


@cache
def core_build() -> str:
    """sha256 of the loaded ``_core`` extension: nodes must run the same build."""
    from fastwds import _core

    return hashlib.sha256(Path(_core.__file__).read_bytes()).hexdigest()[:16]


def node_facts(input_root: str, output_location: str, probe_name: str,
               input_files: Sequence[SourceFile] = ()) -> dict[str, Any]:
    """What a node must agree on with the driver (run on every node, and on the driver).
    ``input_files``: the plan's local input files, which the node must see as the driver planned
    them (``changed_files``, the check a run makes at its end): a copy of the input at the same
    path that differs would give other shards, silently."""
    import PIL
    from PIL import features

    from fastwds import __version__

    facts: dict[str, Any] = {"host": socket.gethostname(), "fastwds": __version__, "core": core_build(),
                             "python": sys.version.split()[0], "pillow": PIL.__version__,
                             "libjpeg": features.version("jpg"), "input": can_read(input_root), "output": None,
                             "input_differs": next(iter(changed_files(input_root, input_files)), None)}
    try:  # write a probe file the driver then looks for: the node and the driver share the output
        open_output(output_location).write_text(f"{PROBES_DIR}/{probe_name}", facts["host"])
        facts["output"] = True
    except (OSError, FastwdsError) as error:
        facts["output"] = f"cannot write there: {getattr(error, 'strerror', None) or error}"
    return facts


def check_address(address: str) -> None:
    """Fail in seconds when nothing answers at a HOST:PORT address: ray.init would retry
    forever, saying only that the GCS does not answer, every 40 s."""
    host, separator, port = address.rpartition(":")
    if address in ("auto", "local") or "://" in address or not separator or not port.isdigit():
        return  # Ray finds the cluster (auto), starts one (local), or says what is wrong itself
    try:
        socket.create_connection((host, int(port)), timeout=ADDRESS_SECONDS).close()
    except OSError as error:
        raise InvalidInputError(f"--ray-address {address}: no Ray cluster answers there "
                                f"({getattr(error, 'strerror', None) or error}); start one with `ray start --head`, "
                                "or give its head node's HOST:PORT") from None


def can_read(location: str) -> bool:
    try:
        if storage.is_url(location):
            next(storage.list_objects(storage.parse_url(location)), None)
            return True
        return os.access(location, os.R_OK)
    except (OSError, FastwdsError):
        return False


def run_attempt(job: TaskJob, board: Any) -> list[dict]:
    """One attempt of one task on a Ray worker (the body of the remote function): its shards."""
    attempt = uuid.uuid4().hex[:8]

    def report(task: str, rows: int, written: int, size: int) -> None:
        board.report.remote(task, attempt, rows, written, size)

    try:
        return execute_task(job, report)["shards"]
    except OSError as error:
        if error.errno in TRANSIENT_ERRNOS:
            raise TransientIOError(f"task {job.task.name}: {error}") from None
        raise TaskDataError(f"task {job.task.name}: {error}") from None
    except (FastwdsError, ValueError) as error:
        raise TaskDataError(f"task {job.task.name}: {error}") from None
    except Exception:
        raise TaskDataError(f"task {job.task.name} failed unexpectedly (please report):\n"
                            f"{traceback.format_exc()}") from None


class ProgressBoard:
    """Each attempt's running totals; the driver drains the tasks that changed."""

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, tuple[int, int, int]]] = {}
        self.changed: set[str] = set()

    def report(self, task: str, attempt: str, rows: int, written: int, size: int) -> None:
        self.totals.setdefault(task, {})[attempt] = (rows, written, size)
        self.changed.add(task)

    def drain(self) -> dict[str, tuple[int, int, int]]:
        """The furthest attempt of each task that changed: overlapping attempts never add up."""
        changed = {task: max(self.totals[task].values()) for task in self.changed}
        self.changed = set()
        return changed


class RayEngine:
    name = "ray"

    def __init__(self, address: str | None = None, task_cpus: float | None = None, max_in_flight: int | None = None,
                 retries: int = 3, straggler_factor: float = 4.0, check_images: bool = False,
                 input_files: Sequence[SourceFile] = ()) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or "auto"
        self.input_files = tuple(input_files)  # local input files every node must see as planned
        self.task_cpus = task_cpus
        self.max_in_flight = max_in_flight
        self.retries = retries
        self.straggler_factor = straggler_factor
        self.check_images = check_images  # the same Pillow/libjpeg everywhere (decoding or re-encoding)

    def run(self, jobs: Sequence[TaskJob], progress: TaskProgress) -> None:
        if not jobs:
            return
        ray = _require_ray()
        started_here = not ray.is_initialized()
        if started_here:
            _send_ray_messages_to_stderr(ray)
            check_address(self.address)
            # ray.init installs its own SIGTERM handler in this process (a stack dump, then exit 15):
            # the CLI's (stop as Ctrl-C does, say how to resume, exit 143) is put back.
            on_sigterm = signal.getsignal(signal.SIGTERM)
            ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR)
            if on_sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_sigterm)
        try:
            self._run(ray, jobs, progress)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray: Any, jobs: Sequence[TaskJob], progress: TaskProgress) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
        nodes = self.check_nodes(ray, nodes, jobs[0])
        largest = max(n["Resources"]["CPU"] for n in nodes)
        # One task keeps about two cores busy (reading, validation, the writer and its sha256 thread).
        task_cpus = self.task_cpus or min(2.0, largest)
        if task_cpus > largest:
            raise InvalidInputError(f"--ray-task-cpus {task_cpus:g}: no node has that many CPUs (largest: {largest:g})")
        total = sum(n["Resources"]["CPU"] for n in nodes)
        in_flight_limit = self.max_in_flight or max(1, int(total // task_cpus) * 2)
        here = ray.get_runtime_context().get_node_id()
        board = ray.remote(num_cpus=0)(ProgressBoard).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        remote = ray.remote(run_attempt).options(num_cpus=task_cpus, max_retries=self.retries,
                                                 retry_exceptions=[TransientIOError])
        log.info("ray: %d tasks on %d node(s), %g CPU(s) each, %d in flight at most", len(jobs), len(nodes),
                 task_cpus, in_flight_limit)
        pending = deque(jobs)
        running: dict[Any, TaskJob] = {}  # object ref -> job (a task may have two: a duplicate)
        first_seen: dict[str, float] = {}
        durations: list[float] = []
        duplicated: set[str] = set()
        done: set[str] = set()
        try:
            while pending or running:
                while pending and len({j.task.name for j in running.values()}) < in_flight_limit:
                    job = pending.popleft()
                    running[remote.remote(job, board)] = job
                ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
                for task, totals in ray.get(board.drain.remote()).items():
                    first_seen.setdefault(task, time.monotonic())
                    progress.task_totals(task, *totals)
                for ref in ready:
                    job = running.pop(ref)
                    try:
                        shards = ray.get(ref)
                    except ray.exceptions.TaskCancelledError:
                        continue  # the loser of a duplicate
                    except ray.exceptions.RayTaskError as error:
                        cause = getattr(error, "cause", None)
                        if job.task.name in done or self._other_attempt_alive(running, job):
                            continue  # the other attempt decides
                        raise TaskFailed(str(cause) if isinstance(cause, (TaskDataError, TransientIOError))
                                         else f"task {job.task.name}: {error}") from None
                    except ray.exceptions.RayError as error:  # worker or node died more often than retried
                        if job.task.name in done or self._other_attempt_alive(running, job):
                            continue
                        raise TaskFailed(f"task {job.task.name}: failed {self.retries + 1} times on Ray "
                                         f"({type(error).__name__}: {str(error).splitlines()[0]})") from None
                    if job.task.name in done:
                        continue
                    done.add(job.task.name)
                    progress.task_finished(job.task.name, shards)
                    if job.task.name in first_seen:
                        durations.append(time.monotonic() - first_seen[job.task.name])
                    for other, other_job in list(running.items()):  # first result wins
                        if other_job.task.name == job.task.name:
                            ray.cancel(other, force=True)
                self._duplicate_stragglers(running, first_seen, durations, duplicated, remote, board)
        except BaseException:
            for ref in running:  # Ctrl-C or a failed task: nothing keeps running for this job
                ray.cancel(ref, force=True)
            raise

    @staticmethod
    def _other_attempt_alive(running: dict[Any, TaskJob], job: TaskJob) -> bool:
        return any(other.task.name == job.task.name for other in running.values())

    def _duplicate_stragglers(self, running: dict[Any, TaskJob], first_seen: dict[str, float], durations: list[float],
                              duplicated: set[str], remote: Any, board: Any) -> None:
        if not self.straggler_factor or len(durations) < STRAGGLER_MIN_FINISHED:
            return
        limit = max(self.straggler_factor * statistics.median(durations), STRAGGLER_MIN_SECONDS)
        now = time.monotonic()
        for job in list(running.values()):
            name = job.task.name
            if name not in duplicated and name in first_seen and now - first_seen[name] > limit:
                duplicated.add(name)
                log.warning("task %s has run %.0f s, over %.1fx the median of finished tasks: starting a duplicate "
                            "attempt (the first to finish wins)", name, now - first_seen[name], self.straggler_factor)
                running[remote.remote(job, board)] = job

    def check_nodes(self, ray: Any, nodes: list[dict], job: TaskJob) -> list[dict]:
        """Refuse to start unless every node that could run a task can run it identically; the
        nodes that will run tasks. A node that left the cluster since it was listed (Ray marks
        dead nodes a few seconds late) is simply not one of them."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if not nodes:
            raise InvalidInputError("the Ray cluster has no node with CPUs")
        probe = ray.remote(num_cpus=0)(node_facts)
        refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(job.input_root, job.output_dir, f"{n['NodeID'][:12]}-{uuid.uuid4().hex[:6]}", self.input_files)
                for n in nodes}
        mine = node_facts(job.input_root, job.output_dir, f"driver-{uuid.uuid4().hex[:6]}")
        compared = ["fastwds", "core", "python"] + (["pillow", "libjpeg"] if self.check_images else [])
        problems = []
        addresses = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes}
        gone: set[str] = set()
        for node_id, ref in refs.items():
            try:
                facts = ray.get(ref, timeout=PROBE_SECONDS)
            except (ray.exceptions.TaskUnschedulableError, ray.exceptions.GetTimeoutError) as error:
                alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
                if isinstance(error, ray.exceptions.TaskUnschedulableError) or node_id not in alive:
                    gone.add(node_id)
                    log.info("ray: node %s (%s) left the cluster before the job started; it runs no task",
                             node_id[:12], addresses[node_id])
                else:
                    problems.append(f"node {node_id[:12]} ({addresses[node_id]}): did not answer the probe within "
                                    f"{PROBE_SECONDS} s")
                continue
            except ray.exceptions.RayError as error:  # e.g. fastwds not installed there
                cause = getattr(error, "cause", None) or error
                problems.append(f"node {node_id[:12]} ({addresses[node_id]}): cannot run fastwds there: "
                                f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1]}")
                continue
            where = f"node {node_id[:12]} ({facts['host']})"
            for key in compared:
                if facts[key] != mine[key]:
                    problems.append(f"{where}: {key} {facts[key]} there, {mine[key]} on the driver")
            if not facts["input"]:
                problems.append(f"{where}: cannot read the input {job.input_root}")
            elif facts["input_differs"]:
                problems.append(f"{where}: its copy of the input is not the one the driver planned: "
                                f"{facts['input_differs']} is missing there or has another size or modification "
                                "time (give every node the same files: a shared file system or a bucket)")
            if facts["output"] is not True:
                problems.append(f"{where}: the output folder {job.output_dir}: {facts['output']}")
        output = open_output(job.output_dir)
        seen = set(output.list(PROBES_DIR))
        for node_id in refs:
            if node_id in gone or any(node_id[:12] in problem for problem in problems):
                continue
            if not any(name.startswith(node_id[:12]) for name in seen):
                problems.append(f"node {node_id[:12]}: writes to {job.output_dir} do not reach the driver's folder of "
                                "that name (not a shared file system)")
        output.delete([f"{PROBES_DIR}/{name}" for name in seen])
        if problems:
            raise InvalidInputError("the Ray cluster cannot run this job identically on every node:\n  "
                                    + "\n  ".join(problems))
        serving = [n for n in nodes if n["NodeID"] not in gone]
        if not serving:
            raise InvalidInputError("the Ray cluster has no node with CPUs left")
        return serving


def _send_ray_messages_to_stderr(ray: Any) -> None:
    """Ray prints messages of its raylets ("task failed, will be retried") to the driver's
    stdout, where ``--json`` puts the summary: send them to stderr. A private hook; if it moves,
    the messages simply stay where Ray puts them."""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "fastwds_wrapped", False):
        return

    def to_stderr(data: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(data, dict):
            data = {**data, "is_err": True}
        return original(data, *args, **kwargs)

    to_stderr.fastwds_wrapped = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr
