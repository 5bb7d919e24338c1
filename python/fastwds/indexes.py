"""Dataset-level index files. Per-shard indexes (Energon ``.tar.idx``, DALI ``.idx``) are written
by the Rust writer when a shard is finished; the wids index spans all shards, so it is written once
the shard records of every task are known."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from fastwds._core import ShardRecord
from fastwds.durable import write_text_atomically

WIDS_KIND = "wids-shard-index-v1"


def wids_document(entries: Iterable[tuple[str, int, int]], name: str) -> dict:
    """The wids shard index for ``(url, nsamples, filesize)`` entries, urls relative to the index."""
    shardlist = [{"url": url, "nsamples": nsamples, "filesize": filesize} for url, nsamples, filesize in entries]
    return {"__kind__": WIDS_KIND, "wids_version": 1, "name": name, "shardlist": shardlist}


def wids_index(shards: Iterable[ShardRecord | tuple[str, int, int]], index_path: str | os.PathLike,
               name: str) -> dict:
    """The wids shard index. ``shards`` are writer records or ``(path, nsamples, filesize)``
    tuples; urls are written relative to the index file's folder, which is how wids resolves them."""
    base = Path(index_path).resolve().parent
    entries = []
    for shard in shards:
        path, nsamples, filesize = (shard.path, shard.num_samples, shard.size) if isinstance(shard, ShardRecord) else shard
        entries.append((os.path.relpath((base / path).resolve(), base), nsamples, filesize))
    return wids_document(entries, name)


def write_wids_index(shards: Iterable[ShardRecord | tuple[str, int, int]], index_path: str | os.PathLike,
                     name: str) -> dict:
    """Write the wids index (``index.wids.json``) of ``shards``, given as the writer's
    ``ShardRecord``s or as ``(path, nsamples, filesize)`` tuples: shard urls relative to the index's
    folder, written atomically (never a half-written index). Returns the index."""
    index = wids_index(shards, index_path, name)
    write_text_atomically(index_path, json.dumps(index, indent=2) + "\n")
    return index
