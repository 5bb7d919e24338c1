"""``fastwds verify``: clean datasets from fastwds, `convert parquet` and webdataset pass; each
planted defect is reported with its code and makes the command exit 1."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import jpeg_bytes, png_bytes, read_webdataset
from defects import (
    BLOCK,
    chat_json,
    chat_sample,
    corrupt_png_body,
    dali_wds2idx,
    energon_prepare,
    member,
    tar_bytes,
    write_tar,
)
from fastwds import ShardWriter, write_wids_index
from fastwds.paths import expand_braces
from fastwds.reasons import VERIFY_CODES as CODES
from fastwds.synthetic import generate
from fastwds.tar.scanner import TarScanner
from fastwds.tar.shards import expand_shards
from fastwds.verify import verify
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

JPEG = jpeg_bytes()


def run_verify(*args: str | Path) -> tuple[int, dict, str]:
    """The CLI with --json: exit code, parsed report, stderr."""
    done = subprocess.run([sys.executable, "-m", "fastwds", "verify", *map(str, args), "--json"],
                          capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, report, done.stderr


def found_codes(report) -> set[str]:
    """Codes found, from a Report (library) or its --json form (CLI)."""
    return set(report.counts if hasattr(report, "counts") else report["counts"])


def error_codes(report) -> set[str]:
    return found_codes(report) & ERROR_CODES


def warning_codes(report) -> set[str]:
    return found_codes(report) - ERROR_CODES


ERROR_CODES = {code for code, (level, _) in CODES.items() if level == "error"}


def good_shards(folder: Path, shards: int = 2, per_shard: int = 3) -> list[Path]:
    """Hand-written portable shards of LLaVA-style samples (one with two images)."""
    paths = []
    for s in range(shards):
        members = []
        for i in range(per_shard):
            key = f"s{s}-{i:03d}"
            members += chat_sample(key, JPEG, images=2 if i == 1 else 1)
        paths.append(write_tar(folder / f"shard-{s:06d}.tar", members))
    return paths


# -- clean datasets ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """`fastwds convert parquet` output: manifest, wids index and DALI indexes."""
    base = tmp_path_factory.mktemp("converted")
    generate(base / "in", rows=40, broken_share=0.1, multi_image_share=0.2, seed=3)
    subprocess.run([sys.executable, "-m", "fastwds", "convert", "parquet", base / "in", base / "out",
                    "--max-samples-per-shard", "8", "--num-workers", "1", "--dali-index", "--no-progress"],
                   check=True, capture_output=True, timeout=300)
    return base / "out"


@pytest.fixture
def dataset(converted, tmp_path) -> Path:
    """A private copy of the converted dataset, to plant defects in."""
    return Path(shutil.copytree(converted, tmp_path / "out"))


def test_convert_output_is_clean(converted):
    code, report, _ = run_verify(converted, "--full", "--strict")
    assert code == 0, report
    manifest = json.loads((converted / "manifest.json").read_text())
    assert report["ok"] and report["errors"] == 0 and report["warnings"] == 0
    assert report["shards"] == manifest["totals"]["shards"] == 6
    assert report["samples"] == manifest["totals"]["samples"]
    assert report["bytes"] == manifest["totals"]["bytes"]
    checked = " ".join(report["checked"])
    for expected in ("manifest.json (6 shards)", "index.wids.json", "DALI .idx (6 shards)", "fully decoded"):
        assert expected in checked


def test_text_report_and_exit_code(converted):
    done = subprocess.run([sys.executable, "-m", "fastwds", "verify", converted], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "OK: 0 error(s), 0 warning(s)"
    assert "6 shards" in done.stdout.splitlines()[0]


def test_fastwds_writer_with_every_index(tmp_path):
    with ShardWriter(str(tmp_path / "d" / "shard-%06d.tar"), maxcount=4, energon_index=True,
                     dali_index=True) as writer:
        for i in range(10):
            writer.write({"__key__": f"k{i:04d}", "jpg": JPEG,
                          "json": {"conversations": [{"role": "user", "content": "<image> hi"}], "name": ["jpg"]},
                          "npy": np.arange(i)})
    records = writer.close()
    write_wids_index(records, tmp_path / "d" / "index.wids.json", name="d")
    energon_prepare(tmp_path / "d", [Path(r.path).name for r in records])
    report = verify(tmp_path / "d", full=True)
    assert not report.counts, report.issues
    assert report.samples == 10 and report.shards == 3
    checked = " ".join(report.checked)
    for expected in ("Energon .tar.idx (3 shards)", "DALI .idx (3 shards)", "index.wids.json", ".nv-meta/index.sqlite"):
        assert expected in checked


def test_webdataset_shards_warn_but_pass(tmp_path):
    import webdataset as wds

    with wds.ShardWriter(str(tmp_path / "w-%03d.tar"), maxcount=3, verbose=0) as writer:
        for i in range(7):
            writer.write({"__key__": f"w{i}", "jpg": JPEG, "json": json.loads(chat_json(f"w{i}", 1))})
    code, report, _ = run_verify(tmp_path)
    assert code == 0, report
    assert error_codes(report) == set()
    assert warning_codes(report) == {"pax_header", "float_mtime"}
    assert report["counts"]["pax_header"]["count"] == 14  # every member of every shard...
    assert len([i for i in report["issues"] if i["code"] == "pax_header"]) == 3  # ...folded to a line per shard
    code, report, _ = run_verify(tmp_path, "--strict")
    assert code == 1 and not report["ok"]


def test_webdataset_sample_written_twice_across_shards(tmp_path):
    import webdataset as wds

    with wds.ShardWriter(str(tmp_path / "w-%03d.tar"), maxcount=2, verbose=0) as writer:
        for key in ["a", "b", "c", "a"]:  # "a" again, in the second shard
            writer.write({"__key__": key, "txt": key})
    # webdataset itself reads both copies without complaint: only verify catches it.
    assert [s["__key__"] for s in read_webdataset(sorted(map(str, tmp_path.glob("*.tar"))))] == ["a", "b", "c", "a"]
    code, report, _ = run_verify(tmp_path)
    assert code == 1
    assert error_codes(report) == {"duplicate_key"}
    issue = next(i for i in report["issues"] if i["code"] == "duplicate_key")
    assert issue["shard"] == "w-001.tar" and issue["key"] == "a" and "w-000.tar" in issue["message"]


def test_dali_index_from_dalis_own_algorithm_matches(tmp_path):
    """An index made the way DALI's wds2idx makes it (here on webdataset's PAX shards) verifies."""
    import webdataset as wds

    with wds.ShardWriter(str(tmp_path / "w-%03d.tar"), maxcount=5, verbose=0) as writer:
        for i in range(8):
            writer.write({"__key__": f"w{i}", "jpg": JPEG, "txt": "x" * i})
    for shard in tmp_path.glob("*.tar"):
        shard.with_suffix(".idx").write_text(dali_wds2idx(shard))
    report = verify(tmp_path)
    assert error_codes(report) == set()
    assert "DALI .idx (2 shards)" in report.checked


# -- planted defects: tar structure --------------------------------------------------------------

def plant_and_verify(folder: Path, *extra: str) -> tuple[int, dict]:
    code, report, stderr = run_verify(folder, *extra)
    assert not stderr.strip(), stderr
    return code, report


def test_truncated_shard(tmp_path):
    first, _ = good_shards(tmp_path)
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2 + 100])
    code, report = plant_and_verify(tmp_path)
    assert code == 1 and error_codes(report) == {"tar_truncated"}
    issue = next(i for i in report["issues"] if i["code"] == "tar_truncated")
    assert issue["shard"] == "shard-000000.tar" and "cut short" in issue["message"]


def test_missing_end_blocks(tmp_path):
    good_shards(tmp_path)
    write_tar(tmp_path / "shard-000001.tar", chat_sample("s1-000", JPEG), end_blocks=0)
    code, report = plant_and_verify(tmp_path)
    assert code == 1 and error_codes(report) == {"tar_missing_end"}
    with tarfile.open(tmp_path / "shard-000001.tar") as tar:  # tarfile tolerates it: only verify tells
        assert len(tar.getmembers()) == 2


def test_one_end_block(tmp_path):
    write_tar(tmp_path / "a.tar", chat_sample("k", JPEG), end_blocks=1)
    code, report = plant_and_verify(tmp_path)
    assert error_codes(report) == {"tar_missing_end"} and code == 1


def test_bad_header_checksum(tmp_path):
    first, _ = good_shards(tmp_path)
    data = bytearray(first.read_bytes())
    second_header = BLOCK + len(JPEG) + (-len(JPEG) % BLOCK)
    data[second_header + 5] ^= 0x01  # one bit of a name
    first.write_bytes(bytes(data))
    code, report = plant_and_verify(tmp_path)
    assert code == 1 and "tar_bad_checksum" in error_codes(report)


def test_members_after_the_end_marker(tmp_path):
    shard = tmp_path / "a.tar"
    shard.write_bytes(tar_bytes(chat_sample("k1", JPEG)) + member("k2.txt", b"lost"))
    code, report = plant_and_verify(tmp_path)
    assert code == 1 and error_codes(report) == {"tar_data_after_end"}
    assert "lost" in next(i["message"] for i in report["issues"] if i["code"] == "tar_data_after_end")


def test_zero_padding_after_end_is_fine(tmp_path):
    """GNU tar and tarfile pad to a 10 KiB record: zeros after the two end blocks are normal."""
    shard = tmp_path / "a.tar"
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in chat_sample("k", JPEG):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    assert shard.stat().st_size % 10240 == 0
    assert not verify(shard).counts


# -- planted defects: samples and keys --------------------------------------------------------------

def test_non_contiguous_sample(tmp_path):
    members = chat_sample("a", JPEG) + chat_sample("b", JPEG)
    members = [members[0], members[2], members[3], members[1]]  # a.jpg, b.jpg, b.json, a.json
    write_tar(tmp_path / "x.tar", members)
    code, report = plant_and_verify(tmp_path)
    assert code == 1
    assert "sample_not_contiguous" in error_codes(report)
    issue = next(i for i in report["issues"] if i["code"] == "sample_not_contiguous")
    assert issue["key"] == "a"


def test_duplicate_extension(tmp_path):
    write_tar(tmp_path / "x.tar", chat_sample("a", JPEG) + [("a.json", b"{}")])
    code, report = plant_and_verify(tmp_path)
    assert code == 1 and error_codes(report) == {"duplicate_extension"}


def test_extension_differing_only_in_case(tmp_path):
    write_tar(tmp_path / "x.tar", [("a.jpg", JPEG), ("a.JPG", JPEG), ("a.txt", b"t")])
    code, report = plant_and_verify(tmp_path)
    assert code == 1 and error_codes(report) == {"duplicate_extension"}
    assert "uppercase_extension" in warning_codes(report)


def test_members_webdataset_would_unpickle_are_warned_about(tmp_path):
    import pickle

    write_tar(tmp_path / "x.tar", chat_sample("a", JPEG) + [("a.pyd", pickle.dumps({"x": 1}))]
              + chat_sample("b", JPEG) + [("b.weights.pth", b"torch")])
    code, report = plant_and_verify(tmp_path)
    assert code == 0 and "pickled_member" in warning_codes(report)
    assert report["counts"]["pickled_member"]["count"] == 2  # one line per shard, both counted


def test_duplicate_key_across_shards(tmp_path):
    good_shards(tmp_path)
    write_tar(tmp_path / "shard-000002.tar", chat_sample("s0-002", JPEG))
    code, report = plant_and_verify(tmp_path)
    assert code == 1 and error_codes(report) == {"duplicate_key"}
    issue = next(i for i in report["issues"] if i["code"] == "duplicate_key")
    assert issue["shard"] == "shard-000002.tar" and "shard-000000.tar" in issue["message"]


def test_name_list_mismatch(tmp_path):
    good_shards(tmp_path, shards=1)
    # Energon-style name list naming an image the sample does not have: the seed-002 crash.
    members = [("bad.jpg", JPEG), ("bad.json", chat_json("bad", 1, name=["0.jpg"]))]
    write_tar(tmp_path / "shard-000001.tar", members)
    code, report = plant_and_verify(tmp_path)
    assert code == 1 and error_codes(report) == {"name_mismatch"}
    messages = [i["message"] for i in report["issues"] if i["code"] == "name_mismatch"]
    assert any("'0.jpg'" in m and "no such member" in m for m in messages)
    assert any("'jpg' is not listed" in m for m in messages)


def test_images_member_list_mismatch(tmp_path):
    members = [("k.0.jpg", JPEG), ("k.1.jpg", JPEG),
               ("k.json", chat_json("k", 2, images=[{"member": "0.jpg"}, {"member": "2.jpg"}]))]
    write_tar(tmp_path / "x.tar", members)
    code, report = plant_and_verify(tmp_path)
    assert code == 1 and error_codes(report) == {"name_mismatch"}
    assert report["counts"]["name_mismatch"]["count"] == 2  # 2.jpg missing, 1.jpg unlisted


def test_full_member_names_in_name_list_are_accepted(tmp_path):
    write_tar(tmp_path / "x.tar", [("k.0.jpg", JPEG), ("k.1.jpg", JPEG),
                                    ("k.json", chat_json("k", 2, name=["k.0.jpg", "k.1.jpg"]))])
    assert not verify(tmp_path).counts


def test_image_token_mismatch(tmp_path):
    good_shards(tmp_path, shards=1)
    write_tar(tmp_path / "shard-000001.tar", [("t.jpg", JPEG), ("t.json", chat_json("t", 1, tokens=2, name=["jpg"]))])
    code, report = plant_and_verify(tmp_path)
    assert code == 1 and error_codes(report) == {"image_token_mismatch"}
    issue = next(i for i in report["issues"] if i["code"] == "image_token_mismatch")
    assert "2 <image> token(s)" in issue["message"] and "1 image member(s)" in issue["message"]


def test_llava_value_turns_are_counted(tmp_path):
    document = {"conversations": [{"from": "human", "value": "<image>\n<image> two"}, {"from": "gpt", "value": "ok"}]}
    write_tar(tmp_path / "x.tar", [("k.0.png", png_bytes()), ("k.json", json.dumps(document).encode())])
    assert error_codes(verify(tmp_path)) == {"image_token_mismatch"}


def test_corrupt_image_needs_full(tmp_path):
    broken = corrupt_png_body(png_bytes(64, 64, "RGB"))
    write_tar(tmp_path / "x.tar", [("k.png", broken), ("k.json", chat_json("k", 1, name=["png"]))])
    code, report = plant_and_verify(tmp_path)
    assert code == 0 and not report["counts"]  # headers and end marker are fine
    code, report = plant_and_verify(tmp_path, "--full")
    assert code == 1 and error_codes(report) == {"image_decode_failed"}
    assert next(i for i in report["issues"])["member"] == "k.png"


@pytest.mark.parametrize("batch_bytes", [1, 30_000, 10**9])  # every image its own batch ... one batch
def test_full_decoding_reports_each_broken_image_once_whatever_the_batches(tmp_path, monkeypatch, batch_bytes):
    """Each batch is decoded while the next is read, and reported when its decodes are back: every
    image is checked once, each broken one reported once, under its own member, in order."""
    from fastwds.verify import images

    monkeypatch.setattr(images, "IMAGE_BATCH_BYTES", batch_bytes)
    monkeypatch.setattr(images, "DECODE_PIECE_BYTES", batch_bytes // 3)
    broken = corrupt_png_body(png_bytes(64, 64, "RGB"))
    expected = []
    for s in range(3):
        members = []
        for i in range(5):
            key = f"s{s}-{i}"
            bad = (s + i) % 3 == 0
            members += [(f"{key}.png", broken if bad else png_bytes(32, 32, "RGB", seed=i)),
                        (f"{key}.json", chat_json(key, 1, name=["png"]))]
            expected += [f"{key}.png"] if bad else []
        write_tar(tmp_path / f"shard-{s:06d}.tar", members)
    report = verify(tmp_path, full=True)
    assert [i.member for i in report.issues if i.code == "image_decode_failed"] == expected
    assert report.counts == {"image_decode_failed": len(expected)}
    assert "15 images (fully decoded)" in report.checked


def test_truncated_image(tmp_path):
    write_tar(tmp_path / "x.tar", [("k.jpg", JPEG[: len(JPEG) // 2]), ("k.json", chat_json("k", 1))])
    code, report = plant_and_verify(tmp_path)
    assert code == 1 and error_codes(report) == {"image_invalid"}
    assert "image_truncated" in report["issues"][0]["message"]


def test_image_with_wrong_extension_warns(tmp_path):
    write_tar(tmp_path / "x.tar", [("k.png", JPEG), ("k.json", chat_json("k", 1))])
    report = verify(tmp_path)
    assert error_codes(report) == set() and warning_codes(report) == {"image_extension_mismatch"}


def test_invalid_json(tmp_path):
    write_tar(tmp_path / "x.tar", [("k.jpg", JPEG), ("k.json", b'{"id": "k", ')])
    code, report = plant_and_verify(tmp_path)
    assert code == 1 and error_codes(report) == {"json_invalid"}


# -- planted defects: manifest and indexes -----------------------------------------------------------

def edit_json(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_manifest_sha256_mismatch(dataset):
    edit_json(dataset / "manifest.json", lambda m: m["shards"][2].update(sha256="0" * 64))
    code, report = plant_and_verify(dataset)
    assert code == 1 and error_codes(report) == {"manifest_mismatch"}
    issue = report["issues"][0]
    assert issue["shard"] == json.loads((dataset / "manifest.json").read_text())["shards"][2]["name"]
    assert "sha256" in issue["message"]


def test_manifest_count_mismatch(dataset):
    edit_json(dataset / "manifest.json", lambda m: m["shards"][0].update(samples=m["shards"][0]["samples"] + 1))
    code, report = plant_and_verify(dataset)
    assert code == 1 and error_codes(report) == {"manifest_mismatch"}
    assert "samples" in report["issues"][0]["message"]


def test_shard_deleted_from_dataset(dataset):
    victim = sorted(dataset.glob("*.tar"))[1]
    victim.unlink()
    code, report = plant_and_verify(dataset)
    assert code == 1 and error_codes(report) == {"manifest_mismatch", "wids_index_mismatch"}
    assert all(victim.name in i["message"] for i in report["issues"])


def test_modified_shard_bytes(dataset):
    """Same size, one flipped byte inside image data: only the manifest's sha256 notices."""
    shard = sorted(dataset.glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[BLOCK + 3000] ^= 0x55
    shard.write_bytes(bytes(data))
    code, report = plant_and_verify(dataset)
    assert code == 1 and "manifest_mismatch" in error_codes(report)


def test_wids_nsamples_mismatch(dataset):
    edit_json(dataset / "index.wids.json", lambda w: w["shardlist"][3].update(nsamples=99))
    code, report = plant_and_verify(dataset)
    assert code == 1 and error_codes(report) == {"wids_index_mismatch"}
    assert "nsamples = 99" in report["issues"][0]["message"]


def test_dali_index_mismatch(dataset):
    idx = sorted(dataset.glob("*.idx"))[0]
    lines = idx.read_text().splitlines()
    fields = lines[2].split()
    fields[1] = str(int(fields[1]) + BLOCK)  # wrong data offset of sample 1's first member
    lines[2] = " ".join(fields)
    idx.write_text("\n".join(lines) + "\n")
    code, report = plant_and_verify(dataset)
    assert code == 1 and error_codes(report) == {"dali_index_mismatch"}
    assert "line 3" in report["issues"][0]["message"]


def test_dali_index_sample_count_mismatch(dataset):
    idx = sorted(dataset.glob("*.idx"))[0]
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines[:-1]) + "\n")
    code, report = plant_and_verify(dataset)
    assert code == 1 and error_codes(report) == {"dali_index_mismatch"}


