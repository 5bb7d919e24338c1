"""ShardWriter as a user's own pipeline meets it: arguments, value types, batches, threads,
pickling of its errors, and what happens to a writer that is never closed."""

from __future__ import annotations

import pickle

import fastwds
import pytest
from fastwds import _core


def keys_on_disk(folder) -> list[str]:
    return sorted(s["__key__"] for p in sorted(folder.glob("*.tar")) for s in fastwds.WebDataset(str(p), decode=False))


@pytest.mark.parametrize("bad_row", [
    {"__key__": "seen", "txt": "again"},  # a key written before this batch
    {"__key__": "a", "txt": "twice"},     # a key twice in the batch
    {"__key__": "d", "txt": None},         # a sample with no members
    {"__key__": "d", "txt": {1, 2}},       # a value that cannot be encoded
    {"__key__": "d", "a b": "bad ext"},    # an invalid extension
])
def test_write_batch_is_all_or_nothing(tmp_path, bad_row):
    """A batch with one bad row anywhere writes none of its rows, so the fixed batch can simply be
    written again (before: the rows ahead of a bad one were written, and the retry then failed
    with DuplicateKeyError)."""
    writer = fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=2, fsync=False)
    writer.write({"__key__": "seen", "txt": "0"})
    ids = ["a", "b", "c", bad_row["__key__"]]
    ext = next(k for k in bad_row if k != "__key__")
    columns = {"txt": ["1", "2", "3", None]}
    columns.setdefault(ext, [None, None, None, None])
    columns[ext] = [*columns[ext][:3], bad_row[ext]]
    if ext != "txt":
        columns["txt"][3] = None
    with pytest.raises(fastwds.SampleError) as info:
        writer.write_batch(ids, columns)
    assert info.value.sample_id == bad_row["__key__"]
    assert writer.write_batch(["a", "b", "c"], {"txt": ["1", "2", "3"]}) == 3
    writer.close()
    assert keys_on_disk(tmp_path) == ["a", "b", "c", "seen"]


def test_errors_pickle_across_processes():
    """Errors are fastwds._core.X, so a worker process can send them back (concurrent.futures,
    multiprocessing): before, pickle could not import their module '_core'."""
    errors = [_core.SampleError("bad"), _core.DuplicateKeyError("dup"), _core.ShardPatternError("p"),
              _core.WriterClosedError("closed"), _core.ShardBusyError(11, "busy", "x.tar.partial")]
    errors[1].sample_id = "k1"
    for error in errors:
        assert type(error).__module__ == "fastwds._core"
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)
    assert pickle.loads(pickle.dumps(errors[1])).sample_id == "k1"
    assert pickle.loads(pickle.dumps(errors[4])).filename == "x.tar.partial"


def test_errors_raised_in_a_worker_process_reach_the_parent(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1) as pool:
        future = pool.submit(_write_twice, str(tmp_path / "s-%03d.tar"))
        with pytest.raises(fastwds.DuplicateKeyError) as info:
            future.result()
    assert info.value.sample_id == "k"


def _write_twice(pattern: str) -> None:
    with fastwds.ShardWriter(pattern, fsync=False) as writer:
        writer.write({"__key__": "k", "txt": "1"})
        writer.write({"__key__": "k", "txt": "2"})


def test_every_sample_error_has_sample_id(tmp_path):
    """``sample_id`` is always there, None when the error is not about one sample (the stub and
    the README promise it; before, it was missing unless the Rust side named a sample)."""
    assert _core.SampleError("anything").sample_id is None
    with fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), fsync=False) as writer:
        with pytest.raises(fastwds.SampleError) as info:
            writer.write({"txt": "no key"})
        assert info.value.sample_id is None
        writer.write({"__key__": "ok", "txt": "1"})


