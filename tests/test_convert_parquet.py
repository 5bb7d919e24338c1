"""`fastwds convert parquet` end to end, through the CLI as a user runs it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import fastwds
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import jpeg_bytes, read_members, read_webdataset, run_cli
from fastwds.paths import safe_name
from fastwds.reasons import REJECT_REASONS as REASONS
from parquet_data import IMAGE, corrupt_png, rgb_image, rows, turns, write_rows
from PIL import Image


@pytest.fixture(scope="module")
def handmade(tmp_path_factory) -> Path:
    """The hand-made rows split over a top-level file and a nested subset folder."""
    root = tmp_path_factory.mktemp("handmade")
    data = rows()
    write_rows(root / "top.parquet", data[:11])
    write_rows(root / "nested" / "deeper" / "part-0.parquet", data[11:])
    return root


def shard_samples(output: Path) -> dict[str, dict]:
    """id -> {member ext: bytes} over every shard, via webdataset; each id must arrive once."""
    manifest = json.loads((output / "manifest.json").read_text())
    urls = [str(output / s["name"]) for s in manifest["shards"]]
    samples = {}
    for sample in read_webdataset(urls):
        document = json.loads(sample["json"])
        assert document["id"] not in samples, f"{document['id']} written twice"
        samples[document["id"]] = sample
    return samples


def test_every_reason_is_named_and_every_valid_row_arrives_once(handmade, tmp_path):
    out = tmp_path / "out"
    result = run_cli("convert", "parquet", str(handmade), str(out), "--max-samples-per-shard", "4", "--json")
    summary = json.loads(result.stdout)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert Counter(r["reason"] for r in rejects) == Counter(r[4] for r in rows() if r[4])
    assert {r["reason"] for r in rejects} <= REASONS.keys(), "every reason is registered in fastwds.reasons"
    for reject in rejects:
        assert reject["action"] == "skipped" and reject["file"].endswith(".parquet")
        assert {"subset", "row", "id", "detail"} <= reject.keys()
    assert summary["invalid_by_reason"] == dict(Counter(r[4] for r in rows() if r[4]))
    samples = shard_samples(out)
    valid = [r for r in rows() if r[4] is None]
    assert sorted(samples) == sorted(r[0] for r in valid)
    for sample_id, image, images, _, _ in valid:
        sample = samples[sample_id]
        document = json.loads(sample["json"])
        expected_images = images or ([image] if image is not None else [])
        members = [m["member"] for m in document["images"]]
        assert [sample[m] for m in members] == expected_images, sample_id
        assert all(turn.keys() == {"role", "content"} for turn in document["conversations"])
        assert document["data_source"] == "handmade"
    assert samples["multi"]["__key__"] == "multi"
    assert [m["member"] for m in json.loads(samples["multi"]["json"])["images"]] == ["0.jpg", "1.png", "2.jpg"]
    assert json.loads(samples["llava.spelling/1"]["json"])["conversations"][0]["role"] == "user"
    assert json.loads(samples["plain"]["json"])["images"][0] == {"member": "jpg", "format": "jpeg",
                                                                 "width": 64, "height": 48}
    # Subsets: the top-level files are named after the input folder, nested ones by their path.
    names = [s["name"] for s in json.loads((out / "manifest.json").read_text())["shards"]]
    assert any(n.startswith("nested__deeper-") for n in names)
    assert any(n.startswith(handmade.name + "-") for n in names)


def test_tarfile_reads_every_shard_and_indexes_exist(handmade, tmp_path):
    out = tmp_path / "out"
    run_cli("convert", "parquet", str(handmade), str(out), "--dali-index", "--no-progress")
    manifest = json.loads((out / "manifest.json").read_text())
    for shard in manifest["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            assert len({m.name.split(".")[0] for m in tar.getmembers()}) == shard["samples"]
        assert (out / shard["name"].replace(".tar", ".idx")).read_text().startswith(f"v1.2 {shard['samples']}")
    wids_index = json.loads((out / "index.wids.json").read_text())
    assert [s["url"] for s in wids_index["shardlist"]] == [s["name"] for s in manifest["shards"]]


def test_full_verification_decodes_images(handmade, tmp_path):
    out = tmp_path / "out"
    summary = json.loads(run_cli("convert", "parquet", str(handmade), str(out), "--verify-images", "full",
                                 "--json").stdout)
    assert summary["invalid_by_reason"]["image_decode_failed"] == 1
    assert "corrupt-pixels" not in shard_samples(out)


def test_keep_writes_invalid_rows_flagged(handmade, tmp_path):
    out = tmp_path / "out"
    run_cli("convert", "parquet", str(handmade), str(out), "--on-invalid", "keep", "--no-progress")
    samples = shard_samples(out)
    flagged = json.loads(samples["images-no-tokens"]["json"])
    assert flagged["invalid"]["reason"] == "image_token_mismatch"
    assert None not in samples and "missing_id" not in samples  # rows without a usable key still skipped
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert {r["action"] for r in rejects if r["reason"] == "missing_id"} == {"skipped"}
    assert {r["action"] for r in rejects if r["reason"] == "bad_role"} == {"kept"}
    # An empty image has no member to write: its JSON entry says so instead of naming one.
    empty = samples["empty-bytes"]
    assert json.loads(empty["json"])["images"] == [{"member": None, "format": None, "width": None, "height": None}]
    assert not [name for name in empty if not name.startswith("__") and name != "json"]
    # verify reports what is wrong with the kept rows, never a member their JSON invents
    report = json.loads(run_cli("verify", str(out), "--json", check=False).stdout)
    assert "name_mismatch" not in report["counts"], report["issues"]


def test_fail_stops_with_a_clear_error_and_no_finished_shard_for_the_task(handmade, tmp_path):
    out = tmp_path / "out"
    result = run_cli("convert", "parquet", str(handmade), str(out), "--no-skip-invalid", "--num-workers", "1",
                     check=False)
    assert result.returncode == 1
    assert "row" in result.stderr and "duplicate_id" in result.stderr or "no_conversation" in result.stderr
    assert not list(out.glob("*.partial"))
    assert not (out / "manifest.json").exists()


def test_same_shards_for_any_worker_count(handmade, tmp_path):
    one = json.loads(run_cli("convert", "parquet", str(handmade), str(tmp_path / "a"), "--num-workers", "1",
                             "--max-samples-per-shard", "3", "--no-progress", "--json").stdout)
    two = json.loads(run_cli("convert", "parquet", str(handmade), str(tmp_path / "b"), "--num-workers", "2",
                             "--max-samples-per-shard", "3", "--no-progress", "--json").stdout)
    shards = lambda d: [(s["name"], s["sha256"]) for s in json.loads((d / "manifest.json").read_text())["shards"]]
    assert one["shards"] == two["shards"] and len(one["shards"]) > 2
    assert shards(tmp_path / "a") == shards(tmp_path / "b")


def test_rerun_refuses_then_resume_is_a_noop_and_changes_are_refused(handmade, tmp_path):
    out = tmp_path / "out"
    run_cli("convert", "parquet", str(handmade), str(out), "--no-progress")
    before = json.loads((out / "manifest.json").read_text())["shards"]
    again = run_cli("convert", "parquet", str(handmade), str(out), check=False)
    assert again.returncode == 1 and "--resume" in again.stderr
    resumed = json.loads(run_cli("convert", "parquet", str(handmade), str(out), "--resume", "--json").stdout)
    assert resumed["resumed"] and json.loads((out / "manifest.json").read_text())["shards"] == before
    changed = run_cli("convert", "parquet", str(handmade), str(out), "--resume", "--max-samples-per-shard", "2",
                      check=False)
    assert changed.returncode == 1 and "max_samples_per_shard" in changed.stderr
    fresh = run_cli("convert", "parquet", str(handmade), str(out), "--overwrite", "--max-samples-per-shard", "2",
                    "--json")
    assert not json.loads(fresh.stdout)["resumed"]


def test_resume_refuses_changed_input(tmp_path):
    data = tmp_path / "data"
    write_rows(data / "a.parquet", rows()[:3])
    out = tmp_path / "out"
    run_cli("convert", "parquet", str(data), str(out), "--no-progress")
    write_rows(data / "b.parquet", rows()[3:5])
    result = run_cli("convert", "parquet", str(data), str(out), "--resume", check=False)
    assert result.returncode == 1 and "input changed" in result.stderr
    # It says which file: added, then modified (another mtime), then removed.
    assert "(added b.parquet)" in result.stderr, result.stderr
    os.utime(data / "a.parquet", ns=(time.time_ns(), time.time_ns() + 10**9))
    (data / "b.parquet").unlink()
    result = run_cli("convert", "parquet", str(data), str(out), "--resume", check=False)
    assert result.returncode == 1 and "(modified a.parquet)" in result.stderr, result.stderr
    write_rows(data / "c.parquet", rows()[3:5])
    run_cli("convert", "parquet", str(data), str(out), "--overwrite", "--no-progress")
    (data / "c.parquet").unlink()
    result = run_cli("convert", "parquet", str(data), str(out), "--resume", check=False)
    assert result.returncode == 1 and "(removed c.parquet)" in result.stderr, result.stderr


def test_clear_errors_for_bad_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("convert", "parquet", str(empty), str(tmp_path / "o"), check=False)
    assert result.returncode == 1 and "no .parquet files" in result.stderr
    data = tmp_path / "data"
    write_rows(data / "a.parquet", rows()[:2])
    result = run_cli("convert", "parquet", str(data), str(tmp_path / "o"), "--id-column", "sample_id", check=False)
    assert result.returncode == 1
    assert "a.parquet" in result.stderr and "'sample_id'" in result.stderr and "conversations" in result.stderr
    result = run_cli("convert", "parquet", "--input_dir", str(data), check=False)
    assert result.returncode == 2 and "OUTPUT_DIR is required" in result.stderr


def test_seed_flag_spellings(tmp_path):
    data = tmp_path / "data"
    write_rows(data / "a.parquet", rows()[:6])
    out = tmp_path / "out"
    result = run_cli("convert", "parquet", "--input_dir", str(data), "--output_dir", str(out),
                     "--max_samples_per_shard", "2", "--num_workers", "1", "--skip_invalid", "--log_level", "info",
                     "--max-shard-size", "50MB")
    assert "total rows" in result.stdout and "samples written" in result.stdout
    assert len(list(out.glob("*.tar"))) == 3


def test_progress_lines_when_not_a_terminal(tmp_path):
    data = tmp_path / "data"
    write_rows(data / "a.parquet", rows()[:6])
    result = run_cli("convert", "parquet", str(data), str(tmp_path / "out"), "--num-workers", "1")
    assert "rows (100%)" in result.stderr and "\r" not in result.stderr


def test_reencode_handles_cmyk_palette_alpha_and_orientation(tmp_path):
    images = {
        "cmyk": rgb_image("CMYK"),
        "palette": rgb_image("P"),
        "alpha": rgb_image("RGBA"),
        "rotated": rgb_image("RGB", size=(40, 30), exif_orientation=6),  # 90 degrees: 30x40 upright
    }
    data = tmp_path / "data"
    write_rows(data / "a.parquet", [(k, v, None, turns("<image>"), None) for k, v in images.items()])
    out = tmp_path / "out"
    run_cli("convert", "parquet", str(data), str(out), "--reencode", "jpeg", "--quality", "80", "--no-progress")
    samples = shard_samples(out)
    for sample_id in images:
        decoded = Image.open(io.BytesIO(samples[sample_id]["jpg"]))
        assert decoded.format == "JPEG" and decoded.mode in ("RGB", "L")
        info = json.loads(samples[sample_id]["json"])["images"][0]
        assert (info["width"], info["height"]) == decoded.size
    assert Image.open(io.BytesIO(samples["rotated"]["jpg"])).size == (30, 40)
    assert Image.open(io.BytesIO(samples["alpha"]["jpg"])).getpixel((0, 0)) is not None
    out_small = tmp_path / "small"
    run_cli("convert", "parquet", str(data), str(out_small), "--reencode", "jpeg", "--max-side", "16",
            "--no-progress")
    assert max(Image.open(io.BytesIO(shard_samples(out_small)["cmyk"]["jpg"])).size) == 16


def test_an_image_that_cannot_be_reencoded_rejects_its_row_not_the_job(tmp_path):
    """A PNG whose header is fine and whose pixel data is broken passes the header checks; with
    --reencode it is rejected as image_decode_failed, naming the row, and the job goes on (it
    used to fail the whole conversion). --on-invalid keep keeps the row, the image as it was."""
    data = tmp_path / "data"
    rows_in = [("good", jpeg_bytes(seed=1), None, turns("<image>"), None),
               ("broken", corrupt_png(), None, turns("<image>"), None),
               ("after", jpeg_bytes(seed=2), None, turns("<image>"), None)]
    write_rows(data / "a.parquet", rows_in)
    out = tmp_path / "out"
    summary = json.loads(run_cli("convert", "parquet", str(data), str(out), "--reencode", "jpeg", "--json",
                                 "--no-progress").stdout)
    assert summary["invalid_by_reason"] == {"image_decode_failed": 1}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["row"], r["reason"]) for r in rejects] == [("broken", 1, "image_decode_failed")]
    assert "image 0: Pillow cannot decode the image" in rejects[0]["detail"]
    assert sorted(shard_samples(out)) == ["after", "good"]
    kept = tmp_path / "kept"
    run_cli("convert", "parquet", str(data), str(kept), "--reencode", "jpeg", "--on-invalid", "keep", "--no-progress")
    samples = shard_samples(kept)
    assert sorted(samples) == ["after", "broken", "good"]
    assert samples["broken"]["bin"] == corrupt_png()  # not re-encoded, kept as it came
    assert json.loads(samples["broken"]["json"])["invalid"]["reason"] == "image_decode_failed"


def test_passthrough_keeps_original_bytes(tmp_path):
    jpg = jpeg_bytes(seed=9)
    data = tmp_path / "data"
    write_rows(data / "a.parquet", [("x", jpg, None, turns("<image>"), None)])
    out = tmp_path / "out"
    run_cli("convert", "parquet", str(data), str(out), "--no-progress")
    [member] = [m for m in read_members(next(out.glob("*.tar"))) if m.name.endswith(".jpg")]
    assert member.data == jpg


def test_library_api(tmp_path):
    from fastwds.convert.options import ConvertOptions
    from fastwds.convert.run import convert
    from fastwds.sources.parquet import ParquetColumns, plan_parquet

    data = tmp_path / "data"
    write_rows(data / "a.parquet", rows()[:8])
    plan = plan_parquet(data, ParquetColumns(), max_rows=3, max_bytes=10**9)
    manifest = convert(plan, tmp_path / "out", ConvertOptions(max_samples_per_shard=3, fsync=False, source_options=ParquetColumns()),
                       command="test", show_progress=False)
    assert manifest["totals"]["rows"] == 8 and manifest["totals"]["samples"] == 7
    with pytest.raises(fastwds.InvalidInputError):
        convert(plan, tmp_path / "out", ConvertOptions(max_samples_per_shard=3, source_options=ParquetColumns()), command="test")


def test_files_not_written_by_fastwds_are_never_deleted(tmp_path):
    data = tmp_path / "data"
    write_rows(data / "a.parquet", rows()[:3])
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "data-000000.tar"
    foreign.write_bytes(b"someone else's shard")
    for extra in ([], ["--overwrite"], ["--resume"]):
        result = run_cli("convert", "parquet", str(data), str(out), *extra, check=False)
        assert result.returncode == 1 and "data-000000.tar" in result.stderr and "not written by" in result.stderr
        assert foreign.read_bytes() == b"someone else's shard"
        assert not (out / ".fastwds").exists()


def damage_column(path: Path, column: str, row_group: int = 0) -> None:
    """Flip the bytes of one column chunk; the footer and the other columns stay readable."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path).row_group(row_group)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema.startswith(column))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    for i in range(start + 8, start + chunk.total_compressed_size):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("column", ["id", "conversations"])  # read when planning / only by the task