@pytest.mark.parametrize("damage", ["removed", "empty list", "not json", "someone else's json"])
def test_the_wids_index_the_manifest_names_must_be_there_and_readable(dataset, damage):
    """A broken index.wids.json used to drop out of the checks silently (it no longer said it was
    a wids index), while wids itself fails on it."""
    index = dataset / "index.wids.json"
    if damage == "removed":
        index.unlink()
    else:
        index.write_text({"empty list": "[]", "not json": "{not json", "someone else's json": '{"shards": []}'}[damage])
    code, report = plant_and_verify(dataset)
    assert code == 1 and error_codes(report) == {"wids_index_mismatch"}
    assert "index.wids.json" in report["issues"][0]["message"]


@pytest.mark.parametrize("damage", ["removed", "garbage"])
def test_dali_indexes_the_manifest_says_were_written_must_be_there_and_readable(dataset, damage):
    idx = sorted(dataset.glob("*.idx"))[1]
    if damage == "removed":
        idx.unlink()
    else:
        idx.write_text("garbage line\n")
    code, report = plant_and_verify(dataset)
    assert code == 1 and error_codes(report) == {"dali_index_mismatch"}
    assert idx.name in report["issues"][0]["message"]


def test_a_damaged_shard_says_its_index_was_not_checked(dataset):
    """Offsets in a cut-short shard mean nothing, so its DALI index is not compared; verify says
    so rather than leave the index looking checked."""
    shard = sorted(dataset.glob("*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[:3000])
    code, report = plant_and_verify(dataset)
    assert code == 1 and "tar_truncated" in error_codes(report)
    skipped = [i for i in report["issues"] if i["code"] == "index_not_checked"]
    assert [(i["shard"], i["message"]) for i in skipped] == [
        (shard.name, f"{shard.with_suffix('.idx').name}: not checked, the shard is damaged (see its tar_* error)")]


def test_a_foreign_idx_that_is_not_dalis_is_only_a_warning(tmp_path):
    shards = good_shards(tmp_path)
    shards[0].with_suffix(".idx").write_text("some other tool's index\n")
    code, report = plant_and_verify(tmp_path)
    assert code == 0 and "index_not_checked" in warning_codes(report)


@pytest.mark.parametrize("lost", ["manifest", "never written"])
def test_a_run_that_did_not_finish_is_no_complete_dataset(dataset, lost):
    """Shards of an interrupted run are each fine; the dataset is not: verify says so and how to
    finish it, as long as fastwds' run state shows whose folder it is."""
    (dataset / "manifest.json").unlink()
    if lost == "never written":
        for record in sorted((dataset / ".fastwds" / "tasks").glob("*.json"))[2:]:
            record.unlink()
    code, report = plant_and_verify(dataset)
    assert code == 1 and error_codes(report) == {"run_incomplete"}
    tasks = len(json.loads((dataset / ".fastwds" / "run.json").read_text())["tasks"])
    finished = tasks if lost == "manifest" else 2
    assert f"{finished} of {tasks} tasks finished" in report["issues"][0]["message"]
    assert "--resume" in report["issues"][0]["message"]


def test_energon_meta_the_manifest_declares_must_be_there(tmp_path):
    data = tmp_path / "train.jsonl"
    (tmp_path / "a.jpg").write_bytes(JPEG)
    data.write_text(json.dumps({"id": "a", "image": "a.jpg", "messages": [
        {"role": "user", "content": "<image> what?"}, {"role": "assistant", "content": "that"}]}) + "\n")
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "fastwds", "convert", "sft", data, out, "--no-progress"], check=True,
                   capture_output=True, timeout=300)
    shutil.rmtree(out / ".nv-meta")
    code, report = plant_and_verify(out)
    assert code == 1 and error_codes(report) == {"energon_meta_mismatch"}
    assert ".nv-meta" in report["issues"][0]["message"]


