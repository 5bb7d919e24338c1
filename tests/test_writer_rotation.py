"""Shard rotation by sample count and by the hard byte cap."""

from __future__ import annotations

import os
import re

import fastwds
import pytest
from conftest import read_members, run_cli


def write(tmp_path, sizes, **options):
    with fastwds.ShardWriter(str(tmp_path / "s-%04d.tar"), fsync=False, **options) as writer:
        for i, size in enumerate(sizes):
            writer.write({"__key__": f"k{i:04d}", "bin": b"\x01" * size})
    return writer.records


def test_count_rotation_exact_multiple(tmp_path):
    records = write(tmp_path, [10] * 20, maxcount=5)
    assert [r.num_samples for r in records] == [5, 5, 5, 5]
    assert sorted(os.listdir(tmp_path)) == [f"s-{i:04d}.tar" for i in range(4)]


def test_byte_cap_is_never_exceeded(tmp_path):
    sizes = [700, 100, 3000, 1, 1500, 512, 513, 2000, 0, 900] * 5
    cap = 6 * 1024
    records = write(tmp_path, sizes, maxcount=1000, maxsize=cap)
    assert sum(r.num_samples for r in records) == len(sizes)
    for r in records:
        assert os.path.getsize(r.path) == r.size <= cap
        assert r.num_samples > 0 and not r.oversized
    # Greedy: the next shard's first sample would not have fitted in the previous shard.
    spans = [512 + -(-s // 512) * 512 for s in sizes]
    first = 0
    for r in records[:-1]:
        nxt = first + r.num_samples
        assert r.size + spans[nxt] > cap
        first = nxt


def test_a_shard_exactly_at_the_cap(tmp_path):
    # Two 1024-byte members: 2 * (512 + 1024) + 1024 end blocks = 4096 bytes.
    records = write(tmp_path, [1024] * 4, maxsize=4096)
    assert [r.size for r in records] == [4096, 4096]


def test_oversized_sample_gets_its_own_shard_and_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="larger than maxsize"):
        records = write(tmp_path, [100, 100, 50_000, 100], maxsize=4096)
    assert [r.num_samples for r in records] == [2, 1, 1]
    assert [r.oversized for r in records] == [False, True, False]
    assert [m.name for m in read_members(records[1].path)] == ["k0002.bin"]


def test_no_samples_no_shard(tmp_path):
    assert write(tmp_path, []) == []
    assert os.listdir(tmp_path) == []


def test_next_shard_forces_rotation_without_empty_shards(tmp_path):
    with fastwds.ShardWriter(str(tmp_path / "s-%d.tar"), fsync=False, start_shard=7) as writer:
        writer.write({"__key__": "a", "txt": "1"})
        writer.next_shard()
        writer.next_shard()
        writer.write({"__key__": "b", "txt": "2"})
    assert [r.name for r in writer.records] == ["s-7.tar", "s-8.tar"]


def test_single_shard_pattern_spills_with_suffixes(tmp_path):
    with fastwds.ShardWriter(str(tmp_path / "task-000004.tar"), maxsize=4096, fsync=False) as writer:
        for i in range(5):
            writer.write({"__key__": f"k{i}", "bin": b"x" * 1024})
    assert [r.name for r in writer.records] == ["task-000004.tar", "task-000004-1.tar", "task-000004-2.tar"]


def test_convert_names_an_oversized_sample_by_its_published_shard(tmp_path):
    """The conversion logs one line naming the shard as published: the library's UserWarning
    showed a source line and the staging path, which no longer exists."""
    from fastwds.synthetic import generate

    root = tmp_path / "in"
    generate(root, rows=6, subsets=1, files_per_subset=1, row_group_rows=6, seed=3)
    result = run_cli("convert", "parquet", str(root), str(tmp_path / "out"), "--max-shard-size", "2kB",
                     "--no-progress")
    lines = [line for line in result.stderr.splitlines() if "larger than --max-shard-size" in line]
    assert lines and all(re.search(r" WARNING fastwds: subset_0-\d{6}(-\d+)?\.tar: a sample alone", line)
                         for line in lines), result.stderr
    assert "UserWarning" not in result.stderr and ".partial" not in result.stderr and "attempts" not in result.stderr