def test_damaged_parquet_page_is_a_clear_error(tmp_path, workers, column):
    data = tmp_path / "data"
    write_rows(data / "a.parquet", rows()[:8])
    write_rows(data / "b.parquet", rows()[8:12])
    damage_column(data / "a.parquet", column, row_group=1)
    out = tmp_path / "out"
    result = run_cli("convert", "parquet", str(data), str(out), "--num-workers", workers,
                     "--max-samples-per-shard", "4", check=False)
    assert result.returncode == 1, result.stdout
    assert "a.parquet" in result.stderr and "cannot be read" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(out.glob("*.partial"))


PLAN_PEAK_RSS = """
import sys
from fastwds.sources import get_source
source = get_source("parquet")
def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) for line in lines if line.startswith(field)) * 1024
before = status("VmRSS")
plan = source.plan(sys.argv[1], source.convert_options())
print(status("VmHWM") - before, sum(len(task.rejected) for task in plan.tasks))
"""


def plan_memory(root: Path) -> tuple[int, int]:
    """How far the peak RSS of a fresh process rose while planning ``root``, and the rows it rejected."""
    result = subprocess.run([sys.executable, "-c", PLAN_PEAK_RSS, str(root)], capture_output=True, text=True,
                            check=True)
    rise, rejected = result.stdout.split()
    return int(rise), int(rejected)


