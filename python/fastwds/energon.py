"""Megatron-Energon dataset metadata (``.nv-meta/``), so Energon loads the shards without running
``energon prepare``.

Matches what ``energon prepare`` of megatron-energon 7.4.1 writes (``ENERGON_VERSION``; the
tests compare against that version's own ``energon prepare``): the ``X.tar.idx`` beside every
shard, and in ``.nv-meta/``: ``index.sqlite`` (the same ``samples`` and ``sample_parts`` rows),
``.info.json``, ``split.yaml``, ``index.uuid``, plus ``dataset.yaml`` and ``sample_loader.py``
for the SFT chat samples fastwds writes.

The index is built from the shards' own tar headers, as ``energon prepare`` does, so it describes
the bytes on disk rather than what the writer meant to write; the ``.tar.idx`` the writer left
beside each shard is checked against the same headers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import struct
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastwds import __version__
from fastwds.durable import write_bytes_atomically
from fastwds.errors import FastwdsError, InvalidInputError

# Energon's member-name rules are webdataset's (megatron/energon/flavors/webdataset/config.py).
from fastwds.tar.scanner import TarScanner, group_samples

log = logging.getLogger("fastwds")

ENERGON_VERSION = "7.4.1"
META_DIR = ".nv-meta"
INDEX_SQLITE = "index.sqlite"
# Energon's own sample type has no chat fields; this one lives in fastwds (see energon_types.py).
DEFAULT_SAMPLE_TYPE = "fastwds.energon_types:ChatSample"

_LOADER_MARK = "# Written by fastwds"

# Column layout and whitespace as Energon's own statements, so even sqlite_master is the same.
SCHEMA = tuple(
    f"CREATE TABLE {table} (\n" + ",\n".join(" " * 20 + column for column in columns) + "\n" + " " * 16 + ")"
    for table, columns in (
        ("samples", ("tar_file_id INTEGER NOT NULL", "sample_key TEXT NOT NULL UNIQUE",
                     "sample_index INTEGER NOT NULL", "byte_offset INTEGER", "byte_size INTEGER")),
        ("sample_parts", ("tar_file_id INTEGER", "sample_index INTEGER", "part_name TEXT",
                          "content_byte_offset INTEGER", "content_byte_size INTEGER")),
    )
)
# Created after the rows are in, as Energon does (faster than maintaining them while inserting).
INDEXES = (
    "CREATE INDEX idx_samples_by_tar_and_idx ON samples(tar_file_id, sample_index)",
    "CREATE INDEX idx_sample_parts_seq ON sample_parts(tar_file_id, sample_index, content_byte_offset)",
    "CREATE INDEX idx_sample_parts_full ON sample_parts(tar_file_id, sample_index, part_name, "
    "content_byte_offset, content_byte_size)",
)

# The sample loader Energon runs for every sample: media come from exactly the members the JSON's
# ``name`` list names (fastwds checks they agree before writing), so a sample cannot arrive with
# fewer images than its ``<image>`` tokens; a missing member raises a KeyError naming it.
SAMPLE_LOADER_BODY = """
# Each sample's JSON has "media" ("image", "video" or "text"), "name" (its media members, in
# order: "jpg", or "0.jpg", "1.png", ... when there are several), "texts" (role/content turns),
# "id" and "source".
import json


def sample_loader(raw: dict) -> dict:
    document = raw["json"]
    if isinstance(document, (bytes, str)):  # loaded without a decoder
        document = json.loads(document)
    media = [raw[name] for name in document["name"]]
    system = None
    messages = []
    for turn in document["texts"]:
        if turn["role"] == "system":
            system = turn["content"]
        else:
            messages.append(turn)
    return dict(
        messages=messages,
        image=media if document["media"] == "image" else None,
        video=media if document["media"] == "video" else None,
        system=system,
    )


def part_filter(part: str) -> bool:
    return True
