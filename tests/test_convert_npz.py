"""`fastwds convert npz` end to end through the CLI, read back with fastwds.WebDataset in a real
torch DataLoader, with webdataset and with tarfile."""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import fastwds
import numpy as np
import pytest
import torch
import zstandard
from conftest import read_members, read_webdataset, run_cli
from npz_data import GOOD, LABELS, SHAPE, make_dataset, write_csv
from torch.utils.data import DataLoader

FLOAT16_HALF_ULP_AT_1 = 2.0 ** -12  # the largest rounding error for values in [-1, 1]


def convert_args(data, out: Path, *extra: str) -> list[str]:
    return ["convert", "npz", str(data.root), str(out), "--reports", str(data.reports), "--meta", str(data.meta),
            "--labels", str(data.labels), "--no-progress", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("npz"))


@pytest.fixture(scope="module")
def converted(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "out"
    run_cli(*convert_args(data, out, "--samples-per-shard", "3", "--num-workers", "2"))
    return out


def rejects_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def test_every_volume_arrives_once_through_a_dataloader_with_two_workers(data, converted):
    dataset = fastwds.WebDataset(converted / "manifest.json")
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    seen = Counter()
    for sample in loader:
        key = sample["__key__"]
        seen[key] += 1
        volume = sample["npy"]
        assert isinstance(volume, torch.Tensor) and volume.dtype == torch.float16
        source = data.volumes[key]
        assert tuple(volume.shape) == SHAPE
        np.testing.assert_array_equal(volume.numpy(), source.astype(np.float16))
        assert np.abs(volume.numpy().astype(np.float32) - source).max() <= FLOAT16_HALF_ULP_AT_1
        np.testing.assert_array_equal(sample["labels.npy"].numpy(), np.array(data.label_rows[key], np.float32))
        document = sample["json"]
        assert document["id"] == key and document["volume_name"] == f"{key}.nii.gz"
        assert document["file"] == data.files[key]
        assert document["report"]["Findings_EN"] == f"findings of {key}, with a comma"
        assert document["metadata"] == {"Manufacturer": "GE", "XYSpacing": "[0.75, 0.75]", "ZSpacing": 1.5}
        assert document["labels"] == dict(zip(LABELS, data.label_rows[key]))
        assert document["volume"]["max_abs_error"] <= FLOAT16_HALF_ULP_AT_1
    assert seen == Counter({key: 1 for key in GOOD})
    manifest = json.loads((converted / "manifest.json").read_text())
    assert len(manifest["shards"]) >= 3  # both workers had shards to read
    assert manifest["stats"]["labels"]["columns"] == list(LABELS)


def test_other_readers_see_the_same_samples(data, converted):
    manifest = json.loads((converted / "manifest.json").read_text())
    urls = [str(converted / s["name"]) for s in manifest["shards"]]
    samples = read_webdataset(urls, decode=True)
    assert sorted(s["__key__"] for s in samples) == sorted(GOOD)
    for sample in samples:
        np.testing.assert_array_equal(sample["npy"], data.volumes[sample["__key__"]].astype(np.float16))
    for url in urls:  # plain ustar members: key.json, key.labels.npy, key.npy
        names = [m.name for m in read_members(url)]
        assert all(n.endswith((".json", ".labels.npy", ".npy")) and n.count(".") <= 2 for n in names)
        with tarfile.open(url) as tar:
            assert all(m.type == tarfile.REGTYPE for m in tar.getmembers())


def test_rejects_name_every_problem_and_csv_rows_without_volumes(data, converted):
    rejects = rejects_of(converted)
    by_id = {r["id"]: r for r in rejects}
    assert by_id["no_report"]["reason"] == "missing_csv_row" and str(data.reports) in by_id["no_report"]["detail"]
    assert by_id["bad_nan"]["reason"] == "non_finite" and "1 NaN" in by_id["bad_nan"]["detail"]
    assert by_id["bad_inf"]["reason"] == "non_finite" and "-inf" in by_id["bad_inf"]["detail"]
    assert by_id["bad_big"]["reason"] == "float16_overflow" and "1e+06" in by_id["bad_big"]["detail"]
    ghost = by_id["ghost_volume.nii.gz"]
    assert ghost["reason"] == "csv_row_without_volume" and ghost["file"] == str(data.labels)
    assert ghost["row"] == len(data.volumes) and ghost["action"] == "ignored"
    assert by_id["bad_big"]["file"] == "bad/b/bad_big.npz"
    manifest = json.loads((converted / "manifest.json").read_text())
    assert manifest["invalid_by_reason"] == {"float16_overflow": 1, "missing_csv_row": 1, "non_finite": 2}
    assert manifest["totals"]["rows"] == 12 and manifest["totals"]["samples"] == 8
    assert manifest["stats"]["csv"]["rows_ignored_by_reason"] == {"csv_row_without_volume": 1}
    precision = manifest["stats"]["precision"]
    assert (precision["nan"], precision["neginf"], precision["overflow"]) == (1, 1, 1)


def test_manifest_sizes_and_precision_match_an_independent_computation(data, converted):
    manifest = json.loads((converted / "manifest.json").read_text())
    stats = manifest["stats"]
    written = sum((data.root / data.files[k]).stat().st_size for k in GOOD)
    output = sum((converted / s["name"]).stat().st_size for s in manifest["shards"])
    assert stats["bytes"]["input_written"] == written and stats["bytes"]["output"] == output
    assert stats["bytes"]["input"] == sum((data.root / f).stat().st_size for f in data.files.values())
    assert stats["bytes"]["compression_ratio"] == pytest.approx(written / output, rel=1e-3)
    assert stats["bytes"]["space_saved"] == written - output
    errors = np.concatenate([(data.volumes[k].astype(np.float16).astype(np.float64) - data.volumes[k]).ravel()
                             for k in GOOD])
    assert stats["precision"]["max_abs_error"] == pytest.approx(np.abs(errors).max(), rel=1e-6)
    assert stats["precision"]["rmse"] == pytest.approx(math.sqrt(np.mean(errors ** 2)), rel=1e-6)
    assert stats["precision"]["values_compared"] == len(GOOD) * math.prod(SHAPE)
    assert stats["volumes"] == {"total": 12, "written": 8, "clipped": 0, "skipped": 4}
    lines = [json.loads(line) for line in (converted / "volumes.jsonl").read_text().splitlines()]
    assert sorted(v["id"] for v in lines) == sorted(data.volumes)
    for line in lines:
        if line["status"] == "written":
            volume = data.volumes[line["id"]]
            error = volume.astype(np.float16).astype(np.float64) - volume
            assert line["volume"]["rmse"] == pytest.approx(math.sqrt(np.mean(error ** 2)), rel=1e-6)


def test_clip_writes_the_defective_volumes_clipped(data, tmp_path):
    out = tmp_path / "out"
    run_cli(*convert_args(data, out, "--on-overflow", "clip", "--num-workers", "1"))
    samples = {s["__key__"]: s for s in fastwds.WebDataset(out)}
    assert {"bad_nan", "bad_big", "bad_inf"} <= samples.keys()
    assert samples["bad_nan"]["npy"].flat[5] == 0
    assert samples["bad_big"]["npy"].flat[7] == np.float16(65504)
    assert samples["bad_inf"]["npy"].flat[-1] == np.float16(-65504)
    assert np.isfinite(samples["bad_big"]["npy"]).all()
    big = samples["bad_big"]["json"]["volume"]
    assert (big["overflow"], big["clipped"], big["source_max"]) == (1, 1, 1e6)
    assert big["max_abs_error"] == 1e6 - 65504
    assert samples["bad_nan"]["json"]["volume"]["nan"] == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stats"]["volumes"]["clipped"] == 3
    assert manifest["invalid_by_reason"] == {"missing_csv_row": 1}


def test_fail_stops_at_the_volume_and_names_it(data, tmp_path):
    result = run_cli(*convert_args(data, tmp_path / "out", "--on-overflow", "fail", "--num-workers", "1"), check=False)
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if line.startswith("fastwds: error:")]
    # Volumes go in path order: bad/b/bad_big.npz is the first defective one.
    assert "bad/b/bad_big.npz" in line and "beyond the float16 range" in line and "--on-overflow" in line
    assert "Traceback" not in result.stderr