def write_many_ids(folder: Path, files: int, rows_per_file: int, repeat: str) -> None:
    """Rows with long ids and tiny images; the last file's last row repeats the id ``repeat``."""
    folder.mkdir(parents=True)
    image = pa.array([{"bytes": b"\xff\xd8\xff", "path": None}] * rows_per_file, IMAGE)
    conversations = pa.array([json.dumps(turns("<image>"))] * rows_per_file)
    for number in range(files):
        ids = [f"some-dataset-subset-{number:03d}-row-{row:09d}" for row in range(rows_per_file)]
        if number == files - 1:
            ids[-1] = repeat
        pq.write_table(pa.table({"id": ids, "image": image, "conversations": conversations}),
                       folder / f"part-{number:03d}.parquet", row_group_size=20_000)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_planning_holds_a_few_bytes_per_id(tmp_path):
    """The duplicate check sees every id of the dataset, the one part of a plan that grows with
    the input: it keeps 8-byte key hashes, not the ids (45 bytes each here). Planning 5x the rows
    costs under 48 bytes per extra id at the peak (holding the ids cost ~170), and the one
    repeated id is still found exactly."""
    small, large = tmp_path / "small", tmp_path / "large"
    write_many_ids(small, 2, 100_000, repeat="some-dataset-subset-000-row-000000005")
    write_many_ids(large, 10, 100_000, repeat="some-dataset-subset-003-row-000000007")
    small_rise, small_rejected = plan_memory(small)
    large_rise, large_rejected = plan_memory(large)
    assert (small_rejected, large_rejected) == (1, 1)
    assert (large_rise - small_rise) / 800_000 < 48, (small_rise, large_rise)