@pytest.fixture
def energon_dataset(tmp_path) -> Path:
    folder = tmp_path / "e"
    with ShardWriter(str(folder / "shard-%06d.tar"), maxcount=3, energon_index=True) as writer:
        for i in range(7):
            writer.write({"__key__": f"e{i}", "jpg": JPEG, "json": json.loads(chat_json(f"e{i}", 1, name=["jpg"]))})
    energon_prepare(folder, sorted(p.name for p in folder.glob("*.tar")))
    assert not verify(folder).counts
    return folder


def test_energon_tar_idx_mismatch(energon_dataset):
    idx = energon_dataset / "shard-000001.tar.idx"
    offsets = np.fromfile(idx, dtype=np.uint64)
    offsets[1] += BLOCK
    offsets.tofile(idx)
    code, report = plant_and_verify(energon_dataset)
    assert code == 1 and error_codes(report) == {"energon_index_mismatch"}
    assert "sample 1 (e4)" in report["issues"][0]["message"]


def test_energon_tar_idx_missing(energon_dataset):
    (energon_dataset / "shard-000002.tar.idx").unlink()
    code, report = plant_and_verify(energon_dataset)
    assert code == 1 and error_codes(report) == {"energon_index_mismatch"}


def test_energon_info_count_mismatch(energon_dataset):
    edit_json(energon_dataset / ".nv-meta" / ".info.json", lambda i: i["shard_counts"].update({"shard-000000.tar": 4}))
    code, report = plant_and_verify(energon_dataset)
    assert code == 1 and error_codes(report) == {"energon_meta_mismatch"}


