"""The benchmark harness behind ``fastwds bench``.

A *runner* is a function ``fn(args: dict, out_dir: Path, clock: Clock) -> dict`` in an importable
module, named by a ``Runner`` as ``"package.module:function"``. Each run happens in a fresh
``python -m fastwds.bench.worker`` process, so its peak RSS is its own. The function may do
untimed setup, must time exactly one ``with clock:`` block, and returns
``{"samples": int, "bytes": int, "outputs": [sha256 hex, ...] or None}`` where ``bytes`` is the
payload it processed and ``outputs`` the hashes of the files it wrote (``sha256_files``).

``run_suite`` runs one untimed warm-up round and then ``repeat`` rounds, each round running every
runner once in turn (A, B, C, A, B, C, ...) so that drift of the machine hits all runners alike,
and prints medians, spread, peak RSS and ratios against the floor and the peer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import fastwds
from fastwds.cores import available_cores

log = logging.getLogger(__name__)

WARMUP_ROUNDS = 1


@dataclass(frozen=True)
class Runner:
    """One contender: ``target`` (``"module:function"``) is called with ``args`` in a worker."""

    name: str
    target: str
    args: dict[str, Any] = field(default_factory=dict)
    # The output must be byte-identical every run; a change fails the runner, so that a fast
    # but wrong run cannot win.
    deterministic: bool = False
    # Modules that must be importable; without them the runner is reported as skipped.
    requires: tuple[str, ...] = ()
    # The interpreter the worker runs under (None: this one), e.g. a venv with another Pillow build.
    python: str | None = None


@dataclass(frozen=True)
class Suite:
    """A benchmark: its runners, which of them is the floor and which the peer, and the
    parameters and notes printed with the table. ``findings``, if given, turns the results
    (each runner's summary by name, None for a failed or skipped one) into lines printed after
    the notes: comparisons the table's columns cannot show, such as scaling over worker counts."""

    name: str
    description: str
    runners: Sequence[Runner]
    floor: str
    peer: str
    params: dict[str, Any] = field(default_factory=dict)
    notes: Sequence[str] = ()
    findings: Callable[[dict[str, dict[str, Any] | None]], list[str]] | None = None

    def __post_init__(self) -> None:
        # Ratios are looked up by name: a typo would quietly print "-" instead of a ratio.
        names = [runner.name for runner in self.runners]
        if len(set(names)) != len(names):
            raise ValueError(f"runner names must be unique: {names}")
        for role, name in (("floor", self.floor), ("peer", self.peer)):
            if name not in names:
                raise ValueError(f"the {role} {name!r} is not one of the runners {names}")


class Clock:
    """Times the runner's single ``with clock:`` block: the part the benchmark measures."""

    def __init__(self) -> None:
        self.seconds: float | None = None
        self.setup_rss_kib: int | None = None
        self._start: float | None = None

    def __enter__(self) -> Clock:
        if self._start is not None:
            raise RuntimeError("a runner times exactly one section: `with clock:` ran twice")
        # Peak RSS so far is what setup (the in-memory input) needed; the report shows how much
        # the timed section added on top of it.
        self.setup_rss_kib = peak_rss_kib()
        self._start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._start is not None
        self.seconds = time.perf_counter() - self._start


def peak_rss_kib() -> int:
    """The peak RSS of this process and of the largest child it has waited for, in KiB.

    Not the ``ru_maxrss`` that ``wait4`` gives the harness: Linux starts a child's ``ru_maxrss``
    at its parent's peak when it execs after ``vfork`` (as ``subprocess`` does), so a small run
    would show the harness's size. ``VmHWM`` counts only this process's own memory since exec;
    the children (a runner's worker processes) inherit at most this process's peak, which the
    ``max`` absorbs.
    """
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    try:
        with open("/proc/self/status") as status:
            own = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):  # not Linux: ru_maxrss, which macOS gives in bytes
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            own, children = own // 1024, children // 1024
    return max(own, children)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_files(directory: Path) -> list[str]:
    """sha256 hex of every file under ``directory``, in path order."""
    return [file_sha256(path) for path in sorted(p for p in directory.rglob("*") if p.is_file())]


