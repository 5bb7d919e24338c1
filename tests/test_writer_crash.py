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
