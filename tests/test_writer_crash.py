"""A writer killed with SIGKILL never leaves a file that looks like a finished shard."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

CHILD = textwrap.dedent("""
    import sys, fastwds
    out, kill_after = sys.argv[1], int(sys.argv[2])
    with fastwds.ShardWriter(out + "/s-%04d.tar", maxcount=7) as writer:
        for i in range(10_000):
            writer.write({"__key__": f"k{i:05d}", "bin": bytes([i % 251]) * (20_000 + i)})
            if i == kill_after:
                print("ready", flush=True)
                sys.stdin.read()  # wait here until the parent kills us
""")


def run_child(out: Path, kill_after: int, wait_for: list[str]) -> None:
    """Kill the child once it has handed over sample ``kill_after`` and the shards ``wait_for``
    exist: a full shard is fsynced and renamed on a background thread, which must finish it
    while the writer waits for its next sample."""
    with subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(kill_after)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 10
        while not all((out / name).exists() for name in wait_for) and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL


def clean_shards(out: Path, n: int) -> dict[str, str]:
    import fastwds

    with fastwds.ShardWriter(str(out / "s-%04d.tar"), maxcount=7, fsync=False) as writer:
        for i in range(n):
            writer.write({"__key__": f"k{i:05d}", "bin": bytes([i % 251]) * (20_000 + i)})
    return {r.name: r.sha256 for r in writer.records}


@pytest.mark.parametrize("wait", [True, False], ids=["paused", "at-once"])
@pytest.mark.parametrize("kill_after", [0, 6, 7, 30])
def test_sigkill_leaves_only_complete_shards(tmp_path, kill_after, wait):
    out = tmp_path / "killed"
    out.mkdir()
    # Samples 0..kill_after were handed to the writer: whole shards of 7 are complete.
    complete = [f"s-{i:04d}.tar" for i in range((kill_after + 1) // 7)]
    run_child(out, kill_after, complete if wait else [])
    finished = sorted(p.name for p in out.glob("*.tar"))
    if wait:
        assert finished == complete
    else:  # killed at once: the last complete shard may still have been finishing (.partial)
        assert finished in (complete, complete[:-1])
    assert all(p.name.endswith(".tar.partial") for p in out.iterdir() if p.name not in finished)
    reference = clean_shards(tmp_path / "clean", 35)
    for name in finished:
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == reference[name]


HOLDER = textwrap.dedent("""
    import sys, fastwds
    writer = fastwds.ShardWriter(sys.argv[1], maxcount=3, fsync=False)
    writer.write({"__key__": "mine-0", "bin": b"A" * 5000})
    print("ready", flush=True)
    if sys.stdin.readline() == "close\\n":
        for i in range(1, 3):
            writer.write({"__key__": f"mine-{i}", "bin": b"A" * 5000})
        print(*(f"{r.name} {r.sha256}" for r in writer.close()), flush=True)
    else:
        sys.stdin.read()  # wait to be killed
""")


def start_holder(pattern: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, pattern], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    return child


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_second_writer_on_the_same_shard_is_refused(tmp_path, overwrite):
    """Two live writers on one pattern (two DDP ranks, a rerun while the first still runs): the
    second is refused with a typed error naming the shard, instead of both writing into, and
    renaming, the same .partial. The first writer's shard is whole and its record true."""
    import fastwds
    from fastwds import _core

    pattern = str(tmp_path / "x-%06d.tar")
    with start_holder(pattern) as holder:
        second = fastwds.ShardWriter(pattern, maxcount=3, fsync=False, overwrite=overwrite)
        with pytest.raises(_core.ShardBusyError) as info:
            second.write({"__key__": "theirs-0", "bin": b"B" * 5000})
        assert isinstance(info.value, BlockingIOError)  # an OSError with errno and filename
        assert "another writer is writing" in str(info.value) and "x-000000.tar" in str(info.value)
        assert info.value.filename == pattern % 0 + ".partial"
        with pytest.raises(fastwds.WriterClosedError):
            second.close()
        del second  # its failure must not have removed the holder's .partial
        holder.stdin.write("close\n")
        holder.stdin.flush()
        name, sha256 = holder.stdout.readline().split()
    assert holder.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-000000.tar"]
    assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == sha256
    samples = list(fastwds.WebDataset(str(tmp_path / name), decode=False))
    assert [s["__key__"] for s in samples] == ["mine-0", "mine-1", "mine-2"]


def test_two_writers_in_one_process_are_refused_too(tmp_path):
    import fastwds
    from fastwds import _core

    pattern = str(tmp_path / "x-%06d.tar")
    first = fastwds.ShardWriter(pattern, fsync=False)
    first.write({"__key__": "a", "txt": "first"})
    second = fastwds.ShardWriter(pattern, fsync=False)
    with pytest.raises(_core.ShardBusyError, match="x-000000.tar"):
        second.write({"__key__": "b", "txt": "second"})
    [record] = first.close()
    assert [s["txt"] for s in fastwds.WebDataset(record.path, decode=False)] == [b"first"]


def test_the_partial_of_a_killed_writer_is_taken_over(tmp_path):
    """flock is dropped by the kernel when its process dies: a SIGKILLed writer's .partial does
    not block the next run, which truncates it and writes the shard from scratch."""
    import fastwds

    pattern = str(tmp_path / "x-%06d.tar")
    with start_holder(pattern) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    partial = tmp_path / "x-000000.tar.partial"
    assert partial.exists()
    with fastwds.ShardWriter(pattern, fsync=False) as writer:
        writer.write({"__key__": "next-run", "txt": "hello"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-000000.tar"]
    assert [s["__key__"] for s in fastwds.WebDataset(str(tmp_path / "x-000000.tar"), decode=False)] == ["next-run"]
    assert hashlib.sha256((tmp_path / "x-000000.tar").read_bytes()).hexdigest() == writer.records[0].sha256
