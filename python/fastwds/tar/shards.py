"""Shard files: which paths a user's argument names (a shard, a folder, a brace or glob pattern)
and how to open one (gzip-compressed shards are recognised by their magic bytes, not their name)."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from contextlib import contextmanager
import posixpath
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fastwds import storage
from fastwds.convert.layout import RUN_FILE, TASKS_DIR
from fastwds.energon import META_DIR
from fastwds.errors import InvalidInputError
from fastwds.paths import expand_braces, matching_files

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
READ_BUFFER = 1 << 20


@contextmanager
def open_shard(path: str | os.PathLike) -> Iterator[tuple[BinaryIO, bool]]:
    """The shard's byte stream (gunzipped when it is gzip) and whether it is compressed. A shard
    in an object store is read forward in large GETs."""
    location = os.fspath(path)
    if storage.is_url(location):
        url = storage.parse_url(location)
        magic = storage.read_bytes(url, 0, 2)
        with storage.open_stream(url) as raw:
            if magic == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                    yield unzipped, True  # type: ignore[misc]
            else:
                yield raw, False
        return
    with open(location, "rb", buffering=READ_BUFFER) as raw:
        magic = raw.read(2)
        raw.seek(0)
        if magic == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield unzipped, True  # type: ignore[misc]  # GzipFile is a binary stream
        else:
            yield raw, False


def is_shard_name(name: str) -> bool:
    return name.endswith(SHARD_SUFFIXES) and not name.startswith(".")


@dataclass
class ShardSet:
    paths: list[Path]
    root: Path  # where dataset files (manifest.json, index.wids.json, .nv-meta) are looked for
    whole_folder: bool  # every shard under root was selected (so unlisted/missing shards matter)
    # Shards in an object store: ``paths`` and ``root`` are in a local mirror holding the small
    # dataset files (manifest, indexes, .nv-meta); each path maps to its shard's URL.
    urls: dict[Path, str] = field(default_factory=dict)
    mirror: tempfile.TemporaryDirectory | None = None

    def relative(self, path: Path) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def location(self, path: Path) -> str:
        """Where the shard's bytes are: its path, or its URL."""
        return self.urls.get(path, str(path))

    def open(self, path: Path):
        return open_shard(self.location(path))

    def size(self, path: Path) -> int:
        return storage.stat_file(self.location(path)).size

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.cleanup()
            self.mirror = None


def expand_shards(spec: str | os.PathLike) -> ShardSet:
    """A shard file, a folder (every ``.tar`` below it, hidden folders excluded), or a pattern with
    braces and/or glob characters; or the same in an object store (a shard URL, a prefix, a brace
    pattern). Raises InvalidInputError when nothing is found."""
    spec = os.fspath(spec)
    storage.check_location(spec)  # 's3://' without a bucket, 'gs://': said so, not looked for locally
    if storage.is_url(spec):
        return _remote_shards(spec)
    if os.path.isdir(spec):
        root = Path(spec)
        found: list[Path] = []
        for directory, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(Path(directory) / f for f in filenames if is_shard_name(f))
        if not found:
            raise InvalidInputError(f"{spec}: no shards (.tar files) in this folder or below it"
                                    + (UNFINISHED if (root / RUN_FILE).is_file() else ""))
        return ShardSet(sorted(found, key=lambda p: os.path.relpath(p, root).split(os.sep)), root, True)
    if os.path.isfile(spec):
        return ShardSet([Path(spec)], Path(spec).parent, False)
    paths = matching_files(spec, missing="shard not found")
    parents = {p.parent.resolve() for p in paths}
    root = Path(os.path.commonpath([str(p) for p in parents])) if parents else Path(".")
    return ShardSet(paths, root, False)


UNFINISHED = ("; it holds a fastwds run that did not finish (no task had published a shard): run the same "
              "`fastwds convert` with --resume to complete it")

# Files beside the shards that verify checks them against: copied into the local mirror.
SIDECAR_SUFFIXES = (".json", ".idx", ".yaml", ".sqlite", ".uuid", ".py", ".md")


def is_sidecar(relative: str) -> bool:
    """Whether verify reads this file beside the shards: the visible ones, Energon's .nv-meta and
    the parts of fastwds' run state that say whether the run finished (not the attempt log)."""
    if not storage.is_hidden(relative):
        return True
    return relative.startswith(f"{META_DIR}/") or relative == RUN_FILE or is_task_record(relative)


def is_task_record(relative: str) -> bool:
    folder, _, name = relative.rpartition("/")
    return folder == TASKS_DIR and name.endswith(".json")


def _remote_shards(spec: str) -> ShardSet:
    candidates = expand_braces(spec)
    whole = len(candidates) == 1 and not is_shard_name(candidates[0].rsplit("/", 1)[-1])
    if whole:  # a prefix: every shard below it
        root = candidates[0].rstrip("/")
        entries = storage.list_files(root, hidden=True)  # .nv-meta/ and fastwds' run state too
        shards = [storage.join(root, e.relative) for e in entries if is_shard_name(e.relative.rsplit("/", 1)[-1])
                  and not storage.is_hidden(e.relative)]
        if not shards:
            unfinished = any(e.relative == RUN_FILE for e in entries)
            raise InvalidInputError(f"{spec}: no shards (.tar objects) under this prefix"
                                    + (UNFINISHED if unfinished else ""))
    else:
        shards = candidates
        for shard in shards:
            if not storage.is_file(shard):
                raise InvalidInputError(f"{shard}: shard not found")
        root = _common_prefix(shards)
        entries = storage.list_files(root, hidden=True)
    mirror = tempfile.TemporaryDirectory(prefix="fastwds-mirror-")
    local_root = Path(mirror.name)
    for entry in entries:  # the small files only: the shards are read where they are
        if entry.relative.endswith(SIDECAR_SUFFIXES) and entry.size < 256 << 20 and is_sidecar(entry.relative):
            target = local_root / entry.relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if is_task_record(entry.relative):  # only their names are read (which tasks finished): no GET each
                target.touch()
                continue
            target.write_bytes(storage.read_bytes(storage.parse_url(storage.join(root, entry.relative))))
    urls = {local_root / storage.parse_url(shard).relative_to(storage.parse_url(root)): shard for shard in shards}
    return ShardSet(list(urls), local_root, whole, urls, mirror)


def _common_prefix(urls: list[str]) -> str:
    parsed = [storage.parse_url(u) for u in urls]
    folders = [p.key.rsplit("/", 1)[0] if "/" in p.key else "" for p in parsed]
    common = posixpath.commonpath(folders) if all(folders) else ""
    return str(storage.S3Url(parsed[0].bucket, common)).rstrip("/")
