"""`fastwds verify --check-precision`: float16 volumes from `convert npz` against their NPZ sources,
through the CLI. Clean conversions pass; each planted defect (a wrong float16 value, a changed,
reshaped, corrupt or deleted source, a JSON whose statistics were edited) fails with its code."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zstandard
from conftest import run_cli
from fastwds.volume import compare_float16
from npz_data import GOOD, SHAPE, make_dataset


def convert(tmp_path: Path, *extra: str, defects: bool = False):
    """A fresh dataset of tiny volumes and its conversion (each test may damage its own)."""
    data = make_dataset(tmp_path, defects=defects)
    out = tmp_path / "out"
    run_cli("convert", "npz", str(data.root), str(out), "--reports", str(data.reports), "--meta", str(data.meta),
            "--no-progress", "--num-workers", "1", "--samples-per-shard", "3", *extra)
    return data, out


def verify(*args: str | Path) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "fastwds", "verify", *map(str, args), "--json"],
                          capture_output=True, text=True)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def errors(report: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for issue in report["issues"]:
        if issue["severity"] == "error":
            found.setdefault(issue["code"], []).append(issue)
    return found


def shard_of(out: Path, key: str) -> Path:
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            if f"{key}.json" in tar.getnames():
                return shard
    raise AssertionError(f"no shard holds {key}")


def rewrite_tar(shard: Path, edit: Callable[[str, bytes], bytes]) -> None:
    """Write ``shard`` again with tarfile, members in the same order, ``edit(name, data)`` applied."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            data = edit(member.name, data)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def npy_data_start(npy: bytes) -> int:
    assert npy[:8] == b"\x93NUMPY\x01\x00"
    return 10 + int.from_bytes(npy[8:10], "little")


def one_ulp_off(volume: np.ndarray) -> tuple[int, np.float16]:
    """The element whose float16 rounding is nearest its float32 value, and the float16 one step
    (one unit in the last place) away: an error just over twice the rounding allowance."""
    half = volume.astype(np.float16).ravel()
    relative = np.abs(half.astype(np.float64) - volume.ravel()) / np.abs(volume.ravel())
    index = int(np.argmin(relative))
    return index, np.nextafter(half[index], np.float16(np.inf))


def test_the_rounding_bound_accepts_every_correct_rounding_and_rejects_one_ulp_errors():
    """Exhaustive over float16: every representable value, every midpoint (ties) and the float32
    values either side of it, both signs, from float32 and float64 sources."""
    exact = np.arange(0x7BFF + 1, dtype=np.uint16).view(np.float16).astype(np.float32)  # 0 .. 65504
    middle = ((exact[:-1].astype(np.float64) + exact[1:]) / 2).astype(np.float32)
    values = np.concatenate([exact, middle, np.nextafter(middle, np.float32(np.inf)),
                             np.nextafter(middle, np.float32(-np.inf)), np.float32([65510, 65519.99])])
    values = np.concatenate([values, -values])
    for dtype in (np.float32, np.float64):
        source = values.astype(dtype)
        result = compare_float16(source.astype(np.float16), [source[:100_000], source[100_000:]], clipped=False)
        assert result.wrong == 0 and result.compared == source.size
        assert result.max_abs_error == 16.0  # 65519.99 -> 65504
    representable = exact[1:-1]
    one_up = np.nextafter(representable.astype(np.float16), np.float16(np.inf))
    result = compare_float16(one_up, [representable], clipped=False)
    assert result.wrong == representable.size


def test_clean_conversion_passes_and_the_summary_matches_an_independent_computation(tmp_path):
    data, out = convert(tmp_path)
    code, report = verify(out, "--check-precision")
    assert code == 0 and report["errors"] == 0, report["issues"]
    precision = report["precision"]
    errors_by_key = {k: np.abs(data.volumes[k].astype(np.float16).astype(np.float64) - data.volumes[k]) for k in GOOD}
    worst = max(GOOD, key=lambda k: errors_by_key[k].max())
    squared = sum(float(np.square(e).sum()) for e in errors_by_key.values())
    assert precision["volumes"] == len(GOOD) and precision["values"] == len(GOOD) * math.prod(SHAPE)
    assert precision["max_abs_error"] == errors_by_key[worst].max()
    assert precision["max_abs_error_key"] == worst
    assert precision["rmse"] == pytest.approx(math.sqrt(squared / precision["values"]), rel=1e-9)
    assert precision["source_root"] == str(data.root.resolve())
    assert "8 float16 volumes against their NPZ sources" in report["checked"]
    # Without the option verify reports what it always did.
    code, plain = verify(out)
    assert code == 0 and "precision" not in plain
    assert not any("NPZ" in c for c in plain["checked"])
    text = run_cli("verify", str(out), "--check-precision").stdout
    assert f"precision: 8 float16 volume(s) compared with their NPZ sources under {data.root.resolve()}" in text
    assert f"worst max abs error {precision['max_abs_error']:.6g}" in text and "overall RMSE" in text


