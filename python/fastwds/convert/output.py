"""Where a conversion writes: a local folder (``LocalOutput``) or an s3:// prefix (``S3Output``).
Both offer the few operations the driver and the commit protocol need, with the same guarantee:
a name holds a complete file or nothing.

- local: small files are written through a temporary name, fsynced and renamed; a complete
  staged shard is renamed over its final name; the run lock is an ``flock``; attempts stage in
  ``.fastwds/attempts/`` of the same file system, so publishing is a rename.
- s3: small files are one PUT; a complete staged shard is uploaded with ``upload_file``
  (multipart above 64 MB, aborted on failure), so an object appears only whole; the run lock is
  a lease object renewed while the run lives; attempts stage on the local scratch disk
  (``FASTWDS_SCRATCH``, else the temporary folder), one task's shard(s) at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from fastwds import storage
from fastwds.convert.layout import ATTEMPTS_DIR, LOCK_FILE, STATE_DIR, TASKS_DIR
from fastwds.durable import fsync_directory, remove_temporaries, write_bytes_atomically
from fastwds.errors import FastwdsError

log = logging.getLogger("fastwds")


class OutputLockedError(FastwdsError):
    """Another live fastwds run is writing to the same output."""


def holder_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "pid_space": pid_space()}


def pid_space() -> str | None:
    """What makes a pid mean one process: this boot of this machine and this PID namespace (a
    container has its own). None where Linux's /proc does not tell."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{boot.read().strip()}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def holder_is_dead(holder: dict[str, Any]) -> bool:
    """True only when the holder's pid is in our own pid space and no process has it: then its
    lease need not be waited out. (A reused pid makes it look alive: we wait, which is safe.)"""
    if pid_space() is None or holder.get("pid_space") != pid_space() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def locked_message(location: str, holder: str, extra: str = "") -> str:
    try:
        who = json.loads(holder)
        what = f"pid {who['pid']} on {who['host']}, started {who['started']}"
    except (ValueError, KeyError, TypeError):
        what = "holder unknown"
    return (f"{location} is being written by another fastwds run ({what}{extra}); wait for it to finish or stop "
            "it, then run again (with --resume to continue its work)")


class Output:
    location: str  # the path or URL, for messages and for workers to open it again
    name: str  # the folder's (or prefix's) last name: the dataset's name in the wids index

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes:
        """The file's bytes; FileNotFoundError when there is none."""
        raise NotImplementedError

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a small file atomically and durably."""
        raise NotImplementedError

    def publish(self, local: Path, name: str) -> None:
        """Give a complete local file its final name, replacing what is there (for a shard:
        an identical copy another attempt published)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make what was published durable."""

    def list(self, folder: str = "") -> list[str]:
        """Names of the files under ``folder`` ('' = the top level only, without the state)."""
        raise NotImplementedError

    def delete(self, names: list[str]) -> None:
        raise NotImplementedError

    def lock(self) -> AbstractContextManager:
        """The run lock, held by the driver for the whole run."""
        raise NotImplementedError

    def staging_root(self) -> Path:
        """A local folder where attempts stage their files."""
        raise NotImplementedError

    def log_attempt(self, line: str) -> None:
        raise NotImplementedError

    def remove_temporaries(self) -> int:
        """Remove what writers killed mid-file left (a local folder's temporary names; an object
        store has none: uploads appear whole). Only under the run lock."""
        return 0

    def close(self) -> None:
        """At the end of a run: remove the staging folders it made outside the output, if empty."""

    def recorded_tasks(self) -> set[str]:
        """Names of the tasks that have a record (are finished)."""
        return {name.removesuffix(".json") for name in self.list(TASKS_DIR) if name.endswith(".json")}

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def abort_uploads(self) -> int:
        """Abort pending uploads of dead attempts (object stores only)."""
        return 0


def open_output(location: str | os.PathLike) -> Output:
    """The output at ``location``: an s3:// URL or a local folder (created if needed)."""
    storage.check_location(location)
    if storage.is_url(location):
        return S3Output(storage.parse_url(location))
    return LocalOutput(Path(location))


