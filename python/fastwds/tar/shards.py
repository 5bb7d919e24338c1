"""Shard files: which paths a user's argument names (a shard, a folder, a brace or glob pattern)
and how to open one (gzip-compressed shards are recognised by their magic bytes, not their name)."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fastwds.errors import InvalidInputError
from fastwds.paths import matching_files

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
READ_BUFFER = 1 << 20


@contextmanager
def open_shard(path: str | os.PathLike) -> Iterator[tuple[BinaryIO, bool]]:
    """The shard's byte stream (gunzipped when it is gzip) and whether it is compressed."""
    with open(path, "rb", buffering=READ_BUFFER) as raw:
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

    def relative(self, path: Path) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")


def expand_shards(spec: str | os.PathLike) -> ShardSet:
    """A shard file, a folder (every ``.tar`` below it, hidden folders excluded), or a pattern with
    braces and/or glob characters. Raises InvalidInputError when nothing is found."""
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        root = Path(spec)
        found: list[Path] = []
        for directory, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(Path(directory) / f for f in filenames if is_shard_name(f))
        if not found:
            raise InvalidInputError(f"{spec}: no shards (.tar files) in this folder or below it")
        return ShardSet(sorted(found, key=lambda p: os.path.relpath(p, root).split(os.sep)), root, True)
    if os.path.isfile(spec):
        return ShardSet([Path(spec)], Path(spec).parent, False)
    paths = matching_files(spec, missing="shard not found")
    parents = {p.parent.resolve() for p in paths}
    root = Path(os.path.commonpath([str(p) for p in parents])) if parents else Path(".")
    return ShardSet(paths, root, False)