def test_strict_fails_before_converting_and_names_both_directions(data, tmp_path):
    out = tmp_path / "out"
    result = run_cli(*convert_args(data, out, "--strict"), check=False)
    assert result.returncode == 1
    assert "1 volume(s) without CSV rows" in result.stderr and "no_report.npz" in result.stderr
    assert "1 CSV row(s) without a volume" in result.stderr and "ghost_volume.nii.gz" in result.stderr
    assert not list(out.glob("*.tar"))


def test_strict_passes_on_clean_input(tmp_path):
    clean = make_dataset(tmp_path, defects=False)
    summary = json.loads(run_cli(*convert_args(clean, tmp_path / "out", "--strict", "--json")).stdout)
    assert summary["samples"] == len(GOOD) and summary["invalid"] == 0
    assert summary["stats"]["precision"]["max_abs_error"] <= FLOAT16_HALF_ULP_AT_1


def test_keep_writes_volumes_without_csv_rows_flagged(data, tmp_path):
    out = tmp_path / "out"
    run_cli(*convert_args(data, out, "--on-invalid", "keep", "--num-workers", "1"))
    samples = {s["__key__"]: s for s in fastwds.WebDataset(out)}
    document = samples["no_report"]["json"]
    assert document["report"] is None and document["invalid"]["reason"] == "missing_csv_row"
    assert document["metadata"]["Manufacturer"] == "GE"
    assert "bad_nan" not in samples  # --on-overflow decides about NaN, and it says skip
    assert {r["action"] for r in rejects_of(out) if r["reason"] == "missing_csv_row"} == {"kept"}