def manifest_shard_digests(manifest: dict[str, Any], out_dir: Path) -> list[str]:
    """The sha256 of every shard a fastwds manifest lists, read back from disk and checked against
    the manifest; the shards on disk must be exactly those. A fast but wrong run must not win."""
    digests = []
    for shard in sorted(manifest["shards"], key=lambda s: s["name"]):
        digest = file_sha256(out_dir / shard["name"])
        if digest != shard["sha256"]:
            raise RuntimeError(f"{shard['name']}: sha256 {digest} on disk, {shard['sha256']} in the manifest")
        digests.append(digest)
    if sorted(p.name for p in out_dir.glob("*.tar")) != sorted(s["name"] for s in manifest["shards"]):
        raise RuntimeError(f"the shards on disk differ from the manifest's: {sorted(out_dir.glob('*.tar'))}")
    return digests


# Floors that write large buffers (column buffers, media files, volumes) write them in pieces of
# this size, as fastwds' writer does (rust/hashed_file.rs): on Linux 6.18 one write() of a
# multi-megabyte buffer measured 2-4x more kernel time than the same bytes in 32 KiB writes, and a
# floor must be the fastest plain way to put the bytes on disk.
FLOOR_WRITE_PIECE = 32 << 10


def write_in_pieces(out: BinaryIO, data: Any) -> None:
    """Write ``data`` (bytes or any buffer, e.g. a pyarrow Buffer) in ``FLOOR_WRITE_PIECE`` writes."""
    view = memoryview(data).cast("B")
    for start in range(0, len(view), FLOOR_WRITE_PIECE):
        out.write(view[start:start + FLOOR_WRITE_PIECE])


def make_durable(directory: Path) -> None:
    """fsync every file under ``directory`` and the directories holding them, for runners whose
    writer does not, so that every runner stops its clock with its output on disk."""
    for path in sorted(directory.rglob("*")) + [directory]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class RunFailed(Exception):
    """A worker process crashed, exited non-zero or broke the runner protocol."""


@dataclass
class Result:
    """What happened to one runner: ``status`` is "ok", "failed" or "skipped"; ``runs`` holds
    every run's numbers, the warm-up first (``"warmup": true``)."""

    runner: Runner
    status: str = "ok"
    message: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.status, self.message = "failed", message

    def summary(self) -> dict[str, Any] | None:
        timed = [run for run in self.runs if not run["warmup"]]
        if self.status != "ok" or not timed:
            return None
        rates = [run["samples"] / run["seconds"] for run in timed]
        median = statistics.median(rates)
        return {
            "samples_per_s": median,
            "mb_per_s": statistics.median(run["bytes"] / run["seconds"] / 1e6 for run in timed),
            "samples_per_s_min": min(rates),
            "samples_per_s_max": max(rates),
            "spread": (max(rates) - min(rates)) / median,
            "peak_rss_mib": max(run["peak_rss_kib"] for run in timed) / 1024,
            "timed_rss_mib": max(run["peak_rss_kib"] - run["setup_rss_kib"] for run in timed) / 1024,
        }