"""


def sample_loader_source() -> str:
    return f"{_LOADER_MARK} {__version__} for megatron-energon {ENERGON_VERSION}.\n" + SAMPLE_LOADER_BODY.lstrip("\n")


@dataclass
class ShardIndex:
    """What ``energon prepare`` records about one shard, read from its tar headers."""

    name: str  # path relative to the dataset folder
    samples: list[tuple[str, int, int]] = field(default_factory=list)  # key, first header, bytes to next
    parts: list[tuple[int, str, int, int]] = field(default_factory=list)  # sample, part, data offset, size
    end: int = 0  # where the end-of-archive blocks start

    def tar_idx(self) -> bytes:
        """The ``.tar.idx`` bytes: native uint64 per sample start, then the end offset."""
        offsets = [offset for _, offset, _ in self.samples] + [self.end]
        return struct.pack(f"{len(offsets)}Q", *offsets)

    def to_json(self) -> dict:
        """For a task record: the index is read from the staged shard where the task ran, so the
        end of the run needs no second pass over shards that may be in a bucket by then."""
        return {"name": self.name, "samples": self.samples, "parts": self.parts, "end": self.end}

    @classmethod
    def from_record(cls, record: Any) -> ShardIndex:
        """From the writer's own record of the shard it wrote (``ShardRecord.samples()``): the
        same index as ``index_shard`` reads from the tar headers, without reading the shard again."""
        samples, parts = [], []
        for number, (key, start, end, members) in enumerate(record.samples()):
            samples.append((key, start, end - start))
            parts += [(number, ext, data_offset, size) for ext, data_offset, size in members]
        return cls(record.name, samples, parts, record.data_end)

    @classmethod
    def from_json(cls, value: dict) -> ShardIndex:
        return cls(value["name"], [tuple(s) for s in value["samples"]], [tuple(p) for p in value["parts"]],
                   value["end"])


def index_shard(root: Path, name: str) -> ShardIndex:
    """Read the headers of ``root/name`` (data is skipped, not read) and group members into
    samples the way Energon does: consecutive members with the same key (``fastwds.tar.names``)."""
    index = ShardIndex(name)
    path = root / name
    with open(path, "rb") as file:
        scanner = TarScanner(file, want_data=False)
        for sample in group_samples(iter(scanner)):
            index.samples.append((sample.key, sample.offset, 0))
            index.parts += [(len(index.samples) - 1, ext, member.data_offset, member.size)
                            for ext, member in sample.members]
    if scanner.defects:
        defect = scanner.defects[0]
        raise FastwdsError(f"{path}: {defect.code} at byte {defect.offset}: {defect.detail}")
    index.end = scanner.end_of_data
    bounds = [offset for _, offset, _ in index.samples[1:]] + [index.end]
    index.samples = [(key, start, stop - start) for (key, start, _), stop in zip(index.samples, bounds)]
    return index


def parse_split_ratio(text: str) -> tuple[float, float, float]:
    """``8,1,1`` or ``0.8,0.1,0.1`` -> train, val, test shares."""
    try:
        ratio = tuple(float(part) for part in text.split(","))
    except ValueError:
        ratio = ()
    if len(ratio) != 3 or min(ratio) < 0 or sum(ratio) <= 0:
        raise InvalidInputError(f"not a train,val,test ratio: {text!r} (examples: 8,1,1 or 1,0,0)")
    return ratio  # type: ignore[return-value]


def split_parts(names: Sequence[str], ratio: Sequence[float]) -> dict[str, list[str]]:
    """Shards per split cut the way ``energon prepare --split-ratio`` cuts them (no shuffle):
    in the given order, split ``i`` ends at ``int(len(names) * cumulative_ratio_i)``."""
    total = sum(ratio)
    parts, cumulative, start = {}, 0.0, 0
    for part, share in zip(("train", "val", "test"), ratio):
        cumulative += share / total
        stop = int(len(names) * cumulative)
        parts[part] = list(names[start:stop])
        start = stop
    return parts


def _yaml_scalar(text: str) -> str:
    """A YAML scalar: plain when unambiguous (shard names), else JSON-quoted (valid YAML)."""
    return text if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_./-]*", text) else json.dumps(text)


def _yaml_list(values: Sequence[str], indent: str) -> str:
    if not values:
        return " []\n"
    return "\n" + "".join(f"{indent}- {_yaml_scalar(v)}\n" for v in values)


def split_yaml(parts: dict[str, list[str]], exclude: Sequence[str]) -> str:
    """The layout PyYAML's ``dump(sort_keys=False)`` gives, as ``energon prepare`` writes it."""
    text = "split_parts:\n"
    for part, names in parts.items():
        text += f"  {part}:" + _yaml_list(names, "  ")
    return text + "exclude:" + _yaml_list(exclude, "")


