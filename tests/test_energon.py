"""Energon-ready output: Megatron-Energon 7.4.1 itself loads what `fastwds convert sft` writes,
without `energon prepare`, and `energon prepare` on the same shards writes the same index."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import braceexpand
import fastwds
import megatron.energon  # a test dependency (the `test` extra): these tests never skip
import pytest
import yaml
from conftest import jpeg_bytes
from fastwds.energon import ENERGON_VERSION, META_DIR, write_energon_meta
from fastwds.sources.sft import check_names_agree
from fastwds.tar.names import split_name
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from sft_data import make_image_dataset, make_video_dataset
from test_convert_sft import run_cli


def test_the_pinned_energon_is_the_one_installed():
    assert megatron.energon.__version__ == ENERGON_VERSION == "7.4.1"


def energon_samples(path: Path, split: str = "train", **dataset_options) -> list:
    """Every sample of one split, through Energon's public loader API (one pass, no shuffling)."""
    from megatron.energon import WorkerConfig, get_loader, get_val_dataset

    with warnings.catch_warnings():
        # torch's DataLoader warns that pin_memory has no accelerator on this machine.
        warnings.filterwarnings("ignore", message=".*pin_memory.*", category=UserWarning)
        dataset = get_val_dataset(str(path), split_part=split, batch_size=None,
                                  worker_config=WorkerConfig(rank=0, world_size=1, num_workers=0), **dataset_options)
        return list(get_loader(dataset))


def media_tokens(sample) -> tuple[int, int]:
    text = "".join(turn["content"] for turn in sample.messages) + (sample.system or "")
    return text.count("<image>"), text.count("<video>")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_dataset(tmp_path_factory.mktemp("energon-images"))


