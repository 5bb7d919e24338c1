"""``fastwds bench read`` end to end on tiny volumes: every runner reads every volume, the table
and the JSON agree, and the generated data is gone afterwards. No timing is asserted."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from bench_table import table_row
from fastwds.bench.read import parse_shape, parse_workers

RUNNERS = [
    "NPZ float32 np.load",
    "NPZ float32 DataLoader w=2",
    "fastwds float16 raw",
    "fastwds float16 decoded",
    "fastwds make_loader w=2 decoded",
    "fastwds float16 .zst decoded",
    "webdataset.WebDataset raw",
    "webdataset.WebDataset decoded",
]


@pytest.mark.slow
def test_bench_read_reports_every_runner(tmp_path):
    report_path = tmp_path / "read.json"
    work = tmp_path / "work"
    work.mkdir()
    completed = subprocess.run(
        [sys.executable, "-m", "fastwds", "bench", "read", "--volumes", "6", "--shape", "1,8,64,64",
         "--samples-per-shard", "2", "--workers", "0,2", "--zstd", "--repeat", "1", "--report", str(report_path),
         "--dir", str(work)],
        capture_output=True, text=True, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert list(work.iterdir()) == []  # volumes, shards and run folders are gone
    report = json.loads(report_path.read_text())
    assert report["benchmark"] == "read"
    assert report["floor"] == "NPZ float32 np.load" and report["peer"] == "webdataset.WebDataset raw"
    assert [r["name"] for r in report["runners"]] == RUNNERS
    params = report["params"]
    assert params["volumes"] == 6 and params["shape"] == [1, 8, 64, 64] and params["workers"] == [0, 2]
    # float16 halves the payload; headers and JSON are small next to it even here.
    assert params["shard_bytes"] < params["npz_bytes"]
    table = completed.stdout
    for runner in report["runners"]:
        assert runner["status"] == "ok", runner["message"]
        assert all(run["samples"] == 6 for run in runner["runs"])
        summary = runner["summary"]
        expected_bytes = params["npz_bytes"] if runner["name"].startswith("NPZ") else None
        if expected_bytes:
            assert all(run["bytes"] == expected_bytes for run in runner["runs"])
        cells = table_row(table, runner["name"])
        assert f"{summary['samples_per_s']:,.0f}" in cells and f"{summary['x_floor']:.2f}x" in cells
    zstd = next(r for r in report["runners"] if r["name"] == "fastwds float16 .zst decoded")
    assert zstd["runs"][0]["bytes"] == params["zstd_shard_bytes"]
    assert any(line.startswith("fastwds float16 raw vs webdataset.WebDataset raw: ") for line in report["findings"])


def test_bench_read_arguments():
    assert parse_shape("1,240,480,480") == (1, 240, 480, 480) and parse_shape("2x3") == (2, 3)
    assert parse_workers("2,0,2") == [0, 2]
    for bad in ("", "1,,2", "0,3", "a"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shape(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_workers("-1")
