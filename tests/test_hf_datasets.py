"""Hugging Face ``datasets`` (the real package) loads every sample and every image of fastwds'
output, with images in mixed formats and several per sample, whatever the order of the shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import jpeg_bytes, png_bytes, run_cli
from parquet_data import turns, write_rows
from sft_data import make_image_dataset

import datasets  # noqa: E402  (a test dependency: never skipped)


def image(fmt: str, seed: int) -> bytes:
    if fmt == "jpg":
        return jpeg_bytes(seed=seed)
    if fmt == "png":
        return png_bytes(seed=seed)
    out = io.BytesIO()
    Image.new("RGB", (12 + seed, 9), (seed * 20 % 255, 90, 30)).save(out, format="WEBP" if fmt == "webp" else "GIF")
    return out.getvalue()


@pytest.fixture(autouse=True)
def offline_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Shards whose first samples are all png (the case where HF silently dropped later jpg,
    webp and gif images), then every format, then samples with two and three images."""
    formats = ["png"] * 6 + ["jpg", "webp", "gif", "jpg", "png", "webp"] * 3
    rows = [(f"one-{i}", image(fmt, i), None, turns("<image> what?"), None) for i, fmt in enumerate(formats)]
    rows += [(f"two-{i}", None, [image("jpg", i), image("gif", i)], turns("<image><image> compare"), None)
             for i in range(4)]
    rows += [(f"three-{i}", None, [image("webp", i), image("png", i), image("jpg", i)],
              turns("<image><image><image> which?"), None) for i in range(3)]
    write_rows(tmp_path / "data" / "a.parquet", rows, row_group_size=5)
    out = tmp_path / "out"
    run_cli("convert", "parquet", str(tmp_path / "data"), str(out), "--max-samples-per-shard", "8", "--no-progress")
    return out


def shard_images(out: Path) -> int:
    count = 0
    for shard in out.glob("*.tar"):
        with tarfile.open(shard) as tar:
            count += sum(not m.name.endswith(".json") for m in tar.getmembers())
    return count


def decoded_images(dataset) -> int:
    columns = [c for c in dataset.column_names if not c.startswith("__") and c != "json"]
    total = 0
    for row in dataset:
        for column in columns:
            if row[column] is not None:
                assert isinstance(row[column], Image.Image) and row[column].size[0] > 0
                total += 1
    return total


def test_the_output_folder_loads_completely(mixed):
    manifest = json.loads((mixed / "manifest.json").read_text())
    dataset = datasets.load_dataset(str(mixed), split="train")
    assert len(dataset) == manifest["totals"]["samples"] == 24 + 4 + 3
    assert decoded_images(dataset) == shard_images(mixed) == 24 + 8 + 9
    assert all(isinstance(row["json"], dict) and row["json"]["conversations"] for row in dataset)


@pytest.mark.parametrize("order", ["sorted", "reversed", "last-first"])
def test_explicit_shard_lists_load_completely_in_any_order(mixed, order):
    import fastwds.hf

    shards = sorted(str(p) for p in mixed.glob("*.tar"))
    shards = {"sorted": shards, "reversed": shards[::-1], "last-first": shards[-1:] + shards[:-1]}[order]
    dataset = datasets.load_dataset("webdataset", data_files={"train": shards}, split="train",
                                    features=fastwds.hf.features(str(mixed)))
    assert len(dataset) == 31 and decoded_images(dataset) == shard_images(mixed)


def test_without_declared_features_hf_loses_images_of_the_same_shards(mixed):
    """What the card prevents: HF's own inference on these shards fails or drops images."""
    shards = sorted(str(p) for p in mixed.glob("*.tar"))
    try:
        dataset = datasets.load_dataset("webdataset", data_files={"train": shards}, split="train")
    except Exception as error:  # "don't share the same prefix or the same types"
        assert "same" in str(error)
        return
    assert decoded_images(dataset) < shard_images(mixed)


def test_sft_output_with_several_images_loads_completely(tmp_path):
    dataset_files = make_image_dataset(tmp_path / "sft")
    out = tmp_path / "out"
    run_cli("convert", "sft", str(dataset_files.root / "data.json"), str(out), "--no-progress")
    manifest = json.loads((out / "manifest.json").read_text())
    dataset = datasets.load_dataset(str(out), split="train")
    assert len(dataset) == manifest["totals"]["samples"]
    assert decoded_images(dataset) == shard_images(out)


def test_verify_warns_when_hf_would_fail_or_drop_members(mixed):
    def hf_warnings() -> dict[str, str]:
        report = json.loads(run_cli("verify", str(mixed), "--json").stdout)
        return {i["code"]: i["message"] for i in report["issues"] if i["code"].startswith("hf_")}

    assert hf_warnings() == {}  # the card fastwds wrote declares every column
    card = (mixed / "README.md").read_text()
    (mixed / "README.md").write_text(card.replace('- name: "webp"\n    dtype: image\n', ""))
    assert "'webp'" in hf_warnings()["hf_columns_undeclared"]
    (mixed / "README.md").unlink()
    differ = hf_warnings()["hf_columns_differ"]
    assert "silently drops" in differ and "'jpg'" in differ and "features=" in differ
    strict = run_cli("verify", str(mixed), "--strict", check=False)
    assert strict.returncode == 1 and "hf_columns_differ" in strict.stdout


def test_kept_invalid_images_and_videos_load_as_bytes(tmp_path):
    """A broken image kept by --on-invalid keep is ``KEY.bin``, a video ``KEY.mp4``: the card
    declared no columns then, and HF failed the load ("don't share the same prefix or the same
    types") or dropped images. They are declared as binary now: every sample and member loads."""
    from parquet_data import corrupt_png
    from sft_data import make_video_dataset

    rows = [(f"ok-{i}", image("png" if i % 2 else "jpg", i), None, turns("<image> what?"), None) for i in range(6)]
    rows.insert(2, ("broken", b"not an image at all", None, turns("<image> what?"), None))
    rows.insert(4, ("cut", corrupt_png()[:40], None, turns("<image> what?"), None))
    write_rows(tmp_path / "data" / "a.parquet", rows)
    out = tmp_path / "keep"
    run_cli("convert", "parquet", str(tmp_path / "data"), str(out), "--on-invalid", "keep", "--no-progress")
    dataset = datasets.load_dataset(str(out), split="train")
    assert len(dataset) == 8 and sum(row["bin"] is not None for row in dataset) == 2
    assert sum(isinstance(row[c], Image.Image) for row in dataset for c in ("jpg", "png") if row[c] is not None) == 6
    videos = make_video_dataset(tmp_path / "videos")
    video_out = tmp_path / "video-out"
    run_cli("convert", "sft", str(videos.root / "videos.jsonl"), str(video_out), "--media", "video", "--no-progress")
    manifest = json.loads((video_out / "manifest.json").read_text())
    loaded = datasets.load_dataset(str(video_out), split="train")
    assert len(loaded) == manifest["totals"]["samples"]
    media = [c for c in loaded.column_names if c not in ("json", "__key__", "__url__")]
    assert sum(row[c] is not None for row in loaded for c in media) == shard_images(video_out)