def test_images_in_a_column_fastwds_does_not_read_stop_the_job_naming_it(tmp_path):
    """Images under another column name, or a typo in --image-column, made every row text-only
    with exit 0: a file whose image-like column is not read, and a named column that no file
    has, now stop before anything is written, naming the column and the flag."""

    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": ["a"], "jpg": pa.array([{"bytes": jpeg_bytes(), "path": "a.jpg"}], type=IMAGE),
                             "conversations": [turns("<image>\nDescribe the picture.")]}), data / "a.parquet")
    result = run_cli("convert", "parquet", str(data), str(tmp_path / "out"), check=False)
    assert result.returncode == 1 and "column 'jpg' holds images" in result.stderr, result.stderr
    assert "--image-column jpg" in result.stderr and not (tmp_path / "out").exists()
    llava = tmp_path / "llava"
    write_rows(llava / "a.parquet", rows()[:2])
    typo = run_cli("convert", "parquet", str(llava), str(tmp_path / "out"), "--image-column", "imgae", check=False)
    assert typo.returncode == 1 and "--image-column imgae: no input file has a column 'imgae'" in typo.stderr, \
        typo.stderr
    named = run_cli("convert", "parquet", str(data), str(tmp_path / "out"), "--image-column", "jpg", "--json")
    assert json.loads(named.stdout)["samples"] == 1
    assert shard_samples(tmp_path / "out")["a"]["jpg"] == jpeg_bytes(), "the image was read"


