"""The commit protocol under real faults: a killed driver, a frozen or killed worker, two runs on
one folder, overlapping attempts of one task. Processes are frozen with SIGSTOP at the moment
that matters, then killed (SIGKILL) or resumed (SIGCONT); only processes these tests started are
signalled. Every outcome is checked against a clean run: same shard names and sha256, rows in =
written + rejected, ``fastwds verify --full`` clean, no staging files left."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import run_cli
from fastwds.synthetic import generate

ARGS = ["--max-samples-per-shard", "40", "--no-progress"]
TIMEOUT = 120


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("commit-data")
    generate(root, rows=800, subsets=2, files_per_subset=3, row_group_rows=50, seed=5)
    return root


@pytest.fixture(scope="module")
def clean(dataset, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("clean") / "out"
    run_cli("convert", "parquet", str(dataset), str(out), *ARGS)
    return json.loads((out / "manifest.json").read_text())


class Processes:
    """Processes a test starts, each in its own process group; whatever happens in the test, every
    group (a driver and its workers, possibly frozen) is killed at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def run(self, command: list[str], **options) -> subprocess.Popen:
        child = subprocess.Popen(command, start_new_session=True, **options)
        self.started.append(child)
        return child

    def __call__(self, dataset: Path, out: Path, *extra: str) -> subprocess.Popen:
        """``fastwds convert parquet DATASET OUT`` with the test's arguments."""
        return self.run([sys.executable, "-m", "fastwds", "convert", "parquet", str(dataset), str(out), *ARGS, *extra],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def kill_all(self) -> None:
        for child in self.started:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.communicate()  # reaps it and closes its pipes


@pytest.fixture
def start():
    processes = Processes()
    yield processes
    processes.kill_all()


def wait_for(condition, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.003)
    raise AssertionError(f"timed out waiting for {what}")


def process_state(pid: int) -> str | None:
    """R, S, D, T (stopped), Z (zombie) ..., None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def alive(pid: int) -> bool:
    """Running or stopped, not a zombie."""
    return process_state(pid) not in (None, "Z")


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running_attempts(out: Path) -> list[dict]:
    """Owners of the attempts staging files now: {pid, task, ...}, for tasks not yet recorded."""
    found = []
    for owner in (out / ".fastwds" / "attempts").glob("*/.owner.json"):
        try:
            info = json.loads(owner.read_text())
        except (OSError, ValueError):  # being written
            continue
        if not (out / ".fastwds" / "tasks" / f"{info['task']}.json").exists() and alive(info["pid"]):
            found.append(info)
    return found


def freeze_an_attempt(out: Path, exclude_tasks: set[str] = frozenset()) -> dict:
    """SIGSTOP a worker in the middle of a task (before its record), and return its owner info."""
    while True:
        info = wait_for(lambda: [a for a in running_attempts(out) if a["task"] not in exclude_tasks],
                        "a running attempt")[0]
        os.kill(info["pid"], signal.SIGSTOP)
        if not (out / ".fastwds" / "tasks" / f"{info['task']}.json").exists():
            return info
        os.kill(info["pid"], signal.SIGCONT)  # it got past its record: pick another


def assert_matches_clean(out: Path, clean: dict) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(s["name"], s["sha256"]) for s in manifest["shards"]] == [(s["name"], s["sha256"]) for s in clean["shards"]]
    totals = manifest["totals"]
    assert totals == clean["totals"] and totals["rows"] == totals["samples"] + totals["invalid"]
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(s["name"] for s in clean["shards"])
    assert not list((out / ".fastwds" / "attempts").glob("*")), "staging files left behind"
    verified = run_cli("verify", str(out), "--full", "--json")
    assert json.loads(verified.stdout)["errors"] == 0


def assert_finished_shards_are_right(out: Path, clean: dict) -> None:
    """After a failure: every shard with a final name is a complete shard of the clean run."""
    import hashlib

    expected = {s["name"]: s["sha256"] for s in clean["shards"]}
    for shard in out.glob("*.tar"):
        assert hashlib.sha256(shard.read_bytes()).hexdigest() == expected[shard.name], shard.name


def test_workers_die_with_the_driver_even_when_frozen(dataset, clean, tmp_path, start):
    """SIGKILL of the driver alone (not its process group): its workers, one of them frozen
    mid-task, must not live on to race a --resume."""
    out = tmp_path / "out"
    driver = start(dataset, out, "--num-workers", "2")
    frozen = freeze_an_attempt(out)
    workers = children(driver.pid)
    assert frozen["pid"] in workers and len(workers) >= 2
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    wait_for(lambda: not any(alive(pid) for pid in workers), "the workers to die with the driver", timeout=10)
    result = run_cli("convert", "parquet", str(dataset), str(out), *ARGS, "--num-workers", "2", "--resume", "--json")
    assert json.loads(result.stdout)["resumed"]
    assert_matches_clean(out, clean)


def test_a_second_run_on_the_same_folder_is_refused(dataset, clean, tmp_path, start):
    out = tmp_path / "out"
    first = start(dataset, out, "--num-workers", "2")
    freeze_an_attempt(out)
    os.killpg(first.pid, signal.SIGSTOP)  # the whole first run, frozen mid-run, holds the folder
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    second = run_cli("convert", "parquet", str(dataset), str(out), *ARGS, "--resume", check=False)
    assert second.returncode == 1
    assert f"pid {first.pid}" in second.stderr and "another fastwds run" in second.stderr
    assert "Traceback" not in second.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    os.killpg(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=TIMEOUT)
    assert first.returncode == 0, stderr
    assert_matches_clean(out, clean)


def test_a_stale_lock_of_a_killed_run_is_taken_over(dataset, clean, tmp_path, start):
    out = tmp_path / "out"
    first = start(dataset, out, "--num-workers", "2")
    freeze_an_attempt(out)
    os.killpg(first.pid, signal.SIGKILL)  # the whole run, as a lost machine
    first.wait()
    assert str(first.pid) in (out / ".fastwds" / "lock").read_text()  # the lock file outlives its holder
    run_cli("convert", "parquet", str(dataset), str(out), *ARGS, "--resume")
    assert_matches_clean(out, clean)


def test_a_killed_worker_is_retried_once_and_the_job_finishes(dataset, clean, tmp_path, start):
    out = tmp_path / "out"
    driver = start(dataset, out, "--num-workers", "2")
    frozen = freeze_an_attempt(out)
    os.kill(frozen["pid"], signal.SIGKILL)  # what the out-of-memory killer does
    _, stderr = driver.communicate(timeout=TIMEOUT)
    assert driver.returncode == 0, stderr
    assert_matches_clean(out, clean)


def test_a_task_whose_worker_dies_twice_fails_the_job_naming_it(dataset, clean, tmp_path, start):
    out = tmp_path / "out"
    driver = start(dataset, out, "--num-workers", "2")
    first = freeze_an_attempt(out)
    os.kill(first["pid"], signal.SIGKILL)
    again = wait_for(lambda: [a for a in running_attempts(out)
                              if a["task"] == first["task"] and a["pid"] != first["pid"]], "the retry")[0]
    os.kill(again["pid"], signal.SIGKILL)
    _, stderr = driver.communicate(timeout=TIMEOUT)
    assert driver.returncode == 1
    assert f"task {first['task']}: its worker process died 2 times" in stderr and "SIGKILL" in stderr
    assert "Traceback" not in stderr
    assert_finished_shards_are_right(out, clean)
    run_cli("convert", "parquet", str(dataset), str(out), *ARGS, "--resume")
    assert_matches_clean(out, clean)


OVERLAP_SCRIPT = """
import pickle, sys
from fastwds.convert.execute import execute_task
job = pickle.load(open(sys.argv[1], "rb"))
execute_task(job, lambda *totals: None)
"""


def staged_shards(out: Path) -> list[Path]:
    return [p for p in (out / ".fastwds" / "attempts").glob("*/*.tar")]


# The moments to freeze the first attempt at: as it starts, once a spill shard of it is complete
# in its staging folder, and once it published a shard but has not written the task record.
MOMENTS = {
    "started": lambda out: list((out / ".fastwds" / "attempts").glob("*/.owner.json")),
    "mid-write": staged_shards,
}
# Too short a window to catch from outside: the attempt stops itself there (commit.stop_here).
STOPS_ITSELF = {"mid-publish": "published"}


@pytest.mark.parametrize("moment", sorted([*MOMENTS, *STOPS_ITSELF]))
def test_overlapping_attempts_of_one_task_both_succeed_with_the_right_bytes(dataset, tmp_path, moment, start):
    """Two attempts of the same task (a retry while the first still runs, a straggler's
    duplicate), with a byte cap that spills the task into several shards. The first attempt is
    frozen at ``moment`` while the second runs start to finish, then thawed: both succeed, one
    task record, and the shards are those of a clean run of the task."""
    from fastwds.convert.execute import TaskJob
    from fastwds.convert.output import open_output
    from fastwds.convert.state import prepare_output
    from fastwds.sources import get_source
    from fastwds.sources.parquet import ParquetColumns

    source = get_source("parquet")
    # Planned without a byte cap, run with one: the task spills over into several shards (the
    # planner sizes tasks to the cap, so real spills are rarer; they must work all the same).
    plan = source.plan(str(dataset), source.convert_options(source_options=ParquetColumns(),
                                                            max_samples_per_shard=400))
    options = replace(plan_options := source.convert_options(source_options=ParquetColumns(),
                                                             max_samples_per_shard=400), max_shard_bytes=8_000_000)
    task = plan.tasks[0]
    jobs = {}
    for name in ("clean", "overlap"):
        out = tmp_path / name
        out.mkdir()
        prepare_output(open_output(out), plan, plan_options, resume=False, overwrite=False, session="s1")
        jobs[name] = tmp_path / f"{name}.job"
        jobs[name].write_bytes(pickle.dumps(TaskJob("parquet", task, plan.input_root, options, str(out), "s1")))
    subprocess.run([sys.executable, "-c", OVERLAP_SCRIPT, str(jobs["clean"])], check=True)
    clean_shards = {p.name: p.read_bytes() for p in (tmp_path / "clean").glob("*.tar")}
    assert len(clean_shards) >= 3, "the byte cap must spill the task into several shards"

    overlap = tmp_path / "overlap"
    environment = {**os.environ, "FASTWDS_TEST_STOP_AT": STOPS_ITSELF.get(moment, "")}
    first = start.run([sys.executable, "-c", OVERLAP_SCRIPT, str(jobs["overlap"])], env=environment)
    if moment in STOPS_ITSELF:
        wait_for(lambda: process_state(first.pid) == "T", f"the first attempt to stop at {moment}")
        assert list(overlap.glob("*.tar")) and not list((overlap / ".fastwds" / "tasks").glob("*"))
    else:
        wait_for(lambda: MOMENTS[moment](overlap), moment)
        os.kill(first.pid, signal.SIGSTOP)
    second = subprocess.run([sys.executable, "-c", OVERLAP_SCRIPT, str(jobs["overlap"])], capture_output=True,
                            text=True)
    os.kill(first.pid, signal.SIGCONT)
    assert first.wait(TIMEOUT) == 0 and second.returncode == 0, second.stderr
    assert {p.name: p.read_bytes() for p in overlap.glob("*.tar")} == clean_shards
    assert [p.name for p in (overlap / ".fastwds" / "tasks").glob("*")] == [f"{task.name}.json"]
    assert not list((overlap / ".fastwds" / "attempts").glob("*"))


def test_an_attempt_of_an_earlier_run_does_not_publish(dataset, tmp_path, start):
    """A straggler of a dead run, thawed after a newer run took the folder (a new session): it
    must not publish or record anything."""
    from fastwds.convert.execute import TaskJob
    from fastwds.convert.output import open_output
    from fastwds.convert.state import prepare_output
    from fastwds.sources import get_source
    from fastwds.sources.parquet import ParquetColumns

    source = get_source("parquet")
    options = source.convert_options(source_options=ParquetColumns(), max_samples_per_shard=400,
                                     max_shard_bytes=8_000_000)
    plan = source.plan(str(dataset), options)
    out = tmp_path / "out"
    out.mkdir()
    prepare_output(open_output(out), plan, options, resume=False, overwrite=False, session="old")
    job = tmp_path / "job"
    job.write_bytes(pickle.dumps(TaskJob("parquet", plan.tasks[0], plan.input_root, options, str(out), "old")))
    # Its shards staged, about to publish: the attempt stops itself there (commit.stop_here).
    old = start.run([sys.executable, "-c", OVERLAP_SCRIPT, str(job)], stderr=subprocess.PIPE, text=True,
                    env={**os.environ, "FASTWDS_TEST_STOP_AT": "staged"})
    wait_for(lambda: process_state(old.pid) == "T" or old.poll() is not None, "the old attempt to stop")
    assert old.poll() is None, f"the old attempt ended first ({old.returncode}): {old.communicate()[1]}"
    assert staged_shards(out)
    prepare_output(open_output(out), plan, options, resume=True, overwrite=False, session="new")
    os.kill(old.pid, signal.SIGCONT)
    _, stderr = old.communicate(timeout=TIMEOUT)
    assert old.returncode == 1 and "a newer run owns" in stderr
    assert not list((out / ".fastwds" / "tasks").glob("*"))
