"""Files that are either complete or absent: written under a temporary name, fsynced, renamed into
place, and the directory fsynced, so neither a crash nor a power loss leaves half a file (or a
rename that is lost). Task records, which ``--resume`` trusts, are written this way."""

from __future__ import annotations

import os
import re
from pathlib import Path


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(name: str) -> str:
    """The name ``write_bytes_atomically`` writes ``name`` under first: unique to this process
    and thread, so concurrent writers of the same path never share one (``TEMPORARY`` matches it)."""
    import threading

    return f"{name}.{os.getpid()}-{threading.get_ident()}.partial"


TEMPORARY = re.compile(r"\.\d+-\d+\.partial$")


def remove_temporaries(folder: Path) -> int:
    """Remove the temporary files a killed writer left in ``folder`` (only call this while no
    one else can be writing there: convert holds the output's run lock). Returns how many."""
    removed = 0
    for path in folder.glob("*.partial"):
        if TEMPORARY.search(path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def write_bytes_atomically(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same folder."""
    path = Path(path)
    partial = path.with_name(temporary_name(path.name))
    try:
        with open(partial, "wb") as file:
            file.write(data)
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException as error:
        partial.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:  # write() errors name no file
            error.filename = str(path)
        raise
    if fsync:
        fsync_directory(path.parent)


def write_text_atomically(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    write_bytes_atomically(path, text.encode("utf-8"), fsync)