def test_zstd_volumes_and_clipped_volumes_pass(tmp_path):
    data, out = convert(tmp_path, "--compress", "zstd", "--on-overflow", "clip", defects=True)
    code, report = verify(out, "--check-precision")
    assert code == 0 and report["errors"] == 0, report["issues"]
    # 8 good volumes plus the NaN, 1e6 and -inf ones (no_report lacks a CSV row and is skipped).
    assert report["precision"]["volumes"] == 11 and report["precision"]["clipped_values"] == 3
    assert report["precision"]["max_abs_error"] == 1e6 - 65504
    assert report["precision"]["max_abs_error_key"] == "bad_big"


@pytest.mark.parametrize("compress", [None, "zstd"])
def test_a_float16_value_one_ulp_off_is_caught(tmp_path, compress):
    data, out = convert(tmp_path, *(["--compress", "zstd"] if compress else []))
    key = "train_2_a_1"
    index, wrong = one_ulp_off(data.volumes[key])
    shard = shard_of(out, key)
    if compress is None:  # rewrite the member's bytes in place: same size, same offsets
        with tarfile.open(shard) as tar:
            member = tar.getmember(f"{key}.npy")
            start = member.offset_data + npy_data_start(tar.extractfile(member).read(128))
        with open(shard, "r+b") as f:
            f.seek(start + 2 * index)
            f.write(wrong.tobytes())
    else:
        def edit(name: str, data_bytes: bytes) -> bytes:
            if name != f"{key}.npy.zst":
                return data_bytes
            npy = bytearray(zstandard.ZstdDecompressor().decompress(data_bytes))
            start = npy_data_start(bytes(npy)) + 2 * index
            npy[start:start + 2] = wrong.tobytes()
            return zstandard.ZstdCompressor().compress(bytes(npy))
        rewrite_tar(shard, edit)
    code, report = verify(out, "--check-precision")
    assert code == 1
    [issue] = errors(report)["precision_exceeded"]
    assert issue["shard"] == shard.name and issue["key"] == key
    position = [int(i) for i in np.unravel_index(index, SHAPE)]
    assert f"{data.root.resolve() / data.files[key]}" in issue["message"]
    assert f"first at {position}" in issue["message"] and "1 value(s)" in issue["message"]
    # The one-ULP error is under the tolerance of the recorded statistics' check, and that is fine:
    # the value check is what catches it. Without the option nothing is compared.
    code, report = verify(out)
    assert "precision_exceeded" not in errors(report)


def test_a_clipped_value_that_is_not_the_clip_value_is_caught(tmp_path):
    data, out = convert(tmp_path, "--on-overflow", "clip", defects=True)
    shard = shard_of(out, "bad_big")
    with tarfile.open(shard) as tar:
        member = tar.getmember("bad_big.npy")
        start = member.offset_data + npy_data_start(tar.extractfile(member).read(128))
    with open(shard, "r+b") as f:  # element 7 holds 1e6, clipped to 65504: make it 65472
        f.seek(start + 2 * 7)
        f.write(np.float16(65472).tobytes())
    code, report = verify(out, "--check-precision")
    assert code == 1
    [issue] = errors(report)["precision_exceeded"]
    assert issue["key"] == "bad_big" and "source 1000000.0, float16 65472.0" in issue["message"]
    assert "clipped value" in issue["message"]


