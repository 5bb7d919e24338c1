"""Typed errors: OSError with errno and path, ValueError subclasses naming the sample."""

from __future__ import annotations

import errno

import fastwds
import numpy as np
import pytest


def test_io_error_has_errno_and_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    writer = fastwds.ShardWriter(str(blocker / "s-%03d.tar"), fsync=False)
    with pytest.raises(OSError) as info:
        writer.write({"__key__": "a", "txt": "x"})
    assert info.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert str(blocker) in info.value.filename


def test_refuses_to_replace_a_finished_shard(tmp_path):
    pattern = str(tmp_path / "s-%03d.tar")
    with fastwds.ShardWriter(pattern, fsync=False) as writer:
        writer.write({"__key__": "a", "txt": "old"})
    with pytest.raises(FileExistsError) as info:
        with fastwds.ShardWriter(pattern, fsync=False) as writer:
            writer.write({"__key__": "a", "txt": "new"})
    assert info.value.filename.endswith("s-000.tar")
    with fastwds.ShardWriter(pattern, fsync=False, overwrite=True) as writer:
        writer.write({"__key__": "a", "txt": "new"})
    assert writer.records[0].num_samples == 1


def test_bad_values_name_the_sample(tmp_path):
    with fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), fsync=False) as writer:
        with pytest.raises(fastwds.SampleError) as info:
            writer.write({"__key__": "row-7", "bin": object()})
        assert info.value.sample_id == "row-7" and isinstance(info.value, ValueError)
        with pytest.raises(fastwds.SampleError, match="never pickles"):
            writer.write({"__key__": "row-8", "npy": np.array([object()])})
        with pytest.raises(fastwds.SampleError) as info:
            writer.write({"__key__": "row-9", "jpg": b"1", "JPG": b"2"})
        assert info.value.sample_id == "row-9"
        with pytest.raises(fastwds.SampleError, match="no '__key__'"):
            writer.write({"jpg": b"1"})
        with pytest.raises(fastwds.SampleError, match="invalid extension"):
            writer.write({"__key__": "row-10", "a b": b"1"})
        writer.write({"__key__": "ok", "txt": "fine"})
    assert writer.records[0].num_samples == 1


def test_colliding_keys_are_reported_with_both_ids(tmp_path):
    derived = fastwds.portable_key("a.b")
    with fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), fsync=False) as writer:
        writer.write({"__key__": "a.b", "txt": "1"})
        # An id spelled like another id's derived key does not take that key...
        assert writer.write({"__key__": derived, "txt": "2"}) != derived
        with pytest.raises(fastwds.DuplicateKeyError) as info:
            writer.write({"__key__": "a.b", "txt": "3"})
    assert info.value.sample_id == "a.b" and "'a.b'" in str(info.value).replace('"', "'")


def test_write_after_close_is_refused(tmp_path):
    writer = fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), fsync=False)
    writer.write({"__key__": "a", "txt": "1"})
    writer.close()
    with pytest.raises(fastwds.WriterClosedError):
        writer.write({"__key__": "b", "txt": "2"})


@pytest.mark.parametrize("pattern", ["s-%06d.tar.gz", "s-%06d.tgz", "s-%s.tar", "s-%6d.tar", ".tar"])
def test_bad_patterns(tmp_path, pattern):
    with pytest.raises(fastwds.ShardPatternError):
        fastwds.ShardWriter(str(tmp_path / pattern))


def test_exception_in_with_block_drops_the_open_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=2, fsync=False) as writer:
            for i in range(3):
                writer.write({"__key__": f"k{i}", "txt": "x"})
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-000.tar"]


def test_a_failed_writer_never_closes_as_a_success(tmp_path):
    """After a write fails (here: the next shard cannot be created), close() raises every time
    instead of returning the shards finished before the failure as if they were the output."""
    writer = fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=1, fsync=False)
    writer.write({"__key__": "a", "txt": "1"})
    (tmp_path / "s-001.tar.partial").mkdir()  # the next shard's temporary name is taken
    with pytest.raises(OSError):
        writer.write({"__key__": "b", "txt": "2"})
    for _ in range(2):
        with pytest.raises(fastwds.WriterClosedError, match="failed earlier"):
            writer.close()


def test_writable_buffers_are_copied_before_the_gil_is_released(tmp_path):
    """A column over a writable buffer (bytearray, numpy array) is copied when the column is made:
    another thread changing the buffer during write_batch cannot change or tear what is written."""
    import pyarrow as pa

    from fastwds import _core

    data = bytearray(b"first-value" + b"second-value")
    offsets = pa.array([0, 11, 23], pa.int32()).buffers()[1]
    column = _core.BinaryColumn(data, offsets, None, 0, 2, False)
    data[:] = b"X" * len(data)  # what a racing thread would do
    with fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), fsync=False) as writer:
        writer.write_batch(["a", "b"], {"bin": [(column, 0), (column, 1)]})
    samples = list(fastwds.WebDataset(str(tmp_path / "s-000.tar"), decode=False))
    assert [s["bin"] for s in samples] == [b"first-value", b"second-value"]


def test_nothing_is_written_beside_a_shard_that_appeared_meanwhile(tmp_path):
    writer = fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), fsync=False, energon_index=True)
    writer.write({"__key__": "a", "txt": "1"})
    (tmp_path / "s-000.tar").write_bytes(b"another writer's shard")
    (tmp_path / "s-000.tar.idx").write_bytes(b"its index")
    with pytest.raises(FileExistsError):
        writer.close()
    assert (tmp_path / "s-000.tar.idx").read_bytes() == b"its index"
    assert (tmp_path / "s-000.tar").read_bytes() == b"another writer's shard"


def test_task_records_are_fsynced_with_their_folder(tmp_path, monkeypatch):
    """The task record is what --resume trusts: it must reach the disk, and so must its name."""
    import os
    import stat

    from fastwds.durable import write_text_atomically

    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_text_atomically(tmp_path / "task.json", "{}")
    assert synced == ["file", "dir"]
    assert (tmp_path / "task.json").read_text() == "{}" and len(list(tmp_path.iterdir())) == 1