def test_energon_sqlite_mismatch(energon_dataset):
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(energon_dataset / ".nv-meta" / "index.sqlite")) as db:
        db.execute("UPDATE sample_parts SET content_byte_size = content_byte_size + 1 "
                   "WHERE tar_file_id = 1 AND sample_index = 2 AND part_name = 'json'")
        db.commit()
    code, report = plant_and_verify(energon_dataset)
    assert code == 1 and error_codes(report) == {"energon_meta_mismatch"}
    assert report["issues"][0]["shard"] == "shard-000001.tar"


def energon_prepare_cli(folder: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "megatron.energon.cli.main", "prepare", str(folder),
                           "--non-interactive", "--split-ratio", "1,0,0", "--sample-type", "CrudeWebdataset",
                           "--no-progress", "--num-workers", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_real_energon_prepare_output_on_webdataset_shards(tmp_path):
    """Energon's own indexes of PAX shards (offsets include the extension headers) verify clean;
    a shard added after `energon prepare` and a changed sqlite row are reported."""
    import webdataset as wds

    with wds.ShardWriter(str(tmp_path / "w-%03d.tar"), maxcount=3, verbose=0) as writer:
        for i in range(8):
            writer.write({"__key__": f"w{i}", "jpg": JPEG, "json": json.loads(chat_json(f"w{i}", 1, name=["jpg"]))})
    energon_prepare_cli(tmp_path)
    report = verify(tmp_path)
    assert error_codes(report) == set(), report.issues
    assert {".nv-meta/index.sqlite", "Energon .tar.idx (3 shards)"} <= set(report.checked)
    assert any(c.startswith(".nv-meta/.info.json (3 shards)") for c in report.checked)

    write_tar(tmp_path / "w-003.tar", chat_sample("late", JPEG))
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(tmp_path / ".nv-meta" / "index.sqlite")) as db:
        db.execute("UPDATE samples SET sample_key = 'other' WHERE tar_file_id = 2 AND sample_index = 0")
        db.commit()
    code, result = plant_and_verify(tmp_path)
    assert code == 1 and error_codes(result) == {"energon_meta_mismatch"}
    issue = next(i for i in result["issues"] if i["code"] == "energon_meta_mismatch")
    assert "'other'" in issue["message"] and issue["shard"] == "w-002.tar"
    unlisted = [i for i in result["issues"] if i["code"] == "unlisted_shard"]
    assert [i["shard"] for i in unlisted] == ["w-003.tar"]


