"""Kill `fastwds convert parquet` at several points; --resume must finish with shards
byte-identical to an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastwds.synthetic import generate

ARGS = ["--max-samples-per-shard", "40", "--num-workers", "2", "--no-progress"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume-data")
    generate(root, rows=800, subsets=2, files_per_subset=3, row_group_rows=50, seed=3)
    return root


@pytest.fixture(scope="module")
def clean_run(dataset, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("clean") / "out"
    subprocess.run([sys.executable, "-m", "fastwds", "convert", "parquet", str(dataset), str(out), *ARGS],
                   check=True, capture_output=True)
    return json.loads((out / "manifest.json").read_text())


def finished_tasks(out: Path) -> int:
    tasks = out / ".fastwds" / "tasks"
    return len(list(tasks.glob("*.json"))) if tasks.exists() else -1


def kill_when(out: Path, dataset: Path, tasks_done: int) -> None:
    """Start the CLI in its own process group; SIGKILL the whole group (parent and workers, as an
    OOM kill or a lost machine would) once ``tasks_done`` tasks have finished."""
    with subprocess.Popen([sys.executable, "-m", "fastwds", "convert", "parquet", str(dataset), str(out), *ARGS],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True) as child:
        deadline = time.monotonic() + 120
        while finished_tasks(out) < tasks_done and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert child.poll() is None, "the run finished before it could be killed"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


@pytest.mark.slow
@pytest.mark.parametrize("tasks_done", [0, 3, 11])
def test_resume_after_sigkill_gives_identical_shards(dataset, clean_run, tmp_path, tasks_done):
    out = tmp_path / "out"
    kill_when(out, dataset, tasks_done)
    assert not (out / "manifest.json").exists()
    # Nothing that looks finished is incomplete: every .tar present is one a task recorded, or
    # belongs to a task that will be redone.
    result = subprocess.run([sys.executable, "-m", "fastwds", "convert", "parquet", str(dataset), str(out),
                             *ARGS, "--resume", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["resumed"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(s["name"], s["sha256"]) for s in manifest["shards"]] == \
           [(s["name"], s["sha256"]) for s in clean_run["shards"]]
    assert manifest["totals"] == clean_run["totals"]
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(s["name"] for s in clean_run["shards"])
    assert not list(out.glob("*.partial"))


def test_resume_converts_again_a_finished_task_whose_shard_was_deleted(dataset, clean_run, tmp_path):
    """Someone deleted a shard of a finished run (or a sync lost it): --resume must not finish a
    manifest listing a file that is gone; it converts that task again, naming it."""
    out = tmp_path / "out"
    run = [sys.executable, "-m", "fastwds", "convert", "parquet", str(dataset), str(out), *ARGS]
    subprocess.run(run, check=True, capture_output=True)
    gone = clean_run["shards"][4]["name"]
    (out / gone).unlink()
    result = subprocess.run([*run, "--resume"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"{gone} is gone from the output: converting it again" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(s["name"], s["sha256"]) for s in manifest["shards"]] == \
           [(s["name"], s["sha256"]) for s in clean_run["shards"]]
    assert (out / gone).is_file()


def test_ctrl_c_stops_cleanly(dataset, clean_run, tmp_path):
    out = tmp_path / "out"
    with subprocess.Popen([sys.executable, "-m", "fastwds", "convert", "parquet", str(dataset), str(out), *ARGS],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as child:
        while finished_tasks(out) < 2 and child.poll() is None:
            time.sleep(0.005)
        os.killpg(child.pid, signal.SIGINT)  # what a terminal sends to the foreground group
        _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130
    assert "--resume" in stderr and "Traceback" not in stderr
    assert not list(out.glob("*.partial"))
    # Every shard with a final name is complete: a task's shards are published whole, so one
    # may even precede its task record by an instant; --resume then redoes that task.
    expected = {s["name"]: s["sha256"] for s in clean_run["shards"]}
    assert out.glob("*.tar") and all(hashlib.sha256(p.read_bytes()).hexdigest() == expected[p.name]
                                     for p in out.glob("*.tar"))
    assert not list((out / ".fastwds" / "attempts").glob("*")), "interrupted attempts left their staging files"


def test_an_input_changed_during_the_run_stops_it_before_the_manifest(dataset, clean_run, tmp_path):
    """The run is stopped (SIGSTOP) once 2 tasks have finished, one input file is rewritten
    (another modification time: what a sync tool or a second job writing the dataset does), and
    the run continues (SIGCONT). It must not finish as if nothing happened: exit 1, one line
    naming the file, no manifest. --resume is refused (the input is not the plan's any more);
    --overwrite converts the input as it now is."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    out = tmp_path / "out"
    changed = sorted(data.rglob("*.parquet"))[-1]
    with subprocess.Popen([sys.executable, "-m", "fastwds", "convert", "parquet", str(data), str(out),
                           "--max-samples-per-shard", "40", "--num-workers", "1", "--no-progress"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True) as child:
        deadline = time.monotonic() + 120
        while finished_tasks(out) < 2 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.killpg(child.pid, signal.SIGSTOP)
        assert child.poll() is None, "the run finished before the input could be changed"
        stat = changed.stat()
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        os.killpg(child.pid, signal.SIGCONT)
        _, stderr = child.communicate(timeout=120)
    assert child.returncode == 1, stderr
    assert "Traceback" not in stderr and str(changed) in stderr and "changed while it was being converted" in stderr
    assert not (out / "manifest.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "fastwds", "convert", "parquet", str(data), str(out), *ARGS,
                              "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 1 and "input changed" in resumed.stderr, resumed.stderr
    subprocess.run([sys.executable, "-m", "fastwds", "convert", "parquet", str(data), str(out), *ARGS,
                    "--overwrite"], check=True, capture_output=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in clean_run["shards"]]
