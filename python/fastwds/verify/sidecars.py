"""Check the files readers keep beside the shards against what the shards really hold:
``manifest.json`` (fastwds), wids' JSON shard index, DALI's ``X.idx``, Energon's ``X.tar.idx`` and
``.nv-meta`` (``.info.json`` shard counts, ``index.sqlite``). Formats: COMPAT.md.

``verify`` scans each shard once into a ``ShardScan`` and hands it to ``Sidecars.check_shard``;
``Sidecars.finish`` then reports shards an index lists that were never found.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastwds.convert.layout import MANIFEST_NAME, RUN_FILE, TASKS_DIR
from fastwds.energon import META_DIR
from fastwds.indexes import WIDS_KIND


@dataclass
class ScannedSample:
    key: str
    offset: int  # first header block of the sample's first member
    parts: list[tuple[str, int, int, str]]  # (extension, data offset, size, member name)


@dataclass
class ShardScan:
    path: Path
    name: str  # relative to the dataset root, "/"-separated
    samples: list[ScannedSample] = field(default_factory=list)
    end_of_data: int = 0  # end of the last member: where the end-of-archive blocks start
    size: int = 0
    sha256: str | None = None
    md5: str | None = None
    compressed: bool = False
    intact: bool = True  # no tar structure defect: offsets can be compared with indexes


# report(code, message, shard=..., key=..., member=...)
Reporter = Callable[..., None]


def resolved(path: str | os.PathLike) -> str:
    return os.path.realpath(path)


def dali_index_path(shard: Path) -> Path:
    return shard.with_suffix(".idx")


def energon_index_path(shard: Path) -> Path:
    return shard.with_name(shard.name + ".idx")


def _first_difference(expected: list, actual: list) -> int:
    return next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))


class Sidecars:
    """The dataset-level files found at the dataset root, and the checks against them."""

    def __init__(self, root: Path, report: Reporter) -> None:
        self.root = root
        self.report = report
        self.checked: list[str] = []
        self.manifest: dict[str, dict] | None = None  # resolved shard path -> manifest entry
        # What a fastwds manifest says was written beside the shards: those files must be there.
        self.declared_wids: str | None = None
        self.declared_dali = self.declared_energon_idx = False
        self.declared_energon_meta: str | None = None
        self.wids: list[tuple[str, dict[str, dict]]] = []  # (index file, resolved path -> entry)
        self.energon_counts: dict[str, tuple[str, int, int]] | None = None  # resolved -> (name, id, count)
        self.energon_sqlite: Path | None = None
        self.seen: set[str] = set()
        self.dali_checked = 0
        self.energon_idx_checked = 0
        self._load_manifest()
        self._load_wids()
        self._load_energon()

    # -- loading -------------------------------------------------------------------------------

    def _load_manifest(self) -> None:
        path = self.root / MANIFEST_NAME
        if not path.is_file():
            return
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            entries = {resolved(self.root / entry["name"]): entry for entry in manifest["shards"]}
        except (OSError, ValueError, KeyError, TypeError) as error:
            # Named as in the dataset: a bucket's manifest is read from a local mirror.
            self.report("manifest_invalid", f"cannot read its shard list ({type(error).__name__}: {error})",
                        shard=MANIFEST_NAME)
            return
        self.manifest = entries
        self.checked.append(f"{MANIFEST_NAME} ({shards(len(entries))})")
        indexes, options, energon = (manifest.get(name) for name in ("indexes", "options", "energon"))
        if isinstance(indexes, dict) and isinstance(indexes.get("wids"), str):
            self.declared_wids = indexes["wids"]
        if isinstance(options, dict):
            self.declared_dali = options.get("dali_index") is True
            self.declared_energon_idx = options.get("energon_index") is True
        if isinstance(energon, dict) and isinstance(energon.get("meta_dir"), str):
            self.declared_energon_meta = energon["meta_dir"]

    def _load_wids(self) -> None:
        if self.declared_wids is not None and not (self.root / self.declared_wids).is_file():
            self.report("wids_index_mismatch", f"{MANIFEST_NAME} names the wids index {self.declared_wids}, which "
                        "is not in the folder", shard=self.declared_wids)
        for path in sorted(self.root.glob("*.json")):
            if path.name == MANIFEST_NAME:
                continue
            try:
                # A file the manifest names is the wids index whatever it holds; others only if they say so.
                if path.name != self.declared_wids:
                    with open(path, "rb") as stream:
                        if WIDS_KIND.encode() not in stream.read(4096):
                            continue
                index = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(index, dict) or index.get("__kind__") != WIDS_KIND:
                    raise ValueError(f"no \"__kind__\": \"{WIDS_KIND}\" object")
                base = path.parent
                entries = {}
                for entry in index["shardlist"]:
                    url = entry["url"]
                    if "://" in url:
                        self.report("index_not_checked", f"{path.name}: remote url {url!r} not checked",
                                    shard=path.name)
                        continue
                    entries[resolved(base / url)] = entry
            except (OSError, ValueError, KeyError, TypeError) as error:
                self.report("wids_index_mismatch", f"{path.name}: not a readable wids index ({type(error).__name__}: "
                            f"{error})", shard=path.name)
                continue
            self.wids.append((path.name, entries))
            self.checked.append(f"{path.name} (wids, {shards(len(entries))})")

    def _load_energon(self) -> None:
        meta = self.root / META_DIR
        if not meta.is_dir():
            if self.declared_energon_meta is not None:
                self.report("energon_meta_mismatch", f"{MANIFEST_NAME} says Energon's {self.declared_energon_meta}/ "
                            "was written, and it is not in the folder", shard=self.declared_energon_meta)
            return
        info = meta / ".info.json"
        if not info.is_file():
            self.report("index_not_checked", f"{META_DIR}: no .info.json (older Energon writes .info.yaml, "
                        "which verify does not read)", shard=META_DIR)
            return
        try:
            counts = json.loads(info.read_text(encoding="utf-8"))["shard_counts"]
            # Energon numbers shards (tar_file_id in index.sqlite) in shard_counts order.
            self.energon_counts = {resolved(self.root / name): (name, number, int(count))
                                   for number, (name, count) in enumerate(counts.items())}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            self.report("energon_meta_mismatch", f"{META_DIR}/.info.json: cannot read shard_counts "
                        f"({type(error).__name__}: {error})", shard=META_DIR)
            return
        self.checked.append(f"{META_DIR}/.info.json ({shards(len(self.energon_counts))})")
        sqlite_path = meta / "index.sqlite"
        if sqlite_path.is_file():
            self.energon_sqlite = sqlite_path
            self.checked.append(f"{META_DIR}/index.sqlite")

    # -- what the scan must compute ------------------------------------------------------------

    def wants_sha256(self, path: Path) -> bool:
        return self.manifest is not None and resolved(path) in self.manifest

    def wants_md5(self, path: Path) -> bool:
        key = resolved(path)
        return any(entries.get(key, {}).get("md5sum") for _, entries in self.wids)

    # -- per shard -----------------------------------------------------------------------------

    def check_shard(self, scan: ShardScan) -> None:
        key = resolved(scan.path)
        self.seen.add(key)
        self._check_manifest(scan, key)
        self._check_wids(scan, key)
        # Offsets in a damaged or compressed shard mean nothing: tar_* or compressed_shard says why.
        if scan.intact and not scan.compressed:
            self._check_dali(scan)
            self._check_energon_idx(scan)
            self._check_energon_meta(scan, key)
            return
        why = "the shard is compressed" if scan.compressed else "the shard is damaged (see its tar_* error)"
        for index in (dali_index_path(scan.path), energon_index_path(scan.path)):
            if index != scan.path and index.is_file():
                self.report("index_not_checked", f"{index.name}: not checked, {why}", shard=scan.name)

    def _check_manifest(self, scan: ShardScan, key: str) -> None:
        if self.manifest is None:
            return
        entry = self.manifest.get(key)
        if entry is None:
            self.report("unlisted_shard", f"not listed in {MANIFEST_NAME}", shard=scan.name)
            return
        for field_name, actual in (("samples", len(scan.samples)), ("bytes", scan.size), ("sha256", scan.sha256)):
            expected = entry.get(field_name)
            if expected is not None and actual is not None and expected != actual:
                self.report("manifest_mismatch", f"{MANIFEST_NAME} says {field_name} = {expected}, the shard has "
                            f"{actual}", shard=scan.name)

    def _check_wids(self, scan: ShardScan, key: str) -> None:
        for index_name, entries in self.wids:
            entry = entries.get(key)
            if entry is None:
                self.report("unlisted_shard", f"not listed in the wids index {index_name}", shard=scan.name)
                continue
            for field_name, actual in (("nsamples", len(scan.samples)), ("filesize", scan.size),
                                       ("md5sum", scan.md5)):
                expected = entry.get(field_name)
                if expected is not None and actual is not None and expected != actual:
                    self.report("wids_index_mismatch", f"{index_name} says {field_name} = {expected}, the shard has "
                                f"{actual}", shard=scan.name)

    def _declared_for(self, scan: ShardScan) -> bool:
        """Whether the manifest lists this shard (its options then say which sidecars it has)."""
        return self.manifest is not None and resolved(scan.path) in self.manifest

    def _check_dali(self, scan: ShardScan) -> None:
        path = dali_index_path(scan.path)
        declared = self.declared_dali and self._declared_for(scan)
        if path == scan.path or not path.is_file():
            if declared and path != scan.path:
                self.report("dali_index_mismatch", f"{path.name} is missing ({MANIFEST_NAME}: written with "
                            "--dali-index)", shard=scan.name)
            return
        self.dali_checked += 1
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            self.report("dali_index_mismatch", f"{path.name}: unreadable ({error})", shard=scan.name)
            return
        head = lines[0].split() if lines else []
        if len(head) != 2 or head[0] != "v1.2" or not head[1].isdigit():
            # Someone else's .idx beside a foreign shard may be another format; fastwds' must be DALI's.
            self.report("dali_index_mismatch" if declared else "index_not_checked",
                        f"{path.name}: not a DALI v1.2 index (first line {lines[:1]})", shard=scan.name)
            return
        if int(head[1]) != len(scan.samples) or len(lines) - 1 != len(scan.samples):
            self.report("dali_index_mismatch", f"{path.name} declares {head[1]} samples and has {len(lines) - 1} "
                        f"lines; the shard has {len(scan.samples)} samples", shard=scan.name)
            return
        for number, (line, sample) in enumerate(zip(lines[1:], scan.samples)):
            expected = " ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in sample.parts)
            if line.split() != expected.split():
                self.report("dali_index_mismatch", f"{path.name} line {number + 2}: {line[:200]!r}; the shard's "
                            f"sample {number} is {expected[:200]!r}", shard=scan.name, key=sample.key)
                return

    def _check_energon_idx(self, scan: ShardScan) -> None:
        path = energon_index_path(scan.path)
        if not path.is_file():
            if self.energon_counts is not None and resolved(scan.path) in self.energon_counts:
                self.report("energon_index_mismatch", f"{path.name} is missing: Energon needs it for every shard "
                            f"listed in {META_DIR}", shard=scan.name)
            elif self.declared_energon_idx and self._declared_for(scan):
                self.report("energon_index_mismatch", f"{path.name} is missing ({MANIFEST_NAME}: written with "
                            "Energon's index)", shard=scan.name)
            return
        self.energon_idx_checked += 1
        data = path.read_bytes()
        if len(data) % 8:
            self.report("energon_index_mismatch", f"{path.name}: {len(data)} bytes is not a whole number of "
                        "uint64 offsets", shard=scan.name)
            return
        offsets = np.frombuffer(data, dtype=np.uint64).tolist()  # native byte order, as Energon writes
        expected = [s.offset for s in scan.samples] + [scan.end_of_data]
        if len(offsets) != len(expected):
            self.report("energon_index_mismatch", f"{path.name} has {len(offsets)} offsets ({len(offsets) - 1} "
                        f"samples); the shard has {len(scan.samples)} samples ({len(expected)} offsets expected)",
                        shard=scan.name)
            return
        if offsets != expected:
            i = _first_difference(expected, offsets)
            what = f"sample {i} ({scan.samples[i].key})" if i < len(scan.samples) else "the end-of-data entry"
            self.report("energon_index_mismatch", f"{path.name}: offset of {what} is {offsets[i]}, the shard has "
                        f"{expected[i]}", shard=scan.name)

    def _check_energon_meta(self, scan: ShardScan, key: str) -> None:
        if self.energon_counts is None:
            return
        entry = self.energon_counts.get(key)
        if entry is None:
            self.report("unlisted_shard", f"not listed in {META_DIR}/.info.json: Energon will not read it",
                        shard=scan.name)
            return
        name, tar_file_id, count = entry
        if count != len(scan.samples):
            self.report("energon_meta_mismatch", f"{META_DIR}/.info.json says {name} has {count} samples, the "
                        f"shard has {len(scan.samples)}", shard=scan.name)
        if self.energon_sqlite is not None:
            self._check_sqlite(scan, tar_file_id)

    def _check_sqlite(self, scan: ShardScan, tar_file_id: int) -> None:
        where = f"{META_DIR}/index.sqlite"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.energon_sqlite}?mode=ro", uri=True)) as db:
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                rows = db.execute("SELECT sample_key, sample_index, byte_offset, byte_size FROM samples "
                                  "WHERE tar_file_id = ? ORDER BY sample_index", (tar_file_id,)).fetchall()
                parts = (db.execute("SELECT sample_index, part_name, content_byte_offset, content_byte_size "
                                    "FROM sample_parts WHERE tar_file_id = ? ORDER BY sample_index, "
                                    "content_byte_offset", (tar_file_id,)).fetchall()
                         if "sample_parts" in tables else None)
        except sqlite3.Error as error:
            self.report("energon_meta_mismatch", f"{where}: cannot be read ({error})", shard=scan.name)
            return
        ends = [s.offset for s in scan.samples[1:]] + [scan.end_of_data]
        expected = [(s.key, i, s.offset, end - s.offset) for i, (s, end) in enumerate(zip(scan.samples, ends))]
        if rows != expected:
            i = _first_difference(expected, rows)
            if len(rows) != len(expected) and i == min(len(rows), len(expected)):
                detail = f"{len(rows)} samples for tar_file_id {tar_file_id}, the shard has {len(expected)}"
            else:
                detail = (f"sample {i}: (key, index, byte_offset, byte_size) = {tuple(rows[i])}, the shard has "
                          f"{expected[i]}")
            self.report("energon_meta_mismatch", f"{where}: {detail}", shard=scan.name)
            return
        if parts is None:
            return
        expected_parts = [(i, ext, offset, size)
                          for i, s in enumerate(scan.samples) for ext, offset, size, _ in s.parts]
        if parts != expected_parts:
            i = _first_difference(expected_parts, parts)
            if i >= min(len(parts), len(expected_parts)):
                detail = f"{len(parts)} sample parts, the shard has {len(expected_parts)}"
            else:
                detail = (f"part {i}: (sample_index, part_name, offset, size) = {tuple(parts[i])}, the shard has "
                          f"{expected_parts[i]}")
            self.report("energon_meta_mismatch", f"{where}: {detail}", shard=scan.name)

    # -- after every shard ---------------------------------------------------------------------

    def finish(self, whole_folder: bool) -> None:
        """Shards an index lists that were not found. Only meaningful when the whole folder was
        checked: for a single shard or a pattern, the others were simply not selected."""
        if not whole_folder:
            return
        self._check_run_finished()
        if self.manifest is not None:
            for path, entry in self.manifest.items():
                if path not in self.seen:
                    self.report("manifest_mismatch", f"{MANIFEST_NAME} lists {entry['name']}, which is not in the "
                                "folder", shard=entry["name"])
        for index_name, entries in self.wids:
            for path, entry in entries.items():
                if path not in self.seen:
                    self.report("wids_index_mismatch", f"{index_name} lists {entry['url']}, which is not in the "
                                "folder", shard=entry["url"])
        if self.energon_counts is not None:
            for path, (name, _, _) in self.energon_counts.items():
                if path not in self.seen:
                    self.report("energon_meta_mismatch", f"{META_DIR}/.info.json lists {name}, which is not in "
                                "the folder", shard=name)

    def _check_run_finished(self) -> None:
        """A folder with fastwds' run state and no manifest is a run that never finished (or whose
        manifest is gone): its shards may be fine, the dataset is not complete."""
        run_file = self.root / RUN_FILE
        if not run_file.is_file() or (self.root / MANIFEST_NAME).is_file():
            return
        finished = len(list((self.root / TASKS_DIR).glob("*.json")))
        try:
            planned = len(json.loads(run_file.read_text(encoding="utf-8"))["tasks"])
            progress = f"{finished:,} of {planned:,} tasks finished"
        except (OSError, ValueError, KeyError, TypeError):
            progress = f"{finished:,} tasks finished"
        self.report("run_incomplete", f"a fastwds run that did not finish ({progress}, no {MANIFEST_NAME}): "
                    "run the same `fastwds convert` with --resume to complete it", shard=MANIFEST_NAME)

    def summary(self) -> list[str]:
        checked = list(self.checked)
        if self.dali_checked:
            checked.append(f"DALI .idx ({shards(self.dali_checked)})")
        if self.energon_idx_checked:
            checked.append(f"Energon .tar.idx ({shards(self.energon_idx_checked)})")
        return checked


def shards(count: int) -> str:
    return f"{count:,} shard" + ("" if count == 1 else "s")