def test_a_row_with_images_in_both_columns_is_rejected_and_an_empty_list_is_no_images(tmp_path):
    """``image`` and ``images`` both holding images: the list used to win without a word. Now
    the row is rejected (as SFT rejects image + images); an empty ``images`` list (merged HF
    exports) means the row's image is in ``image``."""
    data = tmp_path / "data"
    one, other = jpeg_bytes(seed=1), jpeg_bytes(seed=2)
    write_rows(data / "a.parquet", [("both", one, [other], turns("<image>\nwhat?")),
                                    ("empty_list", one, [], turns("<image>\nwhat?")),
                                    ("list_only", None, [other], turns("<image>\nwhat?"))])
    out = tmp_path / "out"
    summary = json.loads(run_cli("convert", "parquet", str(data), str(out), "--json").stdout)
    assert summary["invalid_by_reason"] == {"bad_sample": 1}, summary
    [reject] = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert reject["id"] == "both" and "both 'image' and 'images'" in reject["detail"]
    samples = shard_samples(out)
    assert sorted(samples) == ["empty_list", "list_only"]
    assert samples["empty_list"]["jpg"] == one and samples["list_only"]["jpg"] == other
    kept = tmp_path / "kept"
    run_cli("convert", "parquet", str(data), str(kept), "--on-invalid", "keep", "--no-progress")
    both = shard_samples(kept)["both"]
    assert {name for name in both if not name.startswith("__")} == {"json"}  # no member for what was not read
    assert json.loads(both["json"])["images"][0]["member"] is None