def dataset_yaml(sample_type: str) -> str:
    module, _, cls = sample_type.partition(":")
    return (f"sample_type:\n  __module__: {module}\n  __class__: {cls}\n"
            "sample_loader: sample_loader.py:sample_loader\npart_filter: sample_loader.py:part_filter\n")


def check_sample_type(sample_type: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", sample_type):
        raise InvalidInputError(f"--energon-sample-type {sample_type!r}: expected MODULE:CLASS, "
                                "e.g. fastwds.energon_types:ChatSample")
    return sample_type


def index_shards(output_dir: Path, names: Sequence[str], at_once: int = 16) -> Iterator[ShardIndex]:
    """The index of each shard, in order, reading ``at_once`` shards in parallel (only those are
    held in memory, whatever the dataset size)."""
    with ThreadPoolExecutor(at_once) as pool:
        for start in range(0, len(names), at_once):
            yield from pool.map(lambda name: index_shard(output_dir, name), names[start:start + at_once])


def write_index_sqlite(path: Path, shards: Iterable[ShardIndex]) -> None:
    """Write ``index.sqlite`` under a temporary name, then rename it into place. ``shards`` in
    ``tar_file_id`` order."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    db, committed = sqlite3.connect(partial), False
    try:
        for statement in SCHEMA:
            db.execute(statement)
        for tar_file_id, shard in enumerate(shards):
            db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?)",
                           ((tar_file_id, key, i, offset, size) for i, (key, offset, size) in enumerate(shard.samples)))
            db.executemany("INSERT INTO sample_parts VALUES (?, ?, ?, ?, ?)",
                           ((tar_file_id, *part) for part in shard.parts))
        for statement in INDEXES:
            db.execute(statement)
        db.commit()
        committed = True
    except sqlite3.IntegrityError as error:  # sample_key is UNIQUE across the dataset, as Energon requires
        raise FastwdsError(f"{path}: a sample key occurs in two shards ({error}); Energon needs unique keys") from None
    except sqlite3.Error as error:  # a full disk, an I/O error: sqlite's own exceptions are not OSErrors
        raise FastwdsError(f"{path}: cannot write Energon's index ({error})") from None
    finally:
        db.close()
        if not committed:  # no half-written index left behind
            partial.unlink(missing_ok=True)
    os.replace(partial, path)


def dataset_uuid(shards: Iterable[dict]) -> str:
    """``energon prepare`` writes a random uuid4; a uuid derived from the shards' hashes keeps the
    output deterministic and still changes whenever any shard does."""
    digest = ",".join(f"{s['name']}:{s['sha256']}" for s in sorted(shards, key=lambda s: s["name"]))
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "fastwds-energon:" + digest))


def write_energon_meta(output_dir: Path | None, shards: Sequence[dict], *, split_ratio: Sequence[float],
                       sample_type: str, excluded_keys: set[str] = frozenset(), target: Path | None = None,
                       indexes: Sequence[ShardIndex] | None = None) -> dict:
    """Write ``.nv-meta/`` and any missing ``.tar.idx`` for the shards in ``output_dir``.
    ``shards`` are manifest shard entries (name, samples, sha256); ``excluded_keys`` are sample
    keys Energon must skip (invalid samples kept for inspection). ``indexes`` are the shards'
    indexes when already known (``convert`` reads them from each staged shard where its task
    ran); else they are read from the shards in ``output_dir``. The files go under ``target``
    (default: ``output_dir``; a staging folder when the caller publishes them itself). Returns a
    summary for the manifest, with ``files``: the paths written, relative to ``target``,
    ``.nv-meta/.info.json`` last (Energon reads a folder without it as unprepared)."""
    target = Path(target) if target is not None else Path(output_dir)
    names = sorted(s["name"] for s in shards)  # energon prepare orders shards by sorted path
    expected = {s["name"]: s["samples"] for s in shards}
    if output_dir is not None and foreign_energon_meta(Path(output_dir)):
        raise InvalidInputError(f"{Path(output_dir) / META_DIR} was not written by fastwds; move it away, or "
                                "convert with --no-energon")
    if indexes is None:
        indexes = list(index_shards(Path(output_dir), names))
    by_name = {index.name: index for index in indexes}
    meta = target / META_DIR
    meta.mkdir(parents=True, exist_ok=True)
    # Written in place, the folder must never look prepared before it is complete.
    (meta / ".info.json").unlink(missing_ok=True)
    files: list[str] = []

    def write(relative: str, data: bytes) -> None:
        write_bytes_atomically(target / relative, data)
        files.append(relative)

    # The sample loader marks the folder as fastwds's (see foreign_energon_meta): first.
    write(f"{META_DIR}/sample_loader.py", sample_loader_source().encode())
    counts: dict[str, int] = {}
    exclude: list[str] = []

    def checked(indexes: Iterable[ShardIndex]) -> Iterator[ShardIndex]:
        for index in indexes:
            if len(index.samples) != expected[index.name]:
                raise FastwdsError(f"{output_dir / index.name}: {len(index.samples)} samples in the tar but "
                                   f"{expected[index.name]} recorded when it was written")
            idx = Path(output_dir) / (index.name + ".idx") if output_dir is not None else None
            if idx is not None and not idx.exists():
                write(index.name + ".idx", index.tar_idx())
            elif idx is not None and idx.read_bytes() != index.tar_idx():
                raise FastwdsError(f"{idx}: does not match the shard's tar headers; delete it and run again "
                                   "with --resume")
            exclude.extend(f"{index.name}/{key}" for key, _, _ in index.samples if key in excluded_keys)
            counts[index.name] = len(index.samples)
            yield index

    write_index_sqlite(meta / INDEX_SQLITE, checked(by_name[name] for name in names))
    files.append(f"{META_DIR}/{INDEX_SQLITE}")
    parts = split_parts(names, split_ratio)
    if starved := [part for part, share in zip(parts, split_ratio) if share > 0 and not parts[part]]:
        log.warning("the split ratio %s over %d shard(s) leaves %s without any (splits take whole shards, as "
                    "`energon prepare` cuts them): write more, smaller shards (--max-samples-per-shard)",
                    ",".join(f"{share:g}" for share in split_ratio), len(names), " and ".join(starved))
    write(f"{META_DIR}/split.yaml", split_yaml(parts, exclude).encode())
    write(f"{META_DIR}/dataset.yaml", dataset_yaml(sample_type).encode())
    write(f"{META_DIR}/index.uuid", dataset_uuid(shards).encode())
    info = {"energon_version": ENERGON_VERSION, "shard_counts": counts}
    write(f"{META_DIR}/.info.json", json.dumps(info, indent=2).encode())
    return {"energon_version": ENERGON_VERSION, "meta_dir": META_DIR, "sample_type": sample_type,
            "splits": {part: len(shard_names) for part, shard_names in parts.items()},
            "excluded_samples": len(exclude), "files": files}


def _written_by_fastwds(output: Any) -> bool:
    try:
        return output.read_text(f"{META_DIR}/sample_loader.py").startswith(_LOADER_MARK)
    except (OSError, UnicodeDecodeError):
        return False


def foreign_energon_meta(output: Any) -> bool:
    """True when the output's ``.nv-meta/`` holds files fastwds did not write (recognised by the
    sample loader it writes first): those are not fastwds's to replace. ``output``: a folder or a
    ``fastwds.convert.output.Output``."""
    output = _as_output(output)
    return bool(output.list(META_DIR)) and not _written_by_fastwds(output)


def remove_energon_meta(output: Any) -> bool:
    """Remove a ``.nv-meta/`` fastwds wrote earlier, so a run without --energon does not leave an
    index describing shards that are gone. Returns True if one was removed; a ``.nv-meta/``
    someone else wrote is left alone."""
    output = _as_output(output)
    if not _written_by_fastwds(output):
        return False
    output.delete([META_DIR])
    return True


def _as_output(output: Any) -> Any:
    if isinstance(output, (str, os.PathLike)):
        from fastwds.convert.output import open_output

        return open_output(output)
    return output