@pytest.mark.parametrize("ext, value", [
    ("jpg", "array"), ("png", "array"), ("json", "array"), ("npy.gz", "array"),
    ("npy", {"a": 1}), ("txt", {"a": 1}), ("cls", [1, 2]), ("jpg", (1, 2)),
])
def test_a_value_whose_type_contradicts_its_extension_is_refused(tmp_path, ext, value):
    """Values were encoded by their Python type whatever the extension: an array under 'jpg'
    became .npy bytes in a .jpg member (a "finished" shard that fails at training time)."""
    import numpy as np

    value = np.zeros((2, 2), np.uint8) if value == "array" else value
    with fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), fsync=False) as writer:
        with pytest.raises(fastwds.SampleError, match=f"member '{ext}'") as info:
            writer.write({"__key__": "s0", ext: value})
        assert info.value.sample_id == "s0"
        writer.write({"__key__": "ok", "npy": np.zeros(2), "seg.npy": np.ones(2), "json": {"a": [1]},
                      "meta.json": [1, 2], "jpg": b"\xff\xd8 bytes go anywhere", "txt": "text"})
    [sample] = fastwds.WebDataset(str(tmp_path / "s-000.tar"), decode=False)
    assert sample["json"] == b'{"a":[1]}' and sample["meta.json"] == b"[1,2]"
    assert sample["seg.npy"].startswith(b"\x93NUMPY") and sample["jpg"].startswith(b"\xff\xd8")


@pytest.mark.parametrize("document", [
    {"x": float("nan")}, {"y": float("inf")}, {"v": "float32"}, {(1, 2): "tuple key"},
])
def test_json_that_cannot_be_strict_json_is_a_sample_error(tmp_path, document):
    """NaN/Infinity are not JSON (orjson, serde and JS reject them); numpy scalars and tuple keys
    raised a bare TypeError with no sample named."""
    import numpy as np

    document = {"v": np.float32(1.5)} if document == {"v": "float32"} else document
    with fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), fsync=False) as writer:
        with pytest.raises(fastwds.SampleError, match="cannot be written as JSON") as info:
            writer.write({"__key__": "doc-3", "json": document})
        assert info.value.sample_id == "doc-3"
        with pytest.raises(fastwds.SampleError) as info:
            writer.write_batch(["doc-4"], {"json": [document]})
        assert info.value.sample_id == "doc-4"


def test_one_writer_shared_by_threads(tmp_path):
    """The Rust sink releases the GIL while writing: a second thread calling in meanwhile got
    PyO3's 'RuntimeError: Already borrowed' on every write. Calls now wait for each other."""
    import threading

    errors = []
    writer = fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=150, fsync=False)

    def work(t: int) -> None:
        try:
            for i in range(300):
                if i % 3:
                    writer.write({"__key__": f"t{t}-{i:03d}", "bin": bytes([t]) * 3000})
                else:
                    writer.write_batch([f"t{t}-{i:03d}"], {"bin": [bytes([t]) * 3000]})
                if i == 150 and t == 0:
                    writer.next_shard()
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    records = writer.close()
    assert sum(r.num_samples for r in records) == 1200
    samples = [s for r in records for s in fastwds.WebDataset(r.path, decode=False)]
    assert len({s["__key__"] for s in samples}) == 1200
    assert all(s["bin"] == bytes([int(s["__key__"][1])]) * 3000 for s in samples)


UNCLOSED = """
import sys, fastwds
writer = fastwds.ShardWriter(sys.argv[1] + "/x-%06d.tar", maxcount=3, fsync=False)
for i in range(7):
    writer.write({"__key__": f"k{i}", "txt": "x"})
if sys.argv[2] == "del":
    del writer
elif sys.argv[2] == "close":
    writer.close()
elif sys.argv[2] == "abort":
    writer.abort()
# "end": the script just ends
"""