@pytest.mark.parametrize("change", ["value", "shape", "corrupt", "delete"])
def test_a_source_changed_after_conversion(tmp_path, change):
    data, out = convert(tmp_path)
    key = "train_3_a_1"
    source = data.root / data.files[key]
    volume = data.volumes[key].copy()
    if change == "value":
        volume.flat[100] += 0.01
        np.savez(source, volume)
    elif change == "shape":
        np.savez(source, volume.reshape(1, 16, 8, 16))
    elif change == "corrupt":
        source.write_bytes(source.read_bytes()[:200])
    else:
        source.unlink()
    code, report = verify(out, "--check-precision")
    assert code == 1
    found = errors(report)
    expected = {"value": "precision_exceeded", "shape": "shape_mismatch", "corrupt": "source_unreadable",
                "delete": "source_missing"}[change]
    [issue] = found[expected]
    assert issue["key"] == key and issue["shard"] == shard_of(out, key).name
    assert str(data.root.resolve() / data.files[key]) in issue["message"]
    if change == "value":
        assert "first at [0, 0, 6, 4]" in issue["message"]  # element 100 of (1, 8, 16, 16)
        assert "modified after conversion" in issue["message"]
        assert [i["key"] for i in found["precision_stats_mismatch"]] == [key]
    # Only the changed volume is affected.
    assert {i["key"] for issues in found.values() for i in issues} == {key}
    assert report["precision"]["volumes"] == len(GOOD) - (change in ("shape", "corrupt", "delete"))


def test_edited_json_statistics_are_caught(tmp_path):
    data, out = convert(tmp_path)
    key = "train_1_a_2"
    shard = shard_of(out, key)
    recorded = {}

    def edit(name: str, data_bytes: bytes) -> bytes:
        if name != f"{key}.json":
            return data_bytes
        document = json.loads(data_bytes)
        recorded["max_abs_error"] = document["volume"]["max_abs_error"]
        document["volume"]["max_abs_error"] *= 1.00001  # over the 1e-6 relative tolerance
        return json.dumps(document).encode()

    rewrite_tar(shard, edit)
    code, report = verify(out, "--check-precision")
    assert code == 1
    found = errors(report)
    [issue] = found["precision_stats_mismatch"]
    assert issue["key"] == key and issue["shard"] == shard.name
    assert f"max_abs_error {recorded['max_abs_error'] * 1.00001!r} recorded" in issue["message"]
    assert "rmse" not in issue["message"]
    assert "precision_exceeded" not in found
    # The rewritten shard also differs from the manifest's hash; without the option that is all.
    code, report = verify(out)
    assert "manifest_mismatch" in errors(report) and "precision_stats_mismatch" not in errors(report)


def test_moved_sources_need_source_root(tmp_path):
    data, out = convert(tmp_path)
    moved = tmp_path / "moved" / "volumes"
    moved.parent.mkdir()
    shutil.move(data.root, moved)
    code, report = verify(out, "--check-precision")
    assert code == 1 and len(errors(report)["source_missing"]) == len(GOOD)
    assert "--source-root" in errors(report)["source_missing"][0]["message"]
    code, report = verify(out, "--check-precision", "--source-root", moved)
    assert code == 0 and report["errors"] == 0, report["issues"]
    assert report["precision"]["volumes"] == len(GOOD) and report["precision"]["source_root"] == str(moved)
    # Without manifest.json nothing says where the sources are: one error naming the count. (The
    # folder is then also a fastwds run without its manifest: run_incomplete, whatever the sources.)
    (out / "manifest.json").unlink()
    code, report = verify(out, "--check-precision")
    assert code == 1 and set(errors(report)) == {"source_missing", "run_incomplete"}
    [issue] = errors(report)["source_missing"]
    assert issue["message"].startswith(f"{len(GOOD)} float16 volume(s) not compared: no readable manifest.json")
    code, report = verify(out, "--check-precision", "--source-root", moved)
    assert set(errors(report)) == {"run_incomplete"} and report["precision"]["volumes"] == len(GOOD)


def test_shards_without_volumes_are_a_no_op_with_a_note(tmp_path):
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("a.txt", b"hello"), ("a.json", b'{"id": "a"}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    code, report = verify(tmp_path, "--check-precision")
    assert code == 0 and report["errors"] == 0
    assert report["precision"]["volumes"] == 0 and "no float16 volumes" in report["precision"]["note"]
    text = run_cli("verify", str(tmp_path), "--check-precision").stdout
    assert "precision: no float16 volumes in these shards: nothing to compare" in text
    result = run_cli("verify", str(tmp_path), "--source-root", str(tmp_path), check=False)
    assert result.returncode == 2 and "fastwds verify: error: --source-root needs --check-precision" in result.stderr
