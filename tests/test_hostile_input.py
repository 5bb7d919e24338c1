"""Hostile or unusual input, as users meet it through the CLI: each gives a named reason in
rejects.jsonl or a one-line error naming the file (never a traceback, never a hang, never a shard
that a reader then chokes on), and every run accounts for every row: rows = written + rejected."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fastwds
from conftest import crafted_tar, jpeg_bytes, png_bytes, run_cli
from fastwds.tar.format import ShardFormatError
from npz_data import make_dataset
from parquet_data import png_with_size, turns, write_rows
from sft_data import chat


def rejects(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}


def accounted(out: Path) -> dict:
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert totals["rows"] == totals["samples"] + totals["invalid"] - totals["invalid_kept"]
    return totals


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# -- parquet ------------------------------------------------------------------------------------

def test_image_paths_instead_of_bytes_are_refused_at_plan_time(tmp_path):
    path = tmp_path / "data" / "paths.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"id": ["a"], "image": ["images/a.jpg"], "conversations": [turns("<image>")]}), path)
    result = run_cli("convert", "parquet", str(tmp_path / "data"), str(tmp_path / "out"), check=False)
    assert_one_line_error(result, str(path), "column 'image' holds string", "convert sft")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_conversations_stored_as_a_json_string_are_read(tmp_path):
    data = tmp_path / "data" / "a.parquet"
    data.parent.mkdir()
    conversations = [json.dumps([{"from": "human", "value": "<image> what?"}, {"from": "gpt", "value": "a cat"}])]
    image = pa.array([{"bytes": jpeg_bytes(), "path": "a.jpg"}],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"id": ["a"], "image": image, "conversations": conversations}), data)
    out = tmp_path / "out"
    run_cli("convert", "parquet", str(tmp_path / "data"), str(out), "--no-progress")
    [sample] = list(fastwds.WebDataset(str(out)))
    assert sample["json"]["conversations"] == [{"role": "user", "content": "<image> what?"},
                                               {"role": "assistant", "content": "a cat"}]
    assert accounted(out)["samples"] == 1


def test_a_run_that_rejects_every_row_fails_loudly(tmp_path):
    write_rows(tmp_path / "data" / "a.parquet", [(f"r{i}", jpeg_bytes(), None, [], None) for i in range(5)])
    out = tmp_path / "out"
    result = run_cli("convert", "parquet", str(tmp_path / "data"), str(out), "--no-progress", check=False)
    assert_one_line_error(result, "every one of the 5 input rows was rejected", "no_conversation: 5",
                          str(out / "rejects.jsonl"))
    assert len(rejects(out)) == 5 and accounted(out)["samples"] == 0
    assert result.stdout.startswith("fastwds convert: no sample written"), result.stdout  # not "done"


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_decompression_bombs_are_rejected_from_their_headers(tmp_path, mode):
    bomb = png_with_size(30_000, 30_000)  # 900 megapixels claimed by a few dozen bytes
    write_rows(tmp_path / "data" / "a.parquet", [("bomb", bomb, None, turns("<image>"), None),
                                                  ("fine", png_bytes(), None, turns("<image>"), None)])
    out = tmp_path / "out"
    run_cli("convert", "parquet", str(tmp_path / "data"), str(out), "--verify-images", mode, "--no-progress")
    assert rejects(out)["bomb"]["reason"] == "image_too_large" and "900,000,000 pixels" in rejects(out)["bomb"]["detail"]
    assert accounted(out)["samples"] == 1
    lowered = tmp_path / "lowered"  # the limit is the user's: 32x32 is too many for 1000
    result = run_cli("convert", "parquet", str(tmp_path / "data"), str(lowered), "--max-image-pixels", "1000",
                     "--no-progress", check=False)
    assert result.returncode == 1 and {i: r["reason"] for i, r in rejects(lowered).items()} == {
        "bomb": "image_too_large", "fine": "image_too_large"}


# -- NPZ and CSV ----------------------------------------------------------------------------------

def test_a_csv_that_is_not_utf8_names_the_file_and_line(tmp_path):
    data = make_dataset(tmp_path, defects=False)
    text = data.reports.read_bytes().replace(b"findings of train_2_a_1", "café".encode("cp1252"))
    data.reports.write_bytes(text)
    line = text[:text.index("café".encode("cp1252"))].count(b"\n") + 1
    result = run_cli("convert", "npz", str(data.root), str(tmp_path / "out"), "--reports", str(data.reports), check=False)
    assert_one_line_error(result, str(data.reports), "not UTF-8", f"line {line}", "iconv")


def test_a_volume_without_values_is_rejected(tmp_path):
    data = make_dataset(tmp_path, defects=False)
    np.savez(data.root / "train_1_a_1.npz", np.zeros((1, 0, 16, 16), np.float32))
    out = tmp_path / "out"
    run_cli("convert", "npz", str(data.root), str(out), "--no-progress")
    assert rejects(out)["train_1_a_1"]["reason"] == "empty_volume"
    assert accounted(out)["samples"] == 7


# -- SFT media files ------------------------------------------------------------------------------

@pytest.fixture
def sft_media(tmp_path) -> Path:
    root = tmp_path / "sft"
    (root / "images").mkdir(parents=True)
    (root / "images" / "ok.jpg").write_bytes(jpeg_bytes())
    (root / "images" / "big.png").write_bytes(png_bytes(200, 200))
    os.mkfifo(root / "images" / "fifo.jpg")
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes(seed=9))  # outside the dataset folder
    (root / "images" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (tmp_path / "sft-other").mkdir()  # a sibling whose path starts with the root's: still outside
    (tmp_path / "sft-other" / "x.jpg").write_bytes(jpeg_bytes(seed=10))
    rows = {"ok": "images/ok.jpg", "fifo": "images/fifo.jpg", "zero": "/dev/zero", "climb": "../secret.jpg",
            "absolute": str(tmp_path / "secret.jpg"), "link": "images/link.jpg", "big": "images/big.png",
            "sibling": "../sft-other/x.jpg"}
    (root / "data.jsonl").write_text("".join(json.dumps({"id": i, "image": p, "messages": chat("<image>")}) + "\n"
                                             for i, p in rows.items()))
    return root


def test_media_that_is_not_a_regular_file_or_outside_the_root_is_refused(sft_media, tmp_path):
    out = tmp_path / "out"
    run_cli("convert", "sft", str(sft_media / "data.jsonl"), str(out), "--max-media-size", "20KB", "--no-progress")
    found = rejects(out)
    assert {i: r["reason"] for i, r in found.items()} == {
        "fifo": "media_unreadable", "zero": "media_outside_root", "climb": "media_outside_root",
        "absolute": "media_outside_root", "link": "media_outside_root", "big": "media_too_large",
        "sibling": "media_outside_root"}
    assert "FIFO" in found["fifo"]["detail"] and "secret.jpg" in found["link"]["detail"]
    assert accounted(out)["samples"] == 1


def test_outside_paths_are_read_when_allowed_but_never_devices(sft_media, tmp_path):
    out = tmp_path / "out"
    run_cli("convert", "sft", str(sft_media / "data.jsonl"), str(out), "--allow-media-outside-root", "--no-progress")
    found = rejects(out)
    assert {i: r["reason"] for i, r in found.items()} == {"fifo": "media_unreadable", "zero": "media_unreadable"}
    assert "a device" in found["zero"]["detail"]
    assert accounted(out)["samples"] == 6


# -- verify and the reader ------------------------------------------------------------------------

def verify_codes(path: Path) -> dict[str, int]:
    result = run_cli("verify", str(path), "--json", check=False)
    report = json.loads(result.stdout)
    assert result.returncode == (1 if report["errors"] else 0)
    return {code: entry["count"] for code, entry in report["counts"].items() if entry["severity"] == "error"}


@pytest.mark.parametrize("name", ["../evil.npy", "/abs.json", "a/../../up.txt"])
def test_verify_fails_on_member_paths_that_escape(tmp_path, name):
    shard = crafted_tar(tmp_path / "s.tar", {"ok.txt": b"fine", name: b"{}"})
    assert verify_codes(shard) == {"unsafe_member_path": 1}


def test_verify_fails_when_a_dot_in_a_key_hides_the_json_or_image(tmp_path):
    document = json.dumps({"conversations": [{"role": "user", "content": "hi"}]}).encode()
    hidden = crafted_tar(tmp_path / "hidden.tar", {"img.v2.json": document, "img.v2.jpg": jpeg_bytes()})
    assert verify_codes(hidden) == {"key_split_hides_member": 2}
    positions = crafted_tar(tmp_path / "positions.tar", {"k.json": b"{}", "k.0.jpg": jpeg_bytes(), "k.1.jpg": jpeg_bytes()})
    assert "key_split_hides_member" not in verify_codes(positions)


def test_the_reader_refuses_an_empty_shard(tmp_path):
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(ShardFormatError, match="empty file"):
        list(fastwds.WebDataset(str(tmp_path / "empty.tar")))


def test_the_reader_refuses_a_shard_cut_at_a_member_boundary_when_the_manifest_knows(tmp_path):
    write_rows(tmp_path / "data" / "a.parquet", [(f"r{i}", jpeg_bytes(seed=i), None, turns("<image>"), None)
                                                  for i in range(6)])
    out = tmp_path / "out"
    run_cli("convert", "parquet", str(tmp_path / "data"), str(out), "--no-progress")
    [shard] = out.glob("*.tar")
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    shard.write_bytes(shard.read_bytes()[:members[4].offset])  # two samples and their end blocks gone
    for source in (str(shard), str(out)):  # the shard alone (manifest beside it) and the folder
        with pytest.raises(ShardFormatError, match="2 samples, but the manifest / wids index beside it lists 6"):
            list(fastwds.WebDataset(source, decode=False))
