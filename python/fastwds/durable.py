"""Files that are either complete or absent: written under a temporary name, fsynced, renamed into
place, and the directory fsynced, so neither a crash nor a power loss leaves half a file (or a
rename that is lost). Task records, which ``--resume`` trusts, are written this way."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomically(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same folder (unique to this
    process and thread, so concurrent writers of the same path never share one)."""
    import threading

    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        with open(partial, "wb") as file:
            file.write(data)
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_directory(path.parent)


def write_text_atomically(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    write_bytes_atomically(path, text.encode("utf-8"), fsync)
