"""The commit protocol: how an attempt at a task becomes finished output, whatever else happens
(a crash, a retry that overlaps the first attempt, a straggler, a second run on the same folder).

- **One live run per output folder.** The driver holds an advisory lock (``flock``) on
  ``.fastwds/lock`` for the whole run; a second run is refused with a message naming the holder.
  The kernel releases the lock when its holder dies, so a stale lock is taken over by simply
  locking again. Each run writes a new ``session`` id into ``run.json``.
- **Attempts write under names of their own.** Every attempt of a task stages its shards and
  sidecar indexes in ``.fastwds/attempts/<task>.<attempt id>/`` and holds a lock on that folder
  while it lives. Two attempts of one task never touch each other's files.
- **Publishing is atomic and idempotent.** A complete staged file is renamed over its final name
  (sidecars before shards). Attempts of one task produce the same bytes by construction, so a
  shard replaced by another attempt's copy is the same shard. An attempt of an earlier session
  (a dead run's straggler) does not publish.
- **The task record is the last write.** Only then does ``--resume`` consider the task finished.
- **Cleanup never deletes what a live attempt owns.** A staging folder is removed only by its own
  attempt, or by a later run after taking that folder's lock (which proves its attempt is dead).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

from fastwds.convert.layout import RUN_FILE
from fastwds.convert.output import Output, OutputLockedError, holder_info, locked_message
from fastwds.errors import FastwdsError

log = logging.getLogger("fastwds")

ATTEMPT_LOCK = ".lock"
# Fault injection for the tests: an attempt stops itself (SIGSTOP) at the named point of the
# protocol, so a test can force the interleaving it wants, then let it go on (SIGCONT).
STOP_AT_ENV = "FASTWDS_TEST_STOP_AT"
ATTEMPT_OWNER = ".owner.json"


class SupersededError(FastwdsError):
    """An attempt of an earlier run (session) tried to publish into a folder a newer run owns."""


def new_session() -> str:
    return uuid.uuid4().hex


def current_session(output: Output) -> str | None:
    try:
        return json.loads(output.read_text(RUN_FILE)).get("session")
    except (OSError, ValueError):
        return None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class RunLock:
    """A local output folder's run lock, held from before anything is read until the manifest is
    written. Released by ``release`` or, whatever happens, when the process ends."""

    def __init__(self, path: Path, location: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(self.fd):
            holder = os.pread(self.fd, 4096, 0).decode("utf-8", "replace")
            os.close(self.fd)
            raise OutputLockedError(locked_message(location, holder))
        info = json.dumps(holder_info()).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, info, 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Attempt:
    """One attempt at one task: its staging folder (locked while the attempt lives), then
    publishing and the record. Create it in the process that does the work."""

    def __init__(self, output: Output, task_name: str, session: str) -> None:
        self.output = output
        self.task_name = task_name
        self.session = session
        self.id = uuid.uuid4().hex[:12]
        self.dir = output.staging_root() / f"{task_name}.{self.id}"
        self.dir.mkdir(parents=True)
        self.lock_fd = os.open(self.dir / ATTEMPT_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)  # new and unique: never contended
        try:
            owner = json.dumps({**holder_info(), "task": task_name, "attempt": self.id, "session": session})
            (self.dir / ATTEMPT_OWNER).write_text(owner)
            output.log_attempt(owner)
        except BaseException:  # a full disk: no half-made attempt holding its lock until the process ends
            self.close()
            raise

    def staged_files(self) -> list[str]:
        """The complete files the writer left in the staging folder, sidecar indexes first and
        shards last, so a shard with its final name never lacks the indexes asked for."""
        names = [p.name for p in self.dir.iterdir()
                 if p.name not in (ATTEMPT_LOCK, ATTEMPT_OWNER) and not p.name.endswith(".partial")]
        return sorted(names, key=lambda name: (name.endswith(".tar"), name))

    def check_current(self) -> None:
        if current_session(self.output) != self.session:
            raise SupersededError(f"task {self.task_name}: a newer run owns {self.output.location}; this attempt "
                                  "(of an earlier run) does not publish")

    def publish(self) -> None:
        """Give every staged file its final name (replacing an identical copy another attempt of
        this task may have published), then make that durable."""
        stop_here("staged")
        self.check_current()
        for name in self.staged_files():
            self.output.publish(self.dir / name, name)
        self.output.flush()
        stop_here("published")

    def close(self) -> None:
        """Remove the staging folder (whatever is left in it) and release its lock."""
        if self.lock_fd >= 0:
            shutil.rmtree(self.dir, ignore_errors=True)
            os.close(self.lock_fd)
            self.lock_fd = -1

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_here(point: str) -> None:
    if os.environ.get(STOP_AT_ENV) == point:
        os.kill(os.getpid(), signal.SIGSTOP)


def remove_dead_attempts(output: Output) -> int:
    """Remove the staging folders of attempts that are no longer alive (their lock can be
    taken); a live attempt's folder is left alone. Returns how many were removed."""
    removed = 0
    root = output.staging_root()
    if not root.is_dir():
        return 0
    for folder in sorted(root.iterdir()):
        try:
            fd = os.open(folder / ATTEMPT_LOCK, os.O_RDWR)
        except FileNotFoundError:  # created but not locked yet, or half removed: only if old
            if time.time() - folder.stat().st_mtime > 3600:
                shutil.rmtree(folder, ignore_errors=True)
            continue
        except NotADirectoryError:
            folder.unlink()
            continue
        try:
            if _try_lock(fd):
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
            else:
                log.warning("%s: an attempt is still alive (%s); leaving its files alone", folder,
                            (folder / ATTEMPT_OWNER).read_text() if (folder / ATTEMPT_OWNER).exists() else "")
        finally:
            os.close(fd)
    return removed