def test_clear_errors_for_bad_input(data, tmp_path):
    empty = tmp_path / "empty"
    (empty / "patient").mkdir(parents=True)
    result = run_cli("convert", "npz", str(empty), str(tmp_path / "o"), check=False)
    assert result.returncode == 1
    assert "no .npz files found" in result.stderr
    assert all(layout in result.stderr for layout in ("empty/*.npz", "empty/PATIENT/*.npz",
                                                      "empty/PATIENT/ACCESSION/*.npz"))
    broken = tmp_path / "broken.csv"
    write_csv(broken, ["Volume", "Findings_EN"], [["train_1_a_1.nii.gz", "x"]])
    result = run_cli("convert", "npz", str(data.root), str(tmp_path / "o"), "--reports", str(broken), check=False)
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if line.startswith("fastwds: error:")]
    assert "broken.csv" in line and "'VolumeName'" in line and "Volume, Findings_EN" in line
    labels = tmp_path / "labels.csv"
    write_csv(labels, ["VolumeName", "Cardiomegaly"], [["train_1_a_1.nii.gz", "yes"]])
    result = run_cli("convert", "npz", str(data.root), str(tmp_path / "o"), "--labels", str(labels), check=False)
    assert result.returncode == 1 and "'Cardiomegaly' is not numeric" in result.stderr and "'yes'" in result.stderr