def test_the_seed_002_shard(tmp_path):
    """The seed's crash: the JSON names "0_a.jpg", the image went in as "jpg"."""
    document = {"media": "image", "name": ["0_a.jpg"],
                "texts": [{"role": "user", "content": "<image> what?"}, {"role": "assistant", "content": "a cat"}]}
    write_tar(tmp_path / "seed-000000.tar", [("s0.jpg", JPEG), ("s0.json", json.dumps(document).encode())])
    code, report = plant_and_verify(tmp_path)
    assert code == 1 and error_codes(report) == {"name_mismatch"}
    assert report["counts"]["name_mismatch"]["count"] == 2  # '0_a.jpg' missing, 'jpg' unlisted


# -- paths, formats, portability ------------------------------------------------------------------

def test_brace_pattern_and_missing_shard(tmp_path):
    good_shards(tmp_path, shards=3)
    code, report, _ = run_verify(tmp_path / "shard-{000000..000001}.tar")
    assert code == 0 and report["shards"] == 2 and report["samples"] == 6
    code, report, stderr = run_verify(tmp_path / "shard-{000000..000003}.tar")
    assert code == 1 and report == {}
    assert stderr.strip() == f"fastwds: error: {tmp_path / 'shard-000003.tar'}: shard not found (from pattern " \
                             f"{tmp_path / 'shard-{000000..000003}.tar'})"