def test_images_column_naming_the_image_column_reads_it_as_a_list(tmp_path):
    """--images-column image: the 'image' column holds lists; it is no longer also read as the
    one-image column (which refused it as 'not encoded images')."""

    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": ["a"], "image": pa.array([[{"bytes": jpeg_bytes(), "path": "a"}] * 2],
                                                            type=pa.list_(IMAGE)),
                             "conversations": [turns("<image><image> two")]}), data / "a.parquet")
    summary = json.loads(run_cli("convert", "parquet", str(data), str(tmp_path / "out"), "--images-column", "image",
                                 "--json").stdout)
    assert summary["samples"] == 1 and summary["invalid"] == 0, summary


def test_upper_case_parquet_extensions_are_read(tmp_path):
    data = tmp_path / "data"
    write_rows(data / "s" / "a.parquet", rows()[:2])
    write_rows(data / "s" / "b.PARQUET", rows()[2:4])
    summary = json.loads(run_cli("convert", "parquet", str(data), str(tmp_path / "out"), "--json").stdout)
    assert summary["rows"] == 4, summary
    one = json.loads(run_cli("convert", "parquet", str(data / "s" / "b.PARQUET"), str(tmp_path / "one"),
                             "--json").stdout)
    assert one["rows"] == 2


def test_subset_folders_named_in_other_scripts_stay_apart(tmp_path):
    """Folders named only in non-Latin scripts used to all become subset 'data' and collide."""
    data = tmp_path / "data"
    write_rows(data / "中文" / "a.parquet", rows()[:2])
    write_rows(data / "日本語" / "a.parquet", rows()[2:3])
    write_rows(data / "ascii" / "a.parquet", rows()[3:4])
    out = tmp_path / "out"
    run_cli("convert", "parquet", str(data), str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    subsets = {shard["name"].rsplit("-", 1)[0]: shard["samples"] for shard in manifest["shards"]}
    assert subsets.keys() == {"ascii", f"data_{_digest('中文')}", f"data_{_digest('日本語')}"}, subsets
    assert sorted(subsets.values()) == [1, 1, 2]
    # The same name however the file system spells it (macOS decomposes accents: NFD).
    composed = "donn\u00e9es"
    assert safe_name("donne\u0301es") == safe_name(composed) == f"donn_es_{_digest(composed)}"


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]
