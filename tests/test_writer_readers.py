"""Shards written by fastwds.ShardWriter read back byte for byte by the real readers."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import fastwds
import numpy as np
import pyarrow as pa
import pytest
from conftest import read_members, read_webdataset


def make_samples(n: int, jpeg: bytes) -> list[dict]:
    return [
        {
            "__key__": f"sample{i:05d}",
            "jpg": jpeg + bytes([i % 256]) * (i % 7),
            "json": {"id": i, "text": f"caption ü {i}"},
            "txt": f"line {i}",
            "npy": np.arange(i % 5 + 1, dtype=np.float16),
            "cls": i % 3,
        }
        for i in range(n)
    ]


def expected_bytes(sample: dict) -> dict[str, bytes]:
    buffer = io.BytesIO()
    np.save(buffer, sample["npy"], allow_pickle=False)
    return {
        "jpg": sample["jpg"],
        "json": json.dumps(sample["json"], ensure_ascii=False, separators=(",", ":")).encode(),
        "txt": sample["txt"].encode(),
        "npy": buffer.getvalue(),
        "cls": str(sample["cls"]).encode(),
    }


def write_shards(tmp_path: Path, samples: list[dict], **options) -> list[fastwds.ShardRecord]:
    with fastwds.ShardWriter(str(tmp_path / "shard-%06d.tar"), fsync=False, **options) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.records


def test_webdataset_reads_every_byte(tmp_path, jpeg):
    samples = make_samples(25, jpeg)
    records = write_shards(tmp_path, samples, maxcount=10)
    assert [r.num_samples for r in records] == [10, 10, 5]
    urls = [r.path for r in records]
    got = read_webdataset(urls)
    assert [s["__key__"] for s in got] == [s["__key__"] for s in samples]
    for sample, read in zip(samples, got):
        for ext, data in expected_bytes(sample).items():
            assert read[ext] == data, (sample["__key__"], ext)
    decoded = read_webdataset(urls, decode=True)
    assert decoded[3]["json"] == samples[3]["json"]
    np.testing.assert_array_equal(decoded[4]["npy"], samples[4]["npy"])


def test_tarfile_data_filter_extracts_everything(tmp_path, jpeg):
    samples = make_samples(8, jpeg)
    [record] = write_shards(tmp_path, samples)
    out = tmp_path / "extracted"
    with tarfile.open(record.path) as tar:
        tar.extractall(out, filter="data")
        for member in tar.getmembers():
            assert member.type == tarfile.REGTYPE and member.mtime == 0 and member.mode == 0o644
            assert not member.pax_headers, "plain ustar only"
    for sample in samples:
        for ext, data in expected_bytes(sample).items():
            assert (out / f"{sample['__key__']}.{ext}").read_bytes() == data


def test_gnu_tar_lists_and_extracts(tmp_path, jpeg):
    samples = make_samples(6, jpeg)
    [record] = write_shards(tmp_path, samples)
    listing = subprocess.run(["tar", "-tvf", record.path], check=True, capture_output=True, text=True)
    assert listing.stderr == ""
    names = [line.split()[-1] for line in listing.stdout.splitlines()]
    assert names == [f"{s['__key__']}.{ext}" for s in samples for ext in sorted(expected_bytes(s))]
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "-xf", record.path, "-C", str(out)], check=True, capture_output=True)
    for sample in samples:
        for ext, data in expected_bytes(sample).items():
            assert (out / f"{sample['__key__']}.{ext}").read_bytes() == data


def test_members_are_contiguous_sorted_and_lowercase(tmp_path, jpeg):
    with fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), fsync=False) as writer:
        writer.write({"__key__": "a", "TXT": "t", "JPG": jpeg, "__url__": "ignored"})
        writer.write({"__key__": "b", "json": {}, "jpg": jpeg})
    names = [m.name for m in read_members(writer.records[0].path)]
    assert names == ["a.jpg", "a.txt", "b.jpg", "b.json"]


def test_unsafe_ids_get_portable_keys_and_stay_one_sample(tmp_path, jpeg):
    ids = ["coco/train/000001.jpg", "a.b.c", "..", "", "x" * 300, "中文 id", "__meta__", "a b"]
    with fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), fsync=False) as writer:
        keys = [writer.write({"__key__": i, "jpg": jpeg, "json": {"id": i}}) for i in ids]
    assert keys == [fastwds.portable_key(i) for i in ids]
    assert len(set(keys)) == len(ids)
    got = read_webdataset(writer.records[0].path, decode=True)
    assert [s["json"]["id"] for s in got] == ids
    assert [s["__key__"] for s in got] == keys
    assert fastwds.portable_key("GCC_train_002582585") == "GCC_train_002582585"


def test_write_batch_matches_write(tmp_path, jpeg):
    samples = make_samples(30, jpeg)
    one = write_shards(tmp_path / "one", samples, maxcount=12)
    ids = [s["__key__"] for s in samples]
    columns = {ext: [s[ext] for s in samples] for ext in ("jpg", "json", "txt", "npy", "cls")}
    columns["jpg"] = pa.array(columns["jpg"], type=pa.binary())
    columns["txt"] = pa.array(columns["txt"], type=pa.large_string())
    with fastwds.ShardWriter(str(tmp_path / "batch" / "shard-%06d.tar"), maxcount=12, fsync=False) as writer:
        assert writer.write_batch(ids[:17], {k: v[:17] for k, v in columns.items()}) == 17
        writer.write_batch(pa.array(ids[17:]), {k: v[17:] for k, v in columns.items()})
    assert [r.sha256 for r in writer.records] == [r.sha256 for r in one]


def test_batch_none_leaves_member_out(tmp_path, jpeg):
    with fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), fsync=False) as writer:
        writer.write_batch(["a", "b"], {"jpg": [jpeg, None], "txt": ["x", "y"]})
    assert [m.name for m in read_members(writer.records[0].path)] == ["a.jpg", "a.txt", "b.txt"]


def test_same_samples_give_identical_shards(tmp_path, jpeg):
    samples = make_samples(40, jpeg)
    first = write_shards(tmp_path / "1", samples, maxcount=15)
    second = write_shards(tmp_path / "2", samples, maxcount=15)
    assert [r.sha256 for r in first] == [r.sha256 for r in second]
    for record in first:
        data = Path(record.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record.sha256
        assert len(data) == record.size


def test_recorded_offsets_match_tarfile(tmp_path, jpeg):
    [record] = write_shards(tmp_path, make_samples(9, jpeg))
    members = {m.name: m for m in read_members(record.path)}
    for key, offset, end, parts in record.samples():
        first = members[f"{key}.{parts[0][0]}"]
        assert first.offset == offset
        for ext, data_offset, size in parts:
            m = members[f"{key}.{ext}"]
            assert (m.offset_data, m.size) == (data_offset, size)
        assert end > offset


def test_arrow_columns_are_written_in_place_with_offsets_nulls_and_large_offsets(tmp_path):
    from fastwds import _core
    from fastwds.arrow import binary_column

    values = [b"a" * 10, None, b"", b"d" * 700, b"e" * 3]
    for arrow_type in (pa.binary(), pa.large_binary()):
        array = pa.array(values, type=arrow_type).slice(1)  # a non-zero offset, as batches have
        column = binary_column(array)
        assert [column.get(i) for i in range(len(column))] == values[1:]
        assert [column.value_len(i) for i in range(len(column))] == [0, 0, 700, 3]
        with pytest.raises(IndexError):
            column.get(4)
        out = tmp_path / str(arrow_type)
        with fastwds.ShardWriter(str(out / "s-%03d.tar"), fsync=False) as writer:
            writer.write_batch(["n", "empty", "d", "e"], {"bin": array, "txt": ["1", "2", "3", "4"]})
        members = {m.name: m.data for m in read_members(writer.records[0].path)}
        # A null leaves the member out; an empty value is an empty member.
        assert members == {"n.txt": b"1", "empty.bin": b"", "empty.txt": b"2", "d.bin": b"d" * 700,
                           "d.txt": b"3", "e.bin": b"eee", "e.txt": b"4"}
        with pytest.raises(IndexError):
            _core.inspect_images([(column, 9)])