def test_no_shards(tmp_path):
    code, report, stderr = run_verify(tmp_path)
    assert code == 1 and "no shards" in stderr and stderr.startswith("fastwds: error: ")


def test_expand_braces():
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}/{8..10}") == ["x/8", "x/9", "x/10", "y/8", "y/9", "y/10"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_folder_order_and_hidden_folders(tmp_path):
    good_shards(tmp_path / "b")
    good_shards(tmp_path / "a", shards=1)
    write_tar(tmp_path / ".hidden" / "x.tar", chat_sample("s0-000", JPEG))  # would be a duplicate key
    found = expand_shards(tmp_path)
    assert [found.relative(p) for p in found.paths] == ["a/shard-000000.tar", "b/shard-000000.tar",
                                                        "b/shard-000001.tar"]
    # a/ and b/ reuse the keys of the same generator: duplicate keys across subfolders.
    assert error_codes(verify(tmp_path)) == {"duplicate_key"}


def test_gzip_shard(tmp_path):
    data = tar_bytes(chat_sample("k", JPEG))
    (tmp_path / "x.tar.gz").write_bytes(gzip.compress(data))
    report = verify(tmp_path)
    assert report.samples == 1 and error_codes(report) == set() and warning_codes(report) == {"compressed_shard"}


def test_empty_shard_warns(tmp_path):
    good_shards(tmp_path, shards=1)
    (tmp_path / "shard-000001.tar").write_bytes(bytes(2 * BLOCK))
    report = verify(tmp_path)
    # These hand-made shards mix one- and two-image samples without a dataset card: HF would fail.
    assert error_codes(report) == set() and warning_codes(report) == {"empty_shard", "hf_columns_differ"}


