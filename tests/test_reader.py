"""fastwds.WebDataset / make_loader: shards from fastwds, webdataset and tarfile, split across real
DataLoader workers and simulated ranks, shuffled deterministically, decoded without unpickling,
and refusing members that point outside the archive."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import subprocess
import sys
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import fastwds
import numpy as np
import pytest
import torch
import zstandard
from conftest import crafted_tar, jpeg_bytes, png_bytes
from fastwds.decode import read_npy
from fastwds.paths import expand_braces
from fastwds.reader import shuffled, split_shards
from fastwds.tar.format import ShardFormatError, UnsafeMemberError
from fastwds.tar.stream import iter_members
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

COUNT = 40


def array_of(i: int) -> np.ndarray:
    return np.arange(6, dtype=np.float16).reshape(2, 3) + i


def sample_of(i: int) -> dict:
    return {"__key__": f"s{i:04d}", "npy": array_of(i), "json": {"i": i, "name": f"sample {i}"},
            "txt": f"caption {i}", "cls": str(i % 5).encode(), "labels.npy": np.array([i, 1], np.float32)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("shards")
    with fastwds.ShardWriter(str(folder / "part-%06d.tar"), maxcount=5) as writer:
        for i in range(COUNT):
            writer.write(sample_of(i))
    return [str(p) for p in sorted(folder.glob("*.tar"))]


def keys(samples) -> list[str]:
    return [s["__key__"] for s in samples]


def test_decodes_every_member_kind(shards):
    samples = list(fastwds.WebDataset(shards))
    assert keys(samples) == [f"s{i:04d}" for i in range(COUNT)]
    for i, sample in enumerate(samples):
        np.testing.assert_array_equal(sample["npy"], array_of(i))
        assert sample["npy"].dtype == np.float16 and sample["npy"].flags.writeable
        assert sample["json"] == {"i": i, "name": f"sample {i}"}
        assert sample["txt"] == f"caption {i}" and sample["cls"] == i % 5
        np.testing.assert_array_equal(sample["labels.npy"], [i, 1])
        assert sample["__url__"] == shards[i // 5]
    raw = list(fastwds.WebDataset(shards, decode=False))
    assert all(isinstance(v, bytes) for s in raw for k, v in s.items() if not k.startswith("__"))
    assert np.load(io.BytesIO(raw[3]["npy"])).tolist() == array_of(3).tolist()
    custom = next(iter(fastwds.WebDataset(shards, decode={"txt": None, "cls": float})))
    assert custom["txt"] == b"caption 0" and custom["cls"] == 0.0 and custom["json"]["i"] == 0


def test_images_zstd_gzip_and_unknown_members(tmp_path):
    jpg, png = jpeg_bytes(), png_bytes(mode="RGBA")
    npy = io.BytesIO()
    np.save(npy, np.eye(3, dtype=np.float16))
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(npy.getvalue())
    members = {"jpg": jpg, "0.png": png, "npy.zst": zstandard.ZstdCompressor().compress(npy.getvalue()),
               "unsized.npy.zst": unsized, "txt.zst": zstandard.ZstdCompressor().compress(b"hello"),
               "json.gz": gzip.compress(b'{"a": 1}'), "bin": b"\x00\x01", "weird.thing": b"keep me"}
    with fastwds.ShardWriter(str(tmp_path / "m-%06d.tar")) as writer:
        writer.write({"__key__": "k", **members})
    [sample] = fastwds.WebDataset(str(tmp_path / "m-000000.tar"))
    assert isinstance(sample["jpg"], Image.Image) and sample["jpg"].size == (64, 48)
    assert sample["0.png"].mode == "RGBA"
    np.testing.assert_array_equal(sample["npy.zst"], np.eye(3, dtype=np.float16))
    np.testing.assert_array_equal(sample["unsized.npy.zst"], np.eye(3, dtype=np.float16))
    assert sample["txt.zst"] == "hello"
    assert sample["json.gz"] == {"a": 1}
    assert sample["bin"] == b"\x00\x01" and sample["weird.thing"] == b"keep me"


def test_dataloader_with_two_workers_delivers_every_sample_once(shards):
    dataset = fastwds.WebDataset(shards)
    assert isinstance(dataset, IterableDataset)
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    seen = Counter(s["__key__"] for s in loader)
    assert seen == Counter(f"s{i:04d}" for i in range(COUNT))
    batches = list(fastwds.make_loader(shards, batch_size=4, num_workers=2, prefetch_factor=2))
    assert sorted(k for b in batches for k in b["__key__"]) == [f"s{i:04d}" for i in range(COUNT)]
    first = batches[0]
    assert isinstance(first["npy"], torch.Tensor) and first["npy"].shape == (4, 2, 3)
    assert [document["i"] for document in first["json"]] == list(range(4)) and len(first["txt"]) == 4


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_and_workers_split_shards_without_duplicates(shards, world_size, monkeypatch):
    seen = Counter()
    for rank in range(world_size):
        loader = fastwds.make_loader(shards, num_workers=2, rank=rank, world_size=world_size)
        seen.update(s["__key__"] for s in loader)
    assert seen == Counter(f"s{i:04d}" for i in range(COUNT))
    # Without arguments the rank comes from the environment torchrun sets.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    from_env = keys(fastwds.WebDataset(shards))
    expected = keys(fastwds.WebDataset(split_shards(shards, 1, world_size, 0, 1), rank=0, world_size=1))
    assert from_env == expected and 0 < len(from_env) < COUNT


def test_split_shards_covers_everything_exactly_once():
    shards = [f"s{i}" for i in range(23)]
    parts = [split_shards(shards, r, 3, w, 4) for r in range(3) for w in range(4)]
    assert sorted(s for part in parts for s in part) == sorted(shards)


def test_shuffle_is_deterministic_per_seed_and_epoch(shards):
    def order(seed: int, epoch: int) -> list[str]:
        dataset = fastwds.WebDataset(shards, shuffle=True, buffer_size=10, seed=seed)
        dataset.set_epoch(epoch)
        return keys(dataset)

    plain = keys(fastwds.WebDataset(shards))
    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0) and order(0, 0) != plain
    assert sorted(order(3, 7)) == plain
    # Only set_epoch changes the order (as DistributedSampler): iterating again repeats it.
    dataset = fastwds.WebDataset(shards, shuffle=True, buffer_size=10)
    assert keys(dataset) == keys(dataset) == order(0, 0)
    dataset.set_epoch(1)
    assert keys(dataset) == order(0, 1)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="epoch must be an integer"):
            dataset.set_epoch(bad)


@pytest.mark.parametrize("num_workers, persistent, context", [
    (0, False, None), (2, False, None), (2, True, None), (1, True, "spawn")])
def test_the_shuffle_order_changes_only_through_set_epoch_whatever_the_workers(shards, num_workers, persistent,
                                                                               context):
    """The same training loop gives the same epochs with num_workers=0 (debugging) and with
    workers, persistent or not, forked or spawned: without set_epoch every epoch repeats the
    order, and set_epoch reaches workers that were started before it."""
    def loader_of(epoch: int | None = None) -> DataLoader:
        dataset = fastwds.WebDataset(shards, shuffle=True, buffer_size=10, seed=1)
        if epoch is not None:
            dataset.set_epoch(epoch)
        options = {"persistent_workers": persistent, "multiprocessing_context": context} if num_workers else {}
        return DataLoader(dataset, batch_size=None, num_workers=num_workers, **options)

    loader = loader_of()
    first, again = keys(loader), keys(loader)
    assert first == again
    loader.dataset.set_epoch(5)
    fifth = keys(loader)
    assert fifth != first and sorted(fifth) == sorted(first) == [f"s{i:04d}" for i in range(COUNT)]
    assert keys(loader_of(5)) == fifth
    copy = pickle.loads(pickle.dumps(loader.dataset))  # a plain pickle keeps the epoch, not the shared memory
    assert copy.epoch == 5 and keys(copy) == keys(loader_of(5).dataset)
    copy.set_epoch(6)
    assert loader.dataset.epoch == 5


def test_shuffle_buffer_keeps_its_limits():
    import random

    samples = [{"__key__": str(i), "x": bytes(10)} for i in range(100)]
    assert [s["__key__"] for s in shuffled(iter(samples), 1, 10**9, random.Random(0))] == [str(i) for i in range(100)]
    held = []

    def counted():
        for position, sample in enumerate(samples):
            held.append(position)
            yield sample

    out = []
    for sample in shuffled(counted(), 50, 35, random.Random(0)):
        out.append(sample)
        assert len(held) - len(out) <= 3  # 35 bytes hold at most 3 samples of 10
    assert sorted(int(s["__key__"]) for s in out) == list(range(100))


def test_urls_from_manifest_folder_glob_braces_and_wids(tmp_path):
    assert expand_braces("a-{000..002}-{x,y}.tar") == ["a-000-x.tar", "a-000-y.tar", "a-001-x.tar", "a-001-y.tar",
                                                       "a-002-x.tar", "a-002-y.tar"]
    data = tmp_path / "data"
    data.mkdir()
    volume = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 2, 2, 2)
    for i in range(5):
        np.savez(data / f"v{i}.npz", volume * i / 5)
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "fastwds", "convert", "npz", str(data), str(out), "--samples-per-shard", "2",
                    "--num-workers", "1", "--no-progress"], check=True, capture_output=True)
    expected = [f"v{i}" for i in range(5)]
    assert keys(fastwds.WebDataset(out)) == expected
    assert keys(fastwds.WebDataset(out / "manifest.json")) == expected
    assert keys(fastwds.WebDataset(out / "index.wids.json")) == expected
    assert keys(fastwds.WebDataset(str(out / "*.tar"))) == expected
    assert keys(fastwds.WebDataset(str(out / "data-{000000..000002}.tar"))) == expected
    with pytest.raises(fastwds.InvalidInputError, match="no file matches this pattern"):
        fastwds.WebDataset(str(out / "nothing-*.tar"))
    with pytest.raises(fastwds.InvalidInputError, match="local paths and s3:// URLs"):
        fastwds.WebDataset("https://example.org/a.tar")


def test_reads_webdataset_pax_and_tarfile_gnu_and_ustar_prefix_shards(tmp_path):
    import webdataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        with webdataset.TarWriter(str(tmp_path / "wds.tar")) as writer:
            for i in range(3):
                writer.write({"__key__": f"deep/dir/{'x' * 120}{i}", "npy": array_of(i), "txt": "hi"})
    samples = list(fastwds.WebDataset(str(tmp_path / "wds.tar")))
    assert keys(samples) == [f"deep/dir/{'x' * 120}{i}" for i in range(3)]
    np.testing.assert_array_equal(samples[2]["npy"], array_of(2))
    long_dir = "p" * 90 + "/" + "q" * 40
    for name, tar_format in (("gnu.tar", tarfile.GNU_FORMAT), ("ustar.tar", tarfile.USTAR_FORMAT),
                             ("pax.tar", tarfile.PAX_FORMAT)):
        with tarfile.open(tmp_path / name, "w", format=tar_format) as tar:
            directory = tarfile.TarInfo(long_dir)
            directory.type = tarfile.DIRTYPE
            tar.addfile(directory)
            for member, data in ((f"{long_dir}/a.txt", b"A"), (f"{long_dir}/a.json", b"[1]"), ("b.txt", b"B")):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            link = tarfile.TarInfo("c.txt")
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            tar.addfile(link)
        samples = list(fastwds.WebDataset(str(tmp_path / name)))
        assert [(s["__key__"], s.get("txt"), s.get("json")) for s in samples] == \
               [(f"{long_dir}/a", "A", [1]), ("b", "B", None)], name


@pytest.mark.parametrize("name", ["../x.npy", "a/../../x.npy", "/etc/x.npy"])
def test_members_escaping_the_archive_are_refused(tmp_path, name):
    shard = crafted_tar(tmp_path / "evil.tar", {"ok.txt": b"fine", name: b"\x93NUMPY"})
    with pytest.raises(UnsafeMemberError, match="points outside the archive"):
        list(fastwds.WebDataset(shard, decode=False))


class Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_nothing_is_ever_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Evil(str(marker)))
    object_npy = io.BytesIO()
    np.save(object_npy, np.array([Evil(str(marker))], dtype=object), allow_pickle=True)
    assert not marker.exists()
    shard = crafted_tar(tmp_path / "p.tar", {"a.pickle": payload, "a.pyd": payload, "a.pth": payload,
                                              "b.npy": object_npy.getvalue()})
    dataset = iter(fastwds.WebDataset(shard))
    first = next(dataset)
    assert first["pickle"] == payload and first["pyd"] == payload and first["pth"] == payload
    with pytest.raises(ValueError, match="allow_pickle"):
        next(dataset)
    assert not marker.exists()


def test_damaged_shards_fail_clearly(tmp_path, shards):
    data = Path(shards[0]).read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:2000])
    with pytest.raises(ShardFormatError, match="cut short"):
        list(fastwds.WebDataset(str(tmp_path / "cut.tar")))
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(ShardFormatError, match="checksum"):
        list(fastwds.WebDataset(str(tmp_path / "junk.tar")))
    twice = crafted_tar(tmp_path / "twice.tar", {"a.txt": b"1", "a.json": b"2", "a.TXT": b"3"})
    with pytest.raises(ShardFormatError, match="'txt' twice"):
        list(fastwds.WebDataset(twice))


@pytest.mark.parametrize("array", [
    np.arange(24, dtype=">f4").reshape(2, 3, 4),
    np.asfortranarray(np.arange(24, dtype=np.float16).reshape(2, 3, 4)),
    np.zeros((0, 3), np.int16),
    np.array(3.5),
    np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
])
def test_read_npy_matches_np_load(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    data = buffer.getvalue()
    stream = io.BytesIO(data + b"rest")
    loaded = read_npy("k.npy", len(data), stream)
    assert stream.read() == b"rest"
    expected = np.load(io.BytesIO(data))
    assert loaded.dtype == expected.dtype and loaded.shape == expected.shape
    np.testing.assert_array_equal(loaded, expected)
    assert loaded.flags.f_contiguous == expected.flags.f_contiguous


def test_import_fastwds_does_not_import_torch():
    code = "import sys, fastwds; fastwds.WebDataset; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"



member_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_/-]{0,150}", fullmatch=True).filter(
    lambda n: "//" not in n and not n.endswith("/"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(member_names, st.sampled_from(["txt", "bin", "0.dat"]), st.binary(max_size=1500)),
                min_size=1, max_size=6),
       st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
def test_raw_members_match_tarfile(tmp_path_factory, members, tar_format):
    path = tmp_path_factory.mktemp("prop") / "p.tar"
    with tarfile.open(path, "w", format=tar_format) as tar:
        for stem, ext, data in members:
            info = tarfile.TarInfo(f"{stem}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with open(path, "rb") as stream:
        assert list(iter_members(stream, str(path))) == expected


def test_metadata_members_are_skipped_and_extensions_kept_as_written(tmp_path):
    """The reader groups members exactly as verify and Energon do: '__x__' members are left out
    (webdataset and Energon skip them), and extensions keep their case (Energon and HF do not
    lowercase); decoders are still chosen case-insensitively."""
    shard = crafted_tar(tmp_path / "s.tar", {"__meta__/info.json": b'{"x": 1}', "a.JSON": b'{"k": 2}', "a.txt": b"t"})
    samples = list(fastwds.WebDataset(shard))
    assert [sorted(k for k in s if not k.startswith("__")) for s in samples] == [["JSON", "txt"]]
    assert samples[0]["JSON"] == {"k": 2}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="ab._/", min_size=1, max_size=8), min_size=1, max_size=8, unique=True))
def test_reader_and_verify_scanner_group_members_the_same(tmp_path_factory, names):
    from fastwds.tar.format import is_unsafe_path
    from fastwds.tar.scanner import TarScanner, group_samples

    names = [n for n in names if not is_unsafe_path(n) and not n.endswith("/")]
    shard = crafted_tar(tmp_path_factory.mktemp("group") / "s.tar", {n: n.encode() for n in names})
    with open(shard, "rb") as stream:
        scanned = [(s.key, s.extensions()) for s in group_samples(iter(TarScanner(stream)))]
    try:
        read = [(s["__key__"], [k for k in s if k not in ("__key__", "__url__")])
            for s in fastwds.WebDataset(shard, decode=False)]
    except ShardFormatError:  # a repeated extension: verify reports it as duplicate_extension
        assert any(len({e.lower() for e in exts}) < len(exts) for _, exts in scanned)
        return
    assert read == scanned


def test_batches_keep_members_the_first_sample_lacks(tmp_path):
    """A member missing from the batch's first sample is still batched (None where absent),
    whatever the order of the samples, through a real DataLoader."""
    with fastwds.ShardWriter(str(tmp_path / "x-%06d.tar")) as writer:
        writer.write({"__key__": "a", "npy": np.zeros(2)})
        writer.write({"__key__": "b", "npy": np.ones(2), "txt": "caption b", "json": {"j": 1}})
        writer.write({"__key__": "c", "npy": np.ones(2), "cls": b"3"})
    [batch] = fastwds.make_loader(str(tmp_path / "x-000000.tar"), batch_size=3, num_workers=1)
    assert list(batch) == ["__key__", "__url__", "npy", "json", "txt", "cls"]  # as they first appear
    assert batch["__key__"] == ["a", "b", "c"] and batch["npy"].shape == (3, 2)
    assert batch["txt"] == [None, "caption b", None]
    assert batch["json"] == [None, {"j": 1}, None] and batch["cls"] == [None, None, 3]


def test_json_documents_stay_one_per_sample_in_a_batch(tmp_path):
    """torch's default_collate transposed agreeing JSON dicts into a dict of lists, and raised
    KeyError when a later sample's JSON lacked a key of the first (--on-invalid keep's 'invalid')."""
    with fastwds.ShardWriter(str(tmp_path / "x-%06d.tar")) as writer:
        writer.write({"__key__": "a", "json": {"id": "a", "invalid": {"reason": "r"}}})
        writer.write({"__key__": "b", "json": {"id": "b"}})
    [batch] = fastwds.make_loader(str(tmp_path / "x-000000.tar"), batch_size=2)
    assert batch["json"] == [{"id": "a", "invalid": {"reason": "r"}}, {"id": "b"}]


BROKEN_MEMBERS = [("jpg", b"notajpeg", "UnidentifiedImageError"), ("json", b"{bad json", "JSONDecodeError"),
                  ("npy", b"\x93NUMPYgarbage", "ValueError"), ("cls", b"x", "ValueError"),
                  ("txt", b"\xff\xfe", "UnicodeDecodeError"), ("png", b"\x89PNG\r\n\x1a\n" + bytes(20), "Error"),
                  ("npy.zst", b"notzstd", "ZstdError"), ("json.gz", b"notgz", "BadGzipFile")]


@pytest.mark.parametrize("ext, data, cause", BROKEN_MEMBERS)
def test_undecodable_members_raise_decode_error_naming_shard_key_and_member(tmp_path, ext, data, cause):
    shard = crafted_tar(tmp_path / "broken.tar", {"good.txt": b"fine", f"bad.{ext}": data, "last.txt": b"ok"})
    with pytest.raises(fastwds.DecodeError) as caught:
        list(fastwds.WebDataset(shard))
    error = caught.value
    assert isinstance(error, fastwds.ShardFormatError) and isinstance(error, ValueError)
    assert (error.shard, error.key, error.member) == (shard, "bad", ext)
    assert str(error).startswith(f"{shard}: sample 'bad': cannot decode member '{ext}': ")
    assert cause in type(error.__cause__).__name__ and "BytesIO" not in str(error)
    copy = pickle.loads(pickle.dumps(error))  # crosses process boundaries with its fields
    assert (type(copy), str(copy), copy.shard, copy.key, copy.member) == (type(error), str(error), shard, "bad", ext)


def test_decode_error_through_dataloader_workers_and_skipping(tmp_path, caplog):
    shard = crafted_tar(tmp_path / "broken.tar", {"a.txt": b"A", "b.jpg": b"notajpeg", "b.txt": b"B",
                                                  "c.json": b"{bad", "d.txt": b"D"})
    # A worker's error reaches the training loop as the same type, still naming shard, key, member.
    with pytest.raises(fastwds.DecodeError, match=r"broken\.tar: sample 'b': cannot decode member 'jpg'"):
        list(fastwds.make_loader(shard, num_workers=1))
    custom = fastwds.WebDataset(shard, decode={"txt": lambda data: 1 / 0})
    with pytest.raises(fastwds.DecodeError, match="sample 'a': cannot decode member 'txt': ZeroDivisionError"):
        list(custom)
    with pytest.raises(ValueError, match="on_decode_error"):
        fastwds.WebDataset(shard, on_decode_error="ignore")
    loader = fastwds.make_loader(shard, num_workers=2, on_decode_error="skip")
    assert sorted(s["__key__"] for s in loader) == ["a", "d"]
    with caplog.at_level("WARNING", logger="fastwds.reader"):
        assert [s["txt"] for s in fastwds.WebDataset(shard, on_decode_error="skip")] == ["A", "D"]
    assert [r.getMessage().split(" (caused")[0] for r in caplog.records] == [
        f"{shard}: sample 'b': cannot decode member 'jpg': UnidentifiedImageError: not an image format Pillow can "
        "identify (it starts with b'notajpeg')",
        f"{shard}: sample 'c': cannot decode member 'json': JSONDecodeError: Expecting property name enclosed in "
        "double quotes: line 1 column 2 (char 1)"]


def test_a_damaged_gzip_shard_raises_shard_format_error(tmp_path, shards):
    compressed = gzip.compress(Path(shards[0]).read_bytes())
    (tmp_path / "cut.tar.gz").write_bytes(compressed[:len(compressed) // 2])
    with pytest.raises(ShardFormatError, match=r"cut\.tar\.gz: the gzip stream is damaged or cut short"):
        list(fastwds.WebDataset(str(tmp_path / "cut.tar.gz")))


def test_decode_mapping_keys_may_be_whole_extensions_and_never_silently_miss(tmp_path):
    labels = io.BytesIO()
    np.save(labels, np.arange(3))
    shard = crafted_tar(tmp_path / "s.tar", {
        "a.labels.npy": labels.getvalue(), "a.npy": labels.getvalue(), "a.json": b'{"i": 1}',
        "a.mask.npy.zst": zstandard.ZstdCompressor().compress(labels.getvalue()), "a.npy.zst": b"raw"})
    [sample] = fastwds.WebDataset(shard, decode={"labels.npy": lambda data: ("mine", len(data)),
                                                 "MASK.npy": lambda data: data[:6], "npy.zst": None})
    assert sample["labels.npy"] == ("mine", len(labels.getvalue()))  # the whole extension wins for that member
    np.testing.assert_array_equal(sample["npy"], np.arange(3))        # and only for it
    assert sample["mask.npy.zst"] == b"\x93NUMPY"                      # decompressed, then the custom decoder
    assert sample["npy.zst"] == b"raw" and sample["json"] == {"i": 1}
    for key, message in ((".json", r"without the leading dot \('json'\)"), ("pil", "webdataset image spec"),
                         ("rgb8", "webdataset image spec"), ("", "can never match"), ("labels..npy", "can never match"),
                         ("npy.", "can never match"), ("a/b", "can never match")):
        with pytest.raises(ValueError, match=re.escape(f"decode key {key!r}")):
            fastwds.WebDataset(shard, decode={key: None})
        with pytest.raises(ValueError, match=message):
            fastwds.make_loader(shard, decode={"txt": None, key: None})


@pytest.mark.parametrize("options, error, message", [
    ({"rank": 3, "world_size": 2}, ValueError, r"rank 3 is not within world_size 2 \(ranks are 0 to 1\)"),
    ({"rank": 2, "world_size": 2}, ValueError, "rank 2 is not within world_size 2"),
    ({"world_size": 0}, ValueError, "world_size must be at least 1, not 0"),
    ({"rank": -1}, ValueError, "rank must be at least 0, not -1"),
    ({"rank": "1", "world_size": 2}, TypeError, "rank must be an integer or None, not '1'"),
])
def test_impossible_rank_or_world_size_is_refused_by_the_constructor(shards, options, error, message):
    with pytest.raises(error, match=message):
        fastwds.WebDataset(shards, **options)
    with pytest.raises(error, match=message):
        fastwds.make_loader(shards, num_workers=2, **options)


def test_url_errors_name_the_url_given_not_a_manifest_beside_it(shards):
    for url in ("http://x/y.tar", "https://example.org/data-{000000..000003}.tar", "gs://bucket/x.tar"):
        with pytest.raises(fastwds.InvalidInputError) as caught:
            fastwds.WebDataset(url)
        assert str(caught.value).startswith(f"{url}: fastwds reads and writes local paths and s3:// URLs")
        assert "manifest.json" not in str(caught.value)
    # An unreachable store: the shard given leads the message (one attempt, a closed port).
    code = ("import fastwds\n"
            "try:\n    fastwds.WebDataset('s3://bucket/x-000000.tar')\n"
            "except fastwds.FastwdsError as error:\n    print(type(error).__name__, error)\n")
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.startswith("StorageError s3://bucket/x-000000.tar: cannot reach its store (looking for the "
                                    "manifest.json beside it): "), (result.stdout, result.stderr)


def test_running_out_of_memory_is_not_a_decode_error(tmp_path):
    def exhausted(data: bytes):
        raise MemoryError

    shard = crafted_tar(tmp_path / "s.tar", {"a.txt": b"A", "b.txt": b"B"})
    with pytest.raises(MemoryError):
        list(fastwds.WebDataset(shard, decode={"txt": exhausted}, on_decode_error="skip"))
