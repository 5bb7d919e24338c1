"""Energon .tar.idx, DALI .idx and wids index files checked against what tarfile finds."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import fastwds
from conftest import read_members, tar_end_of_data


def write_indexed(tmp_path, jpeg, n=23, maxcount=10):
    with fastwds.ShardWriter(str(tmp_path / "shard-%06d.tar"), maxcount=maxcount, fsync=False,
                             energon_index=True, dali_index=True) as writer:
        for i in range(n):
            writer.write({"__key__": f"s{i}", "jpg": jpeg[: 500 + i * 37], "json": {"i": i},
                          **({"txt": "x" * i} if i % 2 else {})})
    return writer.records


def samples_by_tarfile(path):
    """[(key, first header offset, [(ext, data offset, size, name)])] from tarfile alone."""
    samples = []
    for m in read_members(path):
        key, ext = m.name.split(".", 1)
        if not samples or samples[-1][0] != key:
            samples.append((key, m.offset, []))
        samples[-1][2].append((ext, m.offset_data, m.size, m.name))
    return samples


def test_energon_tar_idx_matches_tarfile(tmp_path, jpeg):
    for record in write_indexed(tmp_path, jpeg):
        raw = Path(record.path + ".idx").read_bytes()
        offsets = list(struct.unpack(f"={len(raw) // 8}Q", raw))
        expected = [offset for _, offset, _ in samples_by_tarfile(record.path)]
        assert offsets == expected + [tar_end_of_data(record.path)]
        assert len(offsets) == record.num_samples + 1


def test_dali_idx_matches_tarfile(tmp_path, jpeg):
    for record in write_indexed(tmp_path, jpeg):
        lines = Path(record.path[: -len(".tar")] + ".idx").read_text().split("\n")
        assert lines[0] == f"v1.2 {record.num_samples}" and lines[-1] == ""
        for line, (_, _, parts) in zip(lines[1:-1], samples_by_tarfile(record.path), strict=True):
            fields = line.split(" ")
            groups = [fields[i:i + 4] for i in range(0, len(fields), 4)]
            assert groups == [[ext, str(off), str(size), name] for ext, off, size, name in parts]
            assert all(int(g[1]) % 512 == 0 for g in groups)


def test_wids_reads_the_index(tmp_path, jpeg):
    import wids

    records = write_indexed(tmp_path, jpeg)
    index_path = tmp_path / "index.wids.json"
    fastwds.write_wids_index(records, index_path, name="test")
    index = json.loads(index_path.read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1
    assert [s["url"] for s in index["shardlist"]] == [r.name for r in records]
    dataset = wids.ShardListDataset(str(index_path), cache_dir=str(tmp_path / "cache"), transformations=[])
    assert len(dataset) == 23
    sample = dataset[17]
    assert sample["__key__"] == "s17"
    assert json.loads(sample[".json"].read()) == {"i": 17}
    assert sample[".jpg"].read() == jpeg[: 500 + 17 * 37]
    dataset.close()