def test_portability_warnings(tmp_path):
    long_key = "k" * 120
    shard = tmp_path / "x.tar"
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in [(f"{long_key}.txt", b"a"), ("with space.txt", b"b"), ("__odd.txt", b"c"),
                           ("dir/", None), ("noext", b"d"), ("é.txt", b"e")]:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, __import__("io").BytesIO(data))
    report = verify(shard)
    assert error_codes(report) == set()
    assert warning_codes(report) == {"long_name", "name_not_portable", "hidden_key", "member_ignored"}
    assert report.counts["member_ignored"] == 2  # the directory and the name without extension
    assert report.samples == 4


def test_json_report_fields(tmp_path):
    write_tar(tmp_path / "x.tar", chat_sample("a", JPEG) + [("a.json", b"{}")])
    _, report, _ = run_verify(tmp_path)
    assert set(report) >= {"ok", "shards", "samples", "bytes", "errors", "warnings", "counts", "checked", "issues"}
    assert report["issues"] == [{"severity": "error", "code": "duplicate_extension", "shard": "x.tar", "key": "a",
                                 "member": "a.json", "count": 1,
                                 "message": "key a: extension 'json' appears more than once in the sample "
                                            "(webdataset raises, Energon keeps only the last)"}]


# -- the scanner agrees with tarfile -------------------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_characters="\0/", exclude_categories=("Cs",)),
                min_size=1, max_size=140)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.tuples(names, st.binary(max_size=1500)), min_size=1, max_size=6),
       tar_format=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
       mtime=st.sampled_from([0, 1.5]), global_header=st.booleans())