@pytest.mark.parametrize("how", ["del", "end", "close", "abort"])
def test_a_writer_never_closed_warns_that_its_open_shard_was_discarded(tmp_path, how):
    """Dropping the open shard of a writer nobody closed is the crash-safe choice, but it was
    silent (exit 0, nothing even with -W always): a trap for webdataset users."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", UNCLOSED, str(tmp_path), how],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    if how in ("del", "end"):
        assert "RuntimeWarning" in result.stderr and "x-%06d.tar" in result.stderr
        assert "was never closed: the 1 sample(s) of its open shard were discarded" in result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["x-000000.tar", "x-000001.tar"]
    else:
        assert "never closed" not in result.stderr


@pytest.mark.parametrize("argument, value", [
    ("maxcount", 0), ("maxcount", -1), ("maxcount", 2.5), ("maxsize", float("inf")), ("maxsize", "3GB"),
    ("maxsize", 0), ("start_shard", -1), ("mtime", -1), ("mtime", 2**40), ("maxcount", True),
])
def test_bad_numbers_are_value_errors_naming_the_argument(tmp_path, argument, value):
    """They were OverflowError ("can't convert negative int to unsigned"), a ShardPatternError for
    maxcount=0, or accepted (mtime=2**40 silently clamped, maxsize=0 a shard per sample)."""
    with pytest.raises(ValueError, match=f"ShardWriter: {argument} must be") as info:
        fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), **{argument: value})
    assert not isinstance(info.value, fastwds.ShardPatternError)


def test_numbers_in_range_are_accepted(tmp_path):
    import numpy as np

    with fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=np.int64(2), maxsize=3e9, start_shard=5,
                             mtime=8**11 - 1, fsync=False) as writer:
        writer.write({"__key__": "a", "txt": "1"})
    assert writer.records[0].name == "s-005.tar"


def test_a_path_pattern_is_accepted(tmp_path):
    with fastwds.ShardWriter(tmp_path / "s-%03d.tar", fsync=False) as writer:
        writer.write({"__key__": "a", "txt": "1"})
    assert writer.records[0].path == str(tmp_path / "s-000.tar") and writer.pattern == str(tmp_path / "s-%03d.tar")


@pytest.mark.parametrize("pattern", ["s3://my-bucket/train/shard-%06d.tar", "gs://b/shard-%06d.tar",
                                     "http://host/shard.tar", "S3://b/x-%d.tar"])
def test_a_url_pattern_is_refused_not_made_a_local_folder(tmp_path, pattern, monkeypatch):
    """ShardWriter writes local files: 's3://b/...' made a local folder 's3:' while the records
    said s3://, so a user believed the shards were in the bucket."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(fastwds.ShardPatternError, match="writes local files only") as info:
        fastwds.ShardWriter(pattern)
    assert "upload" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_sample_keys_are_str_utf8_bytes_or_int(tmp_path):
    """A bytes key became 'b_img_001_--<hash>' (from str(b'img_001')), None the key 'None'."""
    import numpy as np

    with fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), fsync=False) as writer:
        assert writer.write({"__key__": b"img_001", "txt": "1"}) == "img_001"
        assert writer.write({"__key__": 7, "txt": "2"}) == "7"
        assert writer.write_batch([b"img_002", np.int64(8)], {"txt": ["3", "4"]}) == 2
        assert writer.write_batch(np.array(["np_str"]), {"txt": ["5"]}) == 1
        for bad in (None, 1.5, True, b"\xff\xfe"):
            with pytest.raises(fastwds.SampleError, match="key") as info:
                writer.write({"__key__": bad, "txt": "x"})
            assert info.value.sample_id is None
            with pytest.raises(fastwds.SampleError, match="key"):
                writer.write_batch(["fine", bad], {"txt": ["x", "y"]})
    assert keys_on_disk(tmp_path) == ["7", "8", "img_001", "img_002", "np_str"]


