"""A full disk, for real: `fastwds convert` runs under RLIMIT_FSIZE (the file-size limit a quota or
`ulimit -f` sets; writing past it fails with EFBIG, as ENOSPC would). Whatever file hits the limit
(a shard, Energon's index.sqlite, a dataset file written at the end), the run exits 1 with one
line naming that file and no traceback, leaves nothing that looks finished, and `--resume`
without the limit completes it with the bytes of a clean run."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import jpeg_bytes
from fastwds.synthetic import generate
from sft_data import chat

LIMIT = 16 << 10  # bytes per file: more than any shard or task file below, less than the file that fails


def convert(args: list[str], max_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # in the child before exec: the CLI and its workers inherit it
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    return subprocess.run([sys.executable, "-m", "fastwds", "convert", *args, "--no-progress"], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, preexec_fn=limit if max_file_bytes else None)


def shard_digests(out: Path) -> dict[str, str]:
    return {s["name"]: s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]}


def assert_one_line_naming(result: subprocess.CompletedProcess, name: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("fastwds: error:")]
    assert len(errors) == 1 and name in errors[0], result.stderr


def assert_nothing_looks_finished(out: Path) -> None:
    """No manifest, every shard present is one a task recorded, with that record's size, and no
    half-written file beside them."""
    assert not (out / "manifest.json").exists()
    recorded = {shard["name"]: shard["bytes"] for record in (out / ".fastwds" / "tasks").glob("*.json")
                for shard in json.loads(record.read_text())["shards"]}
    assert {p.name: p.stat().st_size for p in out.glob("*.tar")} == recorded
    assert not [p for p in out.rglob("*.partial") if ".fastwds" not in p.relative_to(out).parts]


def sft_input(root: Path, rows: int, missing_every: int | None) -> Path:
    """Rows of one tiny image each; with ``missing_every``, every such row names a missing file
    (a rejected row: a line of rejects.jsonl, no shard bytes)."""
    (root / "dot.jpg").write_bytes(jpeg_bytes(8, 8))
    (root / "train.jsonl").write_text("".join(json.dumps({
        "id": f"r{i}", "image": "gone.jpg" if missing_every and i % missing_every == 0 else "dot.jpg",
        "messages": chat("<image> and?")}) + "\n" for i in range(rows)))
    return root / "train.jsonl"


@pytest.mark.parametrize("rows, missing_every, energon, full_file", [
    (120, None, True, ".nv-meta/index.sqlite"),  # sqlite's own errors, not OSErrors
    (240, 2, False, "rejects.jsonl"),  # a dataset file written at the end (temporary name, then rename)
])
def test_a_full_disk_at_the_end_names_the_file_and_resume_completes(tmp_path, rows, missing_every, energon,
                                                                    full_file):
    data = sft_input(tmp_path, rows, missing_every)
    flags = ["--max-samples-per-shard", "4", *([] if energon else ["--no-energon"])]
    clean = tmp_path / "clean" / "out"
    assert convert(["sft", str(data), str(clean), *flags]).returncode == 0
    written_before = [*clean.glob("*.tar"), *clean.glob("*.tar.idx"), *clean.glob(".fastwds/*/*.json"),
                      clean / ".fastwds" / "attempts.jsonl"]
    assert max(p.stat().st_size for p in written_before) < LIMIT < (clean / full_file).stat().st_size

    out = tmp_path / "out"
    full = convert(["sft", str(data), str(out), *flags], max_file_bytes=LIMIT)
    assert_one_line_naming(full, full_file)
    assert_nothing_looks_finished(out)
    resumed = convert(["sft", str(data), str(out), *flags, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert shard_digests(out) == shard_digests(clean)
    for name in ["rejects.jsonl", "index.wids.json", ".nv-meta/index.sqlite", ".nv-meta/.info.json"]:
        assert (out / name).exists() == (clean / name).exists(), name
        if (clean / name).exists():
            assert (out / name).read_bytes() == (clean / name).read_bytes(), name


def test_a_full_disk_in_the_run_state_names_the_file(tmp_path):
    """The attempts log grows by a line per task: when it cannot, the run stops naming it, and the
    attempt that could not start leaves no staging folder behind (it held its lock until the
    process ended, so the cleanup called it alive)."""
    data = sft_input(tmp_path, 120, None)
    out = tmp_path / "out"
    full = convert(["sft", str(data), str(out), "--max-samples-per-shard", "1"], max_file_bytes=LIMIT)
    assert_one_line_naming(full, "attempts.jsonl")
    assert "still alive" not in full.stderr
    assert_nothing_looks_finished(out)
    assert not list((out / ".fastwds" / "attempts").iterdir())


def test_a_full_disk_under_a_shard_names_it_and_resume_completes(tmp_path):
    data = tmp_path / "data"
    generate(data, rows=120, subsets=1, files_per_subset=2, row_group_rows=40, seed=5)
    flags = ["--max-samples-per-shard", "40"]
    clean = tmp_path / "clean"
    assert convert(["parquet", str(data), str(clean), *flags]).returncode == 0
    out = tmp_path / "out"
    full = convert(["parquet", str(data), str(out), *flags], max_file_bytes=min(
        p.stat().st_size for p in clean.glob("*.tar")) // 2)
    assert_one_line_naming(full, ".tar")
    assert "File too large" in full.stderr
    assert_nothing_looks_finished(out)
    assert not list(out.glob("*.tar")), "no shard can be complete when every shard is over the limit"
    resumed = convert(["parquet", str(data), str(out), *flags, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert shard_digests(out) == shard_digests(clean)