def test_scanner_matches_tarfile(tmp_path, entries, tar_format, mtime, global_header):
    import io

    shard = tmp_path / "p.tar"
    extra = {"pax_headers": {"comment": "global"}} if global_header and tar_format == tarfile.PAX_FORMAT else {}
    try:
        with tarfile.open(shard, "w", format=tar_format, **extra) as tar:
            for name, data in entries:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), mtime
                tar.addfile(info, io.BytesIO(data))
    except ValueError:  # USTAR cannot hold the name: not a tar to compare
        return
    with tarfile.open(shard) as tar:
        expected = [(m.name, m.offset, m.offset_data, m.size, tar.extractfile(m).read()) for m in tar]
        end = tar.offset
    with open(shard, "rb") as stream:
        scanner = TarScanner(stream)
        got = [(m.name, m.header_offset, m.data_offset, m.size, m.data or b"") for m in scanner]
    assert got == expected
    assert scanner.defects == [] and scanner.end_of_data == end


def test_long_reports_are_capped_but_counted(tmp_path):
    members = [m for i in range(60) for m in [(f"k{i:03d}.txt", b"a"), (f"k{i:03d}.txt", b"b")]]
    write_tar(tmp_path / "x.tar", members)
    done = subprocess.run([sys.executable, "-m", "fastwds", "verify", tmp_path], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert sum(line.startswith("  error   duplicate_extension ") for line in lines) == 50
    assert "  ... 10 more duplicate_extension not listed" in lines
    assert lines[-1] == "FAILED: 60 error(s), 0 warning(s)"
    assert lines[1].startswith("  error   duplicate_extension      x.tar: key k000: extension 'txt'")
