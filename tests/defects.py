"""Tar shards written byte by byte (no fastwds code involved), good or with one planted defect,
for the inspect and verify tests."""

from __future__ import annotations

import json
import sqlite3
import tarfile
from contextlib import closing
from pathlib import Path

BLOCK = 512


def header(name: str, size: int, typeflag: bytes = b"0", mtime: int = 0) -> bytes:
    """A plain ustar header block with a correct checksum."""
    block = bytearray(BLOCK)
    raw = name.encode()
    assert len(raw) <= 100, name
    block[0:len(raw)] = raw
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = f"{size:011o}\0".encode()
    block[136:148] = f"{mtime:011o}\0".encode()
    block[156:157] = typeflag
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: str, data: bytes) -> bytes:
    return header(name, len(data)) + pad(data)


def tar_bytes(members: list[tuple[str, bytes]], end_blocks: int = 2) -> bytes:
    return b"".join(member(name, data) for name, data in members) + bytes(BLOCK * end_blocks)


def write_tar(path: Path, members: list[tuple[str, bytes]], end_blocks: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tar_bytes(members, end_blocks))
    return path


def chat_json(sample_id: str, image_count: int, tokens: int | None = None, **extra) -> bytes:
    tokens = image_count if tokens is None else tokens
    document = {
        "id": sample_id,
        "conversations": [{"role": "user", "content": "<image>\n" * tokens + "What is this?"},
                          {"role": "assistant", "content": "A test."}],
        **extra,
    }
    return json.dumps(document).encode()


def chat_sample(key: str, jpeg: bytes, images: int = 1, **json_extra) -> list[tuple[str, bytes]]:
    """Members of a LLaVA-style sample: ``key.jpg`` (or ``key.0.jpg``, ...) and ``key.json``."""
    names = ["jpg"] if images == 1 else [f"{i}.jpg" for i in range(images)]
    members = [(f"{key}.{ext}", jpeg) for ext in names]
    members.append((f"{key}.json", chat_json(key, images, name=names, **json_extra)))
    return members


def corrupt_png_body(png: bytes) -> bytes:
    """Same header and IEND, broken compressed data: passes the fast check, fails a full decode."""
    data = bytearray(png)
    start = data.index(b"IDAT") + 20
    for i in range(start, start + 40):
        data[i] ^= 0xFF
    return bytes(data)


def energon_prepare(root: Path, shard_names: list[str]) -> None:
    """``.nv-meta/.info.json`` and ``index.sqlite`` as ``energon prepare`` writes them
    (megatron-energon 7.4 prepare.py / indexing.py), computed with tarfile: tar_file_id is the
    shard's position in shard_counts, byte_size runs to the next sample (or the end of data)."""
    meta = root / ".nv-meta"
    meta.mkdir(exist_ok=True)
    samples, parts, counts = [], [], {}
    for tar_id, name in enumerate(shard_names):
        rows = []
        with tarfile.open(root / name) as tar:
            for info in tar:
                key, ext = info.name.split(".", 1)
                if not rows or rows[-1][1] != key:
                    rows.append([tar_id, key, len(rows), info.offset, None])
                parts.append((tar_id, len(rows) - 1, ext, info.offset_data, info.size))
            end = tar.offset
        for row, following in zip(rows, rows[1:] + [None]):
            row[4] = (following[3] if following else end) - row[3]
        samples.extend(tuple(r) for r in rows)
        counts[name] = len(rows)
    (meta / ".info.json").write_text(json.dumps({"energon_version": "7.4.1", "shard_counts": counts}))
    with closing(sqlite3.connect(meta / "index.sqlite")) as db:
        db.execute("CREATE TABLE samples (tar_file_id INTEGER, sample_key TEXT NOT NULL UNIQUE, sample_index INTEGER, "
                   "byte_offset INTEGER, byte_size INTEGER)")
        db.execute("CREATE TABLE sample_parts (tar_file_id INTEGER, sample_index INTEGER, part_name TEXT, "
                   "content_byte_offset INTEGER, content_byte_size INTEGER)")
        db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?)", samples)
        db.executemany("INSERT INTO sample_parts VALUES (?, ?, ?, ?, ?)", parts)
        db.commit()


def dali_wds2idx(shard: Path) -> str:
    """DALI's own tools/wds2idx.py algorithm (its tarfile fallback): per sample the groups
    ``ext data_offset size name``, split at the first dot of the basename."""
    groups: list[list[tuple]] = []
    last = None
    with tarfile.open(shard) as tar:
        for info in tar:
            if info.type != tarfile.REGTYPE:
                continue
            offset = tar.fileobj.tell()  # right after the header(s): the data
            dot = info.name.find(".", info.name.rfind("/") + 1)
            base, ext = info.name[:dot], info.name[dot + 1:]
            if base != last:
                groups.append([])
                last = base
            groups[-1].append((ext, offset, info.size, info.name))
    lines = [f"v1.2 {len(groups)}"] + [" ".join(" ".join(map(str, c)) for c in g) for g in groups]
    return "\n".join(lines) + "\n"