def test_seed_flags_test_mode_and_default_shard_size(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(1)
    names = [f"vol_{i:03d}" for i in range(103)]
    for i, name in enumerate(names):
        folder = root / f"p{i % 3}" / f"acc{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"{name}.npz", rng.uniform(-1, 1, (1, 2, 2, 2)).astype(np.float32))
    reports = tmp_path / "r.csv"
    write_csv(reports, ["VolumeName", "Findings_EN"], [[f"{n}.nii.gz", "ok"] for n in names])
    out = tmp_path / "out"
    summary = json.loads(run_cli("convert", "npz", "--data_folder", str(root), "--reports_file", str(reports),
                                 "--output_dir", str(out), "--num_workers", "1", "--test_mode", "--json").stdout)
    assert summary["rows"] == 100 and summary["samples"] == 100
    assert len(summary["shards"]) == 1  # --samples_per_shard defaults to 100
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.npz"))[:100]
    written = {s["json"]["file"] for s in fastwds.WebDataset(out)}
    assert written == set(files)
    out2 = tmp_path / "out2"
    summary = json.loads(run_cli("convert", "npz", "--data_folder", str(root), "--output_dir", str(out2),
                                 "--samples_per_shard", "40", "--num_workers", "2", "--json").stdout)
    assert summary["samples"] == 103 and len(summary["shards"]) == 3


def test_zstd_stores_the_same_npy_bytes_compressed(data, converted, tmp_path):
    out = tmp_path / "out"
    run_cli(*convert_args(data, out, "--compress", "zstd", "--samples-per-shard", "3", "--num-workers", "1"))
    plain = {m.name: m.data for shard in sorted(converted.glob("*.tar")) for m in read_members(shard)}
    packed = {m.name: m.data for shard in sorted(out.glob("*.tar")) for m in read_members(shard)}
    for key in GOOD:
        assert zstandard.ZstdDecompressor().decompress(packed[f"{key}.npy.zst"]) == plain[f"{key}.npy"]
    samples = {s["__key__"]: s for s in fastwds.WebDataset(out / "manifest.json")}
    for key in GOOD:
        np.testing.assert_array_equal(samples[key]["npy.zst"], data.volumes[key].astype(np.float16))
        assert samples[key]["json"]["volume"]["member"] == "npy.zst"


def test_same_shards_for_any_worker_count(data, converted, tmp_path):
    out = tmp_path / "one"
    run_cli(*convert_args(data, out, "--samples-per-shard", "3", "--num-workers", "1"))
    shards = lambda d: [(s["name"], s["sha256"]) for s in json.loads((d / "manifest.json").read_text())["shards"]]
    assert shards(out) == shards(converted)
    for name, digest in shards(out):
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_volume_name_variants_and_duplicate_files(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    volume = np.zeros((1, 2, 2, 2), np.float32)
    for relative in ("x.npz", "a/x.npz", "y.npz", "z.npz"):
        np.savez(root / relative, volume)
    meta = tmp_path / "m.csv"
    # A bare name, a .npz name, a duplicate row (the first wins) and a name in other case (keys
    # are case-sensitive: it matches no volume).
    write_csv(meta, ["VolumeName", "Site"], [["x", "first"], ["y.npz", "b"], ["x.nii.gz", "second"],
                                             ["Z.NII.GZ", "case"]])
    out = tmp_path / "out"
    run_cli("convert", "npz", str(root), str(out), "--meta", str(meta), "--num-workers", "1", "--no-progress")
    samples = {s["json"]["file"]: s["json"] for s in fastwds.WebDataset(out)}
    assert samples["a/x.npz"]["metadata"] == {"Site": "first"}
    assert samples["y.npz"]["volume_name"] == "y.npz"
    reasons = Counter((r["reason"], r["id"]) for r in rejects_of(out))
    assert reasons == Counter({("duplicate_id", "x"): 1, ("duplicate_csv_row", "x.nii.gz"): 1,
                               ("missing_csv_row", "z"): 1, ("csv_row_without_volume", "Z.NII.GZ"): 1})
    assert "x.npz" not in samples  # the second file with the same name is the duplicate
    kept = tmp_path / "kept"
    run_cli("convert", "npz", str(root), str(kept), "--meta", str(meta), "--on-invalid", "keep",
            "--num-workers", "1", "--no-progress")
    files = sorted(s["json"]["file"] for s in fastwds.WebDataset(kept))
    assert files == ["a/x.npz", "y.npz", "z.npz"]  # a missing row can be kept, a duplicate key never


def test_upper_case_volumes_are_read_and_deeper_ones_are_named(tmp_path):
    """``scan.NPZ`` is a volume like ``scan.npz`` (it was skipped without a word); a volume
    deeper than the layouts fastwds reads is not converted, and the run says which."""
    root = tmp_path / "data"
    (root / "p" / "a" / "b").mkdir(parents=True)
    volume = np.zeros((1, 2, 2, 2), np.float32)
    for relative in ("lower.npz", "UPPER.npz", "p/a/b/deep.npz"):
        np.savez(root / relative, volume)
    (root / "UPPER.npz").rename(root / "UPPER.NPZ")  # np.savez itself would add .npz
    out = tmp_path / "out"
    result = run_cli("convert", "npz", str(root), str(out), "--json")
    assert json.loads(result.stdout)["samples"] == 2
    assert sorted(s["json"]["file"] for s in fastwds.WebDataset(out)) == ["UPPER.NPZ", "lower.npz"]
    assert "1 .npz file(s)" in result.stderr and "p/a/b/deep.npz" in result.stderr, result.stderr
    # Volumes this small make shards larger than the input: said so, not "0.34x smaller, -194% saved".
    summary = run_cli("convert", "npz", str(root), str(tmp_path / "again"), "--no-progress").stdout
    assert re.search(r"output \(shards\) +[0-9.]+ MB \([0-9.]+x larger\)$", summary, re.M), summary


def test_a_csv_with_another_separator_is_said_to_be_one(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    np.savez(root / "x.npz", np.zeros((1, 2, 2, 2), np.float32))
    meta = tmp_path / "meta.csv"
    meta.write_text("VolumeName;Site\nx;a\n")
    result = run_cli("convert", "npz", str(root), str(tmp_path / "out"), "--meta", str(meta), check=False)
    assert result.returncode == 1 and "its columns are separated by ';'" in result.stderr, result.stderr


def test_unreadable_and_object_volumes_are_rejected_without_unpickling(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    np.savez(root / "good.npz", np.ones((1, 2, 2, 2), np.float32))
    np.savez_compressed(root / "compressed.npz", np.full((1, 3, 3, 3), 0.5, np.float32))
    (root / "truncated.npz").write_bytes((root / "good.npz").read_bytes()[:-40])
    (root / "notzip.npz").write_bytes(b"hello")
    (root / "loop.npz").symlink_to("loop.npz")  # a symlink loop and a dangling one: one bad volume each,
    (root / "dangling.npz").symlink_to("elsewhere.npz")  # not the end of the listing or of the job
    np.savez(root / "two.npz", a=np.ones(2), b=np.ones(2))
    marker = tmp_path / "pwned"
    np.savez(root / "evil.npz", np.array([Evil(str(marker))], dtype=object))
    out = tmp_path / "out"
    run_cli("convert", "npz", str(root), str(out), "--num-workers", "1", "--no-progress")
    assert not marker.exists()
    found = {r["id"]: r for r in rejects_of(out)}
    reasons = {key: r["reason"] for key, r in found.items()}
    assert reasons == {"truncated": "unreadable_volume", "notzip": "unreadable_volume", "two": "array_not_found",
                       "evil": "not_numeric", "loop": "unreadable_volume", "dangling": "unreadable_volume"}
    assert "symbolic links" in found["loop"]["detail"] and "No such file" in found["dangling"]["detail"]
    samples = {s["__key__"]: s["npy"] for s in fastwds.WebDataset(out)}
    np.testing.assert_array_equal(samples["compressed"], np.full((1, 3, 3, 3), 0.5, np.float16))
    out2 = tmp_path / "out2"
    run_cli("convert", "npz", str(root), str(out2), "--array", "b", "--num-workers", "1", "--no-progress")
    assert {s["__key__"] for s in fastwds.WebDataset(out2)} == {"two"}


class Evil:
    """Unpickling this creates a file: the proof that nothing was unpickled is its absence."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_resume_refuses_changed_csv(data, tmp_path):
    import shutil

    copy = make_dataset(tmp_path / "copy")
    out = tmp_path / "out"
    run_cli(*convert_args(copy, out, "--num-workers", "1"))
    shutil.copy(data.reports, copy.reports)
    with open(copy.reports, "a", encoding="utf-8") as f:
        f.write("extra.nii.gz,a,b,c\n")
    result = run_cli(*convert_args(copy, out, "--num-workers", "1", "--resume"), check=False)
    assert result.returncode == 1 and "input changed" in result.stderr


def finished_tasks(out: Path) -> int:
    tasks = out / ".fastwds" / "tasks"
    return len(list(tasks.glob("*.json"))) if tasks.exists() else -1


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_shards(tmp_path):
    import os
    import signal
    import time

    root = tmp_path / "data"
    rng = np.random.default_rng(5)
    for i in range(40):
        folder = root / f"patient{i % 4}" / f"acc{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"v{i:03d}.npz", rng.uniform(-1, 1, (1, 32, 128, 128)).astype(np.float32))
    args = ["convert", "npz", str(root), "--samples-per-shard", "2", "--num-workers", "2", "--no-progress",
            "--compress", "zstd", "--zstd-level", "1"]
    clean = tmp_path / "clean"
    run_cli(*args[:3], str(clean), *args[3:])
    out = tmp_path / "out"
    # The whole process group dies at once, as in an OOM kill or a lost machine.
    with subprocess.Popen([sys.executable, "-m", "fastwds", *args[:3], str(out), *args[3:]],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True) as child:
        deadline = time.monotonic() + 120
        while finished_tasks(out) < 3 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert child.poll() is None, "the run finished before it could be killed"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert not (out / "manifest.json").exists() and 3 <= finished_tasks(out) < 20
    result = run_cli(*args[:3], str(out), *args[3:], "--resume", "--json")
    assert json.loads(result.stdout)["resumed"]
    manifest = json.loads((out / "manifest.json").read_text())
    expected = json.loads((clean / "manifest.json").read_text())
    assert [(s["name"], s["sha256"]) for s in manifest["shards"]] == \
           [(s["name"], s["sha256"]) for s in expected["shards"]]
    for shard in manifest["shards"]:
        assert hashlib.sha256((out / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
    assert manifest["stats"]["precision"] == expected["stats"]["precision"]
    assert (out / "volumes.jsonl").read_text() == (clean / "volumes.jsonl").read_text()
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(s["name"] for s in expected["shards"])
    assert not list(out.glob("*.partial"))


PEAK_RSS = """
import sys
from fastwds.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024)
sys.exit(code)
"""


def peak_rss_of_conversion(root: Path, out: Path) -> int:
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, "convert", "npz", str(root), str(out),
                             "--num-workers", "1", "--no-progress", "--no-fsync", "--json"],
                            capture_output=True, text=True, check=True)
    return int(result.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_memory_stays_at_a_few_volumes_whatever_the_dataset_size(tmp_path):
    rng = np.random.default_rng(2)
    tiny, one, few, many = (tmp_path / name for name in ("tiny", "one", "few", "many"))
    for folder in (tiny, one, few, many):
        folder.mkdir()
    np.savez(tiny / "v.npz", np.zeros((1, 1, 1, 1), np.float32))
    big = rng.uniform(-1, 1, (1, 64, 256, 256)).astype(np.float32)  # 16 MiB float32, 8 MiB float16
    np.savez(one / "v.npz", big)
    small = big[:, :32]  # 4 MiB float16
    for i in range(48):
        np.savez((few if i < 12 else many) / f"v{i:03d}.npz", small + i)
        if i < 12:
            np.savez(many / f"v{i:03d}.npz", small + i)
    baseline = peak_rss_of_conversion(tiny, tmp_path / "o0")
    single = peak_rss_of_conversion(one, tmp_path / "o1")
    # One volume costs its float16 array and its encoded bytes (2 x 8 MiB, plus the writer's
    # few 4 MiB buffers), not the float32 array on top (np.load would add 2 x 8 MiB).
    assert single - baseline < 3.5 * big.nbytes / 2, (baseline, single)
    # Twelve volumes already fill the pipeline (two being converted, one queued, one being
    # written); 48 need no more memory than allocator noise (holding the extra 36 would take
    # 36 x 4 MiB).
    twelve = peak_rss_of_conversion(few, tmp_path / "o2")
    forty_eight = peak_rss_of_conversion(many, tmp_path / "o3")
    assert forty_eight - twelve < 12 * small.nbytes / 2, (twelve, forty_eight)


def test_volumes_converted_at_once_are_written_in_order(tmp_path):
    """Within one task several volumes are inflated and cast at once, and a big volume finishes
    after the small ones behind it: the shard is the same bytes as with one thread, in input order,
    and a bad volume among them is rejected in its place."""
    from dataclasses import replace

    from fastwds.convert.run import convert
    from fastwds.sources import get_source
    from fastwds.sources.npz import NpzOptions

    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(5)
    for number, depth in enumerate([48, 1, 2, 1, 3, 1, 40, 1]):
        np.savez_compressed(root / f"vol_{number}.npz", rng.normal(size=(1, depth, 64, 64)).astype(np.float32))
    (root / "vol_3.npz").write_bytes(b"PK\x03\x04 not a zip")  # unreadable, in the middle
    source = get_source("npz")
    options = source.convert_options(source_options=NpzOptions())
    plan = source.plan(str(root), options)
    assert len(plan.tasks) == 1
    shards = {}
    for threads in (1, 4):
        out = tmp_path / f"threads{threads}"
        manifest = convert(plan, out, replace(options, task_threads=threads), command="convert npz",
                           show_progress=False)
        shards[threads] = {p.name: p.read_bytes() for p in out.glob("*.tar")}
        assert manifest["invalid_by_reason"] == {"unreadable_volume": 1}
        names = [m.name.split(".")[0] for m in read_members(next(out.glob("*.tar"))) if m.name.endswith(".json")]
        assert names == [f"vol_{n}" for n in (0, 1, 2, 4, 5, 6, 7)]
    assert shards[1] == shards[4]