class LocalOutput(Output):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)
        self.name = root.resolve().name

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def read_bytes(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def write_bytes(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(path, data)

    def publish(self, local: Path, name: str) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, target)
        self._published = {*getattr(self, "_published", set()), target.parent}

    def flush(self) -> None:
        for folder in getattr(self, "_published", set()):
            fsync_directory(folder)
        self._published = set()

    def list(self, folder: str = "") -> list[str]:
        base = self.root / folder
        if not base.is_dir():
            return []
        if folder:
            return sorted(str(p.relative_to(base).as_posix()) for p in base.rglob("*") if p.is_file())
        return sorted(p.name for p in base.iterdir() if p.name != STATE_DIR)

    def delete(self, names: list[str]) -> None:
        for name in names:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def lock(self) -> AbstractContextManager:
        from fastwds.convert.commit import RunLock

        return RunLock(self.root / LOCK_FILE, self.location)

    def staging_root(self) -> Path:
        # The output's own file system: a staged file is published by a rename.
        return self.root / ATTEMPTS_DIR

    def remove_temporaries(self) -> int:
        return sum(remove_temporaries(folder) for folder in (self.root, self.root / TASKS_DIR) if folder.is_dir())

    def log_attempt(self, line: str) -> None:
        # One short O_APPEND write per attempt: lines from concurrent attempts do not interleave.
        path = self.root / STATE_DIR / "attempts.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "a", encoding="utf-8") as log_file:
                log_file.write(line + "\n")
        except OSError as error:
            error.filename = error.filename or str(path)  # a failed write() names no file
            raise


class S3Output(Output):
    def __init__(self, url: storage.S3Url) -> None:
        self.url = url
        self.location = str(url).rstrip("/")
        self.name = url.key.rstrip("/").rsplit("/", 1)[-1] or url.bucket

    def exists(self, name: str) -> bool:
        return storage.head(self.url.join(name)) is not None

    def read_bytes(self, name: str) -> bytes:
        return storage.read_bytes(self.url.join(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        storage.put_bytes(self.url.join(name), data)

    def publish(self, local: Path, name: str) -> None:
        storage.upload_file(local, self.url.join(name))
        local.unlink()

    def list(self, folder: str = "") -> list[str]:
        base = self.url.join(folder) if folder else self.url
        names = [entry["relative"] for entry in storage.list_objects(base)]
        if folder:
            return sorted(names)
        return sorted({name.split("/", 1)[0] for name in names if not name.startswith(STATE_DIR + "/")})

    def delete(self, names: list[str]) -> None:
        targets = []
        for name in names:
            listed = storage.list_objects(self.url.join(name))  # a "folder": everything under it
            targets += [entry["url"] for entry in listed] or [self.url.join(name)]
        storage.delete_objects(targets)

    def lock(self) -> AbstractContextManager:
        return S3Lease(self.url.join(LOCK_FILE), self.location)

    def staging_root(self) -> Path:
        digest = hashlib.sha256(self.location.encode()).hexdigest()[:16]
        return storage.scratch_root() / digest / "attempts"

    def close(self) -> None:
        # The scratch folders of this output on this machine, once no attempt uses them: runs
        # into many prefixes must not leave an empty folder each. (A dead attempt's files stay
        # until the next run on the output removes them: they may still be uploading.)
        for folder in (self.staging_root(), self.staging_root().parent):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                return

    def log_attempt(self, line: str) -> None:
        # Objects cannot be appended to: one small object per attempt.
        attempt = json.loads(line)
        self.write_bytes(f"{STATE_DIR}/attempts-log/{attempt['task']}.{attempt['attempt']}.json", line.encode())

    def abort_uploads(self) -> int:
        return storage.abort_uploads(self.url)


class S3Lease:
    """The run lock on an object store: a lease object made with a conditional PUT (only one run
    can create it), renewed every ``TTL / 3`` by a thread while the run lives, deleted at the end.
    A run that died leaves a lease that expires after ``TTL``; the next run then takes it over."""

    TTL = 60.0

    def __init__(self, url: storage.S3Url, location: str) -> None:
        self.url = url
        self.location = location
        self.token = uuid.uuid4().hex
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        if not storage.create_bytes(url, self._content()):
            try:
                current = storage.read_bytes(url).decode("utf-8", "replace")
                holder = json.loads(current)
                # A run killed on this machine (SIGKILL, a crash) cannot renew: no need to wait out its minute.
                expires = 0 if holder_is_dead(holder) else holder.get("expires", 0)
            except (FileNotFoundError, ValueError, AttributeError):  # released meanwhile, or not ours to read
                current, expires = "", 0
            if expires > time.time() or not self._take_over():
                left = f", its lease runs for {max(0, expires - time.time()):.0f} more s" if expires else ""
                raise OutputLockedError(locked_message(location, current, left))
        self.thread = threading.Thread(target=self._renew, name="fastwds-lease", daemon=True)
        self.thread.start()

    def _content(self) -> bytes:
        return json.dumps({**holder_info(), "token": self.token, "expires": time.time() + self.TTL}).encode()

    def _take_over(self) -> bool:
        storage.delete_objects([self.url])
        return storage.create_bytes(self.url, self._content())

    def _renew(self) -> None:
        while not self.stop.wait(self.TTL / 3):
            try:
                current = json.loads(storage.read_bytes(self.url))
                if current.get("token") != self.token:
                    log.error("%s: another run took over the lease of this output", self.location)
                    return
                storage.put_bytes(self.url, self._content())
            except (FastwdsError, OSError, ValueError) as error:
                log.warning("%s: could not renew the run's lease: %s", self.location, error)

    def release(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
            try:
                if json.loads(storage.read_bytes(self.url)).get("token") == self.token:
                    storage.delete_objects([self.url])
            except (FastwdsError, OSError, ValueError):
                pass  # it expires by itself

    def __enter__(self) -> S3Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