def test_a_str_column_is_refused_not_spread_over_the_samples(tmp_path):
    """write_batch(ids, {"txt": "hi"}) wrote c1.txt = b"h", c2.txt = b"i" (a str is a sequence)."""
    with fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), fsync=False) as writer:
        for column in ("hi", b"hi", {"a": 1}):
            with pytest.raises(TypeError, match="column 'txt' is one"):
                writer.write_batch(["c1", "c2"], {"txt": column})
        writer.write_batch(["c1", "c2"], {"txt": ["hi"] * 2})
    assert [s["txt"] for s in fastwds.WebDataset(str(tmp_path / "s-000.tar"), decode=False)] == [b"hi", b"hi"]


def test_malformed_samples_are_typed_errors(tmp_path):
    with fastwds.ShardWriter(str(tmp_path / "s-%03d.tar"), fsync=False) as writer:
        with pytest.raises(TypeError, match="mapping"):
            writer.write([("__key__", "a"), ("txt", "x")])
        with pytest.raises(fastwds.SampleError, match="member name 5") as info:
            writer.write({"__key__": "a", 5: "x"})
        assert info.value.sample_id == "a"
        writer.write({"__key__": "a", "txt": "x"})


def _write(pattern: str, keys: list[str], **options) -> list:
    with fastwds.ShardWriter(pattern, maxcount=2, fsync=False, **options) as writer:
        for key in keys:
            writer.write({"__key__": key, "txt": key})
    return writer.records


def test_overwrite_warns_about_an_earlier_runs_higher_numbered_shards(tmp_path):
    """overwrite=True replaces only the shards this run writes: the earlier run's shards 2-4 stayed,
    and a glob of the pattern silently mixed old and new samples."""
    import warnings

    pattern = str(tmp_path / "x-%06d.tar")
    _write(pattern, [f"old{i}" for i in range(10)])
    with pytest.warns(RuntimeWarning, match="3 higher-numbered shard") as caught:
        _write(pattern, ["new0", "new1", "new2"], overwrite=True)
    message = str(caught[0].message)
    assert "x-000002.tar, x-000003.tar, x-000004.tar" in message and "x-000001.tar," not in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _write(pattern, [f"n{i}" for i in range(10)], overwrite=True)  # replaces all five: nothing to say
        _write(str(tmp_path / "y-%d.tar"), ["a", "b"], overwrite=True)  # x-* is another pattern
    single = str(tmp_path / "task-7.tar")
    _write(single, ["a"])
    (tmp_path / "task-7-1.tar").write_bytes(b"an earlier run's second shard")
    with pytest.warns(RuntimeWarning, match=r"\(task-7-1.tar\)"):
        _write(single, ["b"], overwrite=True)


def _write_part(folder: str, part: int) -> list:
    with fastwds.ShardWriter(f"{folder}/part{part}-%03d.tar", maxcount=2, fsync=False) as writer:
        for i in range(3):
            writer.write({"__key__": f"p{part}-{i}", "txt": "x" * (100 * i), "json": {"i": i}})
    return writer.records


def test_shard_records_come_back_from_worker_processes(tmp_path):
    """One writer per worker process, the wids index written by the parent from their records:
    ShardRecord could not be pickled ('cannot pickle fastwds._core.ShardRecord')."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        records = [r for part in pool.map(_write_part, [str(tmp_path)] * 2, [0, 1]) for r in part]
    assert [r.name for r in records] == ["part0-000.tar", "part0-001.tar", "part1-000.tar", "part1-001.tar"]
    for record in records:
        again = pickle.loads(pickle.dumps(record))
        assert (again.index, again.path, again.num_samples, again.size, again.sha256, again.data_end,
                again.oversized, again.samples(), again.keys()) == \
               (record.index, record.path, record.num_samples, record.size, record.sha256, record.data_end,
                record.oversized, record.samples(), record.keys())
    index = fastwds.write_wids_index(records, tmp_path / "index.wids.json", "parts")
    assert [s["nsamples"] for s in index["shardlist"]] == [2, 1, 2, 1]
    with pytest.raises(ValueError, match="sha256"):
        _core._shard_record(0, "x.tar", 0, 1024, "nothex", False, [])