def run_benchmark(runners: Sequence[Runner], *, repeat: int = 3,
                  workdir: str | Path | None = None) -> list[Result]:
    """Run every runner ``WARMUP_ROUNDS + repeat`` times, interleaved; never raises for a runner's
    failure (it is recorded in its ``Result`` and that runner is not run again)."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, not {repeat}")
    results = [Result(runner) for runner in runners]
    for result in results:
        missing = [m for m in result.runner.requires if importlib.util.find_spec(m) is None]
        if missing:
            result.status, result.message = "skipped", f"{', '.join(missing)} not installed"
    with tempfile.TemporaryDirectory(prefix="fastwds-bench-", dir=workdir) as tmp:
        for round_ in range(WARMUP_ROUNDS + repeat):
            warmup = round_ < WARMUP_ROUNDS
            # Rotate who goes first each round, so no runner always follows the same one.
            order = [(round_ + i) % len(results) for i in range(len(results))]
            for number in order:
                result = results[number]
                if result.status != "ok":
                    continue
                out_dir = Path(tmp, f"{number}-{round_}")
                out_dir.mkdir()
                try:
                    run = _run_in_worker(result.runner, out_dir)
                except RunFailed as error:
                    result.fail(str(error))
                    log.warning("%s failed: %s", result.runner.name, error)
                    continue
                finally:
                    # Each run's output is gone before the next starts: disk use stays bounded.
                    # sync() makes the file system finish that deletion now, not during the
                    # next runner's timed section.
                    shutil.rmtree(out_dir, ignore_errors=True)
                    os.sync()
                run.update(round=round_, warmup=warmup)
                result.runs.append(run)
                _check_repeatable(result)
                log.info("%s %s: %.2f s", "warm-up" if warmup else f"repetition {round_}",
                         result.runner.name, run["seconds"])
    return results


def _check_repeatable(result: Result) -> None:
    if not result.runner.deterministic:
        return
    first, last = result.runs[0], result.runs[-1]
    if last["outputs"] is None:
        result.fail("runner is marked deterministic but returned no output hashes")
    elif (last["outputs"], last["samples"]) != (first["outputs"], first["samples"]):
        result.fail("output changed between repetitions")


def _run_in_worker(runner: Runner, out_dir: Path) -> dict[str, Any]:
    command = [runner.python or sys.executable, "-m", "fastwds.bench.worker", runner.target, str(out_dir),
               json.dumps(runner.args)]
    completed = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if completed.returncode < 0:
        raise RunFailed(f"killed by {signal.Signals(-completed.returncode).name}")
    if completed.returncode != 0:
        errors = [line.strip() for line in completed.stderr.decode(errors="replace").splitlines() if line.strip()]
        raise RunFailed(f"exit code {completed.returncode}: {errors[-1] if errors else 'no error output'}")
    try:
        return json.loads(completed.stdout.decode(errors="replace").splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RunFailed("the worker printed no result line") from None


def machine_info(workdir: str | Path | None = None) -> dict[str, Any]:
    """What the numbers depend on: cores, CPU, Python, fastwds, and the filesystem written to
    (fsync costs nothing on tmpfs and a lot on a network disk)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out_dir = os.path.realpath(workdir or tempfile.gettempdir())
    return {
        "cores": available_cores(),
        "cpu": cpu,
        "python": platform.python_version(),
        "fastwds": fastwds.__version__,
        "output_dir": out_dir,
        "filesystem": _filesystem_type(out_dir),
    }


def _filesystem_type(path: str) -> str:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    best, fstype = "", "unknown"
    for line in mounts:
        _, mount_point, kind, *_ = line.split()
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) > len(best):
            best, fstype = mount_point, kind
    return fstype


def run_suite(suite: Suite, *, repeat: int = 3, json_path: str | Path | None = None,
              workdir: str | Path | None = None, out: TextIO | None = None,
              on_report: Callable[[dict[str, Any]], None] | None = None, as_json: bool = False) -> int:
    """Run ``suite``, print its table to ``out`` (stdout; stderr with ``as_json``, which prints the
    report as JSON on stdout), write the report to ``json_path`` if given, and hand it to
    ``on_report`` if given (e.g. to draw a plot).
    Returns the exit code: 1 if any runner failed (its row says why), else 0."""
    out = out or (sys.stderr if as_json else sys.stdout)
    machine = machine_info(workdir)
    results = run_benchmark(suite.runners, repeat=repeat, workdir=workdir)
    rows = _rows(suite, results)
    findings = suite.findings({r.runner.name: row for r, row in zip(results, rows)}) if suite.findings else []
    print(format_table(suite, repeat, machine, results, rows, findings), file=out)
    report = {
        "benchmark": suite.name,
        "description": suite.description,
        "params": suite.params,
        "repeat": repeat,
        "warmup_rounds": WARMUP_ROUNDS,
        "machine": machine,
        "floor": suite.floor,
        "peer": suite.peer,
        "notes": _notes(suite, repeat),
        "findings": findings,
        "runners": [
            {"name": r.runner.name, "target": r.runner.target, "args": r.runner.args,
             "deterministic": r.runner.deterministic, "status": r.status,
             "message": r.message, "summary": summary, "runs": r.runs}
            for r, summary in zip(results, rows)
        ],
    }
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        print(json.dumps(report, indent=2))
    if on_report is not None:
        on_report(report)
    return 1 if any(r.status == "failed" for r in results) else 0