@pytest.fixture(scope="module")
def converted(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("energon-out") / "out"
    run_cli("convert", "sft", str(images.root / "data.json"), str(images.root / "nested" / "more.jsonl"), str(out),
            "--max-samples-per-shard", "3", "--split-ratio", "8,1,1", "--no-progress")
    return out


def keys_of(samples) -> list[str]:
    return sorted(sample.__key__ for sample in samples)


def test_energon_loads_every_valid_sample_with_its_images(images, converted):
    splits = yaml.safe_load((converted / META_DIR / "split.yaml").read_text())["split_parts"]
    assert splits["train"] and splits["test"]  # with 5 shards, 8,1,1 leaves val empty, as energon prepare does
    loaded = {}
    for split in ("train", "test"):
        for sample in energon_samples(converted, split):
            assert sample.__key__ not in loaded, "a sample in two splits"
            loaded[sample.__key__] = sample
    assert sorted(loaded) == sorted(fastwds.portable_key(e.id) for e in images.valid)
    for expected in images.valid:
        sample = loaded[fastwds.portable_key(expected.id)]
        assert type(sample).__name__ == "ChatSample"
        assert sample.video is None
        if not expected.media:
            assert sample.image is None
            continue
        assert len(sample.image) == len(expected.media) == media_tokens(sample)[0]
        for tensor, name in zip(sample.image, expected.media):  # decoded by Energon, one per file
            with Image.open(io.BytesIO(images.files[name])) as source:
                assert tuple(tensor.shape) == (3, source.height, source.width)
        assert sample.system == expected.system
        assert [turn["role"] for turn in sample.messages] == ["user", "assistant"]


def test_energon_loads_videos(tmp_path):
    videos = make_video_dataset(tmp_path / "videos")
    out = tmp_path / "out"
    run_cli("convert", "sft", str(videos.root / "videos.jsonl"), str(out), "--media", "video", "--no-progress")
    from megatron.energon.av import AVDecoder

    loaded = {sample.__key__: sample for sample in energon_samples(out)}
    assert sorted(loaded) == sorted(e.id for e in videos.valid)
    for expected in videos.valid:
        sample = loaded[expected.id]
        assert sample.image is None
        if not expected.media:
            assert sample.video is None
            continue
        assert len(sample.video) == len(expected.media) == media_tokens(sample)[1]
        assert all(isinstance(video, AVDecoder) for video in sample.video)
        assert [video.stream.getvalue() for video in sample.video] == [videos.files[f] for f in expected.media]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Energon's note about seeking by seconds
        clip = loaded["one"].video[0].get_video()
    assert tuple(clip.video_clips[0].shape) == (3, 3, 24, 32)  # 3 frames of 32x24 RGB


def test_energon_prepare_writes_the_same_index(converted, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    shards = sorted(p.name for p in converted.glob("*.tar"))
    assert len(shards) >= 5
    for name in shards:
        shutil.copy(converted / name, copy / name)
    result = subprocess.run([sys.executable, "-m", "megatron.energon.cli.main", "prepare", str(copy),
                             "--non-interactive", "--split-ratio", "8,1,1", "--sample-type", "CrudeWebdataset",
                             "--no-progress", "--num-workers", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in shards:
        assert (copy / f"{name}.idx").read_bytes() == (converted / f"{name}.idx").read_bytes(), name
    ours, theirs = converted / META_DIR, copy / META_DIR
    assert (ours / ".info.json").read_bytes() == (theirs / ".info.json").read_bytes()

    def table(path: Path, query: str) -> list:
        with sqlite3.connect(path) as db:
            rows = db.execute(query).fetchall()
        db.close()
        return rows

    for query in ("SELECT * FROM samples ORDER BY tar_file_id, sample_index",
                  "SELECT * FROM sample_parts ORDER BY tar_file_id, sample_index, content_byte_offset",
                  "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name", "PRAGMA user_version"):
        assert table(ours / "index.sqlite", query) == table(theirs / "index.sqlite", query), query
    assert len(table(ours / "index.sqlite", "SELECT * FROM samples")) > 0

    def splits(path: Path) -> dict:
        config = yaml.safe_load(path.read_text())
        return {part: [n for pattern in names for n in braceexpand.braceexpand(pattern)]
                for part, names in config["split_parts"].items()} | {"exclude": config["exclude"]}

    assert splits(ours / "split.yaml") == splits(theirs / "split.yaml")
    assert len((ours / "index.uuid").read_text()) == 36


def test_the_seed_crash_needs_names_that_disagree_with_members_and_fastwds_never_writes_them(converted, tmp_path):
    # The seed's shard: the JSON names a member "0_a.jpg" but the image went in as "jpg".
    seed = tmp_path / "seed"
    document = {"media": "image", "name": ["0_a.jpg"], "texts": [{"role": "user", "content": "<image> what?"},
                                                                  {"role": "assistant", "content": "a cat"}]}
    with fastwds.ShardWriter(str(seed / "seed-%06d.tar"), energon_index=True) as writer:
        writer.write({"__key__": "s0", "jpg": jpeg_bytes(), "json": document})
    write_energon_meta(seed, [{"name": r.name, "samples": r.num_samples, "sha256": r.sha256} for r in writer.records],
                       split_ratio=(1, 0, 0), sample_type="fastwds.energon_types:ChatSample")
    # A loader in the style the seed used looks members up with .get(): the image becomes None,
    # so the model sees one <image> token and no image (the reported crash).
    (seed / META_DIR / "sample_loader.py").write_text(
        "def sample_loader(raw):\n"
        "    return dict(messages=raw['json']['texts'], image=[raw.get(n) for n in raw['json']['name']])\n"
        "def part_filter(part):\n    return True\n")
    [sample] = energon_samples(seed)
    assert media_tokens(sample)[0] == 1 and [image for image in sample.image if image is not None] == []
    # fastwds refuses to write such a sample ...
    with pytest.raises(fastwds.FastwdsError, match="does not match"):
        check_names_agree("s0", document["name"], {"jpg": jpeg_bytes(), "json": b"{}"})
    # ... and in everything it wrote, each JSON names exactly its sample's media members.
    checked = 0
    for shard in converted.glob("*.tar"):
        with tarfile.open(shard) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for member in tar:
                key, ext = member.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for key, parts in members.items():
            names = json.loads(parts.pop("json"))["name"]
            assert sorted(names) == sorted(parts) and all(parts.values()), key
            checked += 1
    assert checked == sum(len(energon_samples(converted, split)) for split in ("train", "test"))


def test_invalid_samples_kept_for_inspection_are_excluded_from_energon(images, tmp_path):
    out = tmp_path / "out"
    run_cli("convert", "sft", str(images.root / "data.json"), str(out), "--on-invalid", "keep", "--no-progress")
    kept = {json.loads(line)["id"] for line in (out / "rejects.jsonl").read_text().splitlines()
            if json.loads(line)["action"] == "kept"}
    assert {"missing", "too-few", "truncated"} <= kept
    exclude = yaml.safe_load((out / META_DIR / "split.yaml").read_text())["exclude"]
    assert sorted(entry.split("/", 1)[1] for entry in exclude) == sorted(fastwds.portable_key(i) for i in kept)
    loaded = energon_samples(out)
    assert keys_of(loaded) == sorted(fastwds.portable_key(e.id) for e in images.valid if e.file == "data.json")
    for sample in loaded:
        assert media_tokens(sample)[0] == len(sample.image or [])


def test_own_sample_type(images, tmp_path, monkeypatch):
    module = tmp_path / "modules" / "my_training_types.py"
    module.parent.mkdir()
    module.write_text(
        "from typing import Any, Optional\n"
        "from megatron.energon import Sample\n"
        "from megatron.energon.edataclass import edataclass\n\n"
        "@edataclass\n"
        "class MixSample(Sample):\n"
        "    messages: list\n"
        "    image: Optional[list] = None\n"
        "    video: Optional[list] = None\n"
        "    system: Optional[str] = None\n")
    monkeypatch.syspath_prepend(str(module.parent))
    out = tmp_path / "out"
    run_cli("convert", "sft", str(images.root / "data.json"), str(out), "--energon-sample-type",
            "my_training_types:MixSample", "--no-progress")
    assert "__module__: my_training_types" in (out / META_DIR / "dataset.yaml").read_text()
    loaded = energon_samples(out)
    assert {type(sample).__name__ for sample in loaded} == {"MixSample"}
    assert len(loaded) == len([e for e in images.valid if e.file == "data.json"])


def test_fastwds_replaces_or_removes_only_the_energon_index_it_wrote(images, tmp_path):
    out = tmp_path / "out"
    run_cli("convert", "sft", str(images.root / "data.json"), str(out), "--no-progress")
    assert (out / META_DIR / "index.sqlite").exists() and list(out.glob("*.tar.idx"))
    run_cli("convert", "sft", str(images.root / "data.json"), str(out), "--no-energon", "--overwrite", "--no-progress")
    assert not (out / META_DIR).exists() and not list(out.glob("*.tar.idx")) and list(out.glob("*.tar"))
    # A .nv-meta/ someone else wrote stays.
    (out / META_DIR).mkdir()
    (out / META_DIR / "dataset.yaml").write_text("mine: true\n")
    run_cli("convert", "sft", str(images.root / "data.json"), str(out), "--no-energon", "--overwrite", "--no-progress")
    assert (out / META_DIR / "dataset.yaml").read_text() == "mine: true\n"
    refused = run_cli("convert", "sft", str(images.root / "data.json"), str(out), "--overwrite", check=False)
    assert refused.returncode == 1 and "was not written by fastwds" in refused.stderr
    assert (out / META_DIR / "dataset.yaml").read_text() == "mine: true\n"


@given(st.text(alphabet="ab./_", max_size=12))
def test_member_names_split_into_key_and_part_as_energon_splits_them(name):
    from megatron.energon.flavors.webdataset.config import split_name_re

    match = split_name_re.match(name)
    assert split_name(name) == (match.groups() if match else None)


def test_a_split_left_without_shards_is_warned_about(tmp_path):
    """--split-ratio 8,1,1 over one shard gives train 0, val 0, test 1 (as energon prepare cuts
    it): a training set without training shards, now said when it happens."""
    dataset = make_image_dataset(tmp_path / "sft")
    out = tmp_path / "out"
    result = run_cli("convert", "sft", str(dataset.root / "data.json"), str(out), "--split-ratio", "8,1,1",
                     "--no-progress", "--json")
    assert json.loads((out / "manifest.json").read_text())["energon"]["splits"] == {"train": 0, "val": 0, "test": 1}
    assert "leaves train and val without any" in result.stderr, result.stderr
    quiet = run_cli("convert", "sft", str(dataset.root / "data.json"), str(tmp_path / "many"), "--split-ratio",
                    "8,1,1", "--max-samples-per-shard", "1", "--no-progress")
    assert "without any" not in quiet.stderr