def _rows(suite: Suite, results: list[Result]) -> list[dict[str, Any] | None]:
    """Each result's summary with its ratios to the floor and the peer (None where either is
    missing: a ratio to a runner that failed would mean nothing)."""
    summaries = [r.summary() for r in results]
    by_name = {r.runner.name: s for r, s in zip(results, summaries)}
    for summary in summaries:
        if summary is None:
            continue
        for key, reference in (("x_floor", suite.floor), ("x_peer", suite.peer)):
            base = by_name.get(reference)
            summary[key] = summary["samples_per_s"] / base["samples_per_s"] if base else None
    return summaries


HEADER = ("runner", "samples/s", "MB/s", "spread", "peak RSS MiB", "timed +MiB", "x floor", "x peer")


def format_table(suite: Suite, repeat: int, machine: dict[str, Any], results: list[Result],
                 rows: list[dict[str, Any] | None], findings: Sequence[str] = ()) -> str:
    """The report as text: headline, machine, one row per runner (failed and skipped runners
    say why in place of their numbers), then the notes and the findings."""
    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    table: list[tuple[str, ...]] = []
    for result, row in zip(results, rows):
        name = result.runner.name
        name += " [floor]" if name == suite.floor else " [peer]" if name == suite.peer else ""
        if row is None:
            table.append((name, f"{result.status.upper()}: {result.message}"))
        else:
            table.append((name, f"{row['samples_per_s']:,.0f}", f"{row['mb_per_s']:,.1f}",
                          f"{row['spread']:.1%}", f"{row['peak_rss_mib']:,.0f}",
                          f"{row['timed_rss_mib']:,.0f}", ratio(row["x_floor"]), ratio(row["x_peer"])))
    full_rows = [cells for cells in table if len(cells) == len(HEADER)]
    widths = [max(len(cells[i]) for cells in [HEADER, *full_rows]) for i in range(len(HEADER))]
    widths[0] = max(len(cells[0]) for cells in [HEADER, *table])

    def line(cells: Sequence[str]) -> str:
        if len(cells) != len(HEADER):  # a failed or skipped runner: its message, left-aligned
            return f"{cells[0].ljust(widths[0])}  {cells[1]}"
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    return "\n".join([
        f"fastwds bench {suite.name}: {suite.description}",
        f"machine: {machine['cores']} cores, {machine['cpu']}, Python {machine['python']}, "
        f"fastwds {machine['fastwds']}, output on {machine['filesystem']} ({machine['output_dir']})",
        "",
        line(HEADER),
        *(line(cells) for cells in table),
        "",
        *(f"- {note}" for note in _notes(suite, repeat)),
        *([""] if findings else []),
        *findings,
    ])


def _notes(suite: Suite, repeat: int) -> list[str]:
    """How to read the table, then the suite's own notes."""
    return [
        f"samples/s and MB/s (10^6 payload bytes/s): medians over {repeat} repetition"
        f"{'s' if repeat > 1 else ''}, "
        f"interleaved after {WARMUP_ROUNDS} untimed warm-up round; spread = (max - min) / median "
        "of samples/s",
        f"x floor / x peer: median samples/s relative to {suite.floor!r} / {suite.peer!r}",
        "each run is a fresh process; peak RSS is that process's own (VmHWM) and includes the "
        "in-memory input; timed +MiB is how far the peak rose during the timed section",
        *suite.notes,
    ]
