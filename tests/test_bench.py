"""``fastwds bench``: the harness reports every runner (numbers, failures, skips) and the write
benchmark runs end to end. No timing is asserted: only that the numbers exist and add up."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
from bench_table import table_row
from fastwds.bench import harness

WRITE_RUNNERS = [
    "fastwds ShardWriter.write",
    "fastwds ShardWriter.write_batch(1,000)",
    "webdataset.ShardWriter.write",
    "raw write() of the payloads",
]


@pytest.mark.slow
def test_bench_write_reports_every_runner(tmp_path):
    pytest.importorskip("webdataset")
    report_path = tmp_path / "out.json"
    work = tmp_path / "work"
    work.mkdir()
    completed = subprocess.run(
        [sys.executable, "-m", "fastwds", "bench", "write", "--samples", "300", "--repeat", "1",
         "--report", str(report_path), "--dir", str(work)],
        capture_output=True, text=True, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    table = completed.stdout
    assert "x floor" in table and "x peer" in table and "fsync" in table
    assert list(work.iterdir()) == []  # the temporary output is gone

    report = json.loads(report_path.read_text())
    assert report["benchmark"] == "write"
    assert report["params"]["samples"] == 300
    assert report["machine"]["cores"] == os.cpu_count()
    assert [r["name"] for r in report["runners"]] == WRITE_RUNNERS
    for runner in report["runners"]:
        summary = runner["summary"]
        assert runner["status"] == "ok", runner["message"]
        assert summary["samples_per_s"] > 0 and summary["mb_per_s"] > 0
        assert summary["peak_rss_mib"] > 0
        assert summary["x_floor"] > 0 and summary["x_peer"] > 0
        assert [run["warmup"] for run in runner["runs"]] == [True, False]
        assert all(run["samples"] == 300 for run in runner["runs"])
        # Same payload for everyone: ~61 kB jpg + json + txt per sample.
        assert all(300 * 40_000 < run["bytes"] < 300 * 85_000 for run in runner["runs"])
        cells = table_row(table, runner["name"])
        assert f"{summary['samples_per_s']:,.0f}" in cells
        assert f"{summary['x_floor']:.2f}x" in cells and f"{summary['x_peer']:.2f}x" in cells

    by_name = {r["name"]: r for r in report["runners"]}
    assert by_name[report["floor"]]["summary"]["x_floor"] == pytest.approx(1.0)
    assert by_name[report["peer"]]["summary"]["x_peer"] == pytest.approx(1.0)
    fastwds_runs = by_name["fastwds ShardWriter.write"]["runs"]
    assert fastwds_runs[0]["outputs"] == fastwds_runs[1]["outputs"] and len(fastwds_runs[0]["outputs"]) == 1
    # Both fastwds paths write the same samples, so the same bytes.
    assert fastwds_runs[0]["outputs"] == by_name["fastwds ShardWriter.write_batch(1,000)"]["runs"][0]["outputs"]


RUNNERS_MODULE = '''
import os
import sys

from fastwds.bench.harness import sha256_files


def works(args, out_dir, clock):
    print("chatter on stdout must not break the result line")
    with clock:
        (out_dir / "data.bin").write_bytes(b"x" * args["size"])
    return {"samples": 10, "bytes": args["size"], "outputs": sha256_files(out_dir)}


def raises(args, out_dir, clock):
    with clock:
        raise ValueError("boom from the runner")


def exits(args, out_dir, clock):
    print("disk on fire", file=sys.stderr, flush=True)
    os._exit(3)


def changes(args, out_dir, clock):
    with clock:
        (out_dir / "data.bin").write_bytes(os.urandom(16))
    return {"samples": 1, "bytes": 16, "outputs": sha256_files(out_dir)}
'''


def make_importable(tmp_path, monkeypatch, module: str, source: str) -> None:
    """Write ``module`` into tmp_path where the worker processes, which inherit the environment,
    can import it."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))


def test_failures_are_reported_not_hidden(tmp_path, monkeypatch):
    make_importable(tmp_path, monkeypatch, "runners_for_test", RUNNERS_MODULE)
    suite = harness.Suite(
        name="test",
        description="harness behaviour",
        runners=[
            harness.Runner("raises", "runners_for_test:raises", deterministic=True),
            harness.Runner("works", "runners_for_test:works", {"size": 1000}, deterministic=True),
            harness.Runner("exits", "runners_for_test:exits"),
            harness.Runner("changes", "runners_for_test:changes", deterministic=True),
            harness.Runner("needs a module", "runners_for_test:works", {"size": 1},
                           requires=("fastwds_no_such_module",)),
        ],
        floor="works",
        peer="raises",
    )
    out = io.StringIO()
    report_path = tmp_path / "report.json"
    code = harness.run_suite(suite, repeat=2, json_path=report_path, workdir=tmp_path, out=out)

    assert code == 1
    runners = {r["name"]: r for r in json.loads(report_path.read_text())["runners"]}
    assert runners["raises"]["status"] == "failed"
    assert runners["raises"]["message"] == "exit code 1: ValueError: boom from the runner"
    assert runners["exits"]["status"] == "failed"
    assert runners["exits"]["message"] == "exit code 3: disk on fire"
    assert runners["changes"]["status"] == "failed"
    assert runners["changes"]["message"] == "output changed between repetitions"
    assert runners["needs a module"]["status"] == "skipped"
    assert runners["needs a module"]["message"] == "fastwds_no_such_module not installed"
    assert runners["needs a module"]["runs"] == []

    works = runners["works"]
    assert works["status"] == "ok"
    assert len(works["runs"]) == 3  # warm-up + 2
    assert works["summary"]["samples_per_s"] > 0 and works["summary"]["x_floor"] == pytest.approx(1.0)
    assert works["summary"]["x_peer"] is None  # the peer failed: no ratio to it

    table = out.getvalue()
    assert table_row(table, "raises [peer]") == "FAILED: exit code 1: ValueError: boom from the runner".split()
    assert table_row(table, "exits") == "FAILED: exit code 3: disk on fire".split()
    assert table_row(table, "changes") == "FAILED: output changed between repetitions".split()
    assert table_row(table, "needs a module") == "SKIPPED: fastwds_no_such_module not installed".split()
    assert table_row(table, "works [floor]")[-2:] == ["1.00x", "-"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("fastwds-bench-")] == []


def test_runner_must_time_its_work(tmp_path, monkeypatch):
    make_importable(tmp_path, monkeypatch, "untimed_runner",
                    "def untimed(args, out_dir, clock):\n    return {'samples': 1, 'bytes': 1, 'outputs': None}\n")
    [result] = harness.run_benchmark([harness.Runner("untimed", "untimed_runner:untimed")], repeat=1)
    assert result.status == "failed"
    assert "never timed its work" in result.message


def test_peak_rss_is_the_runs_own(tmp_path, monkeypatch):
    make_importable(tmp_path, monkeypatch, "allocating_runner", '''
        def allocate(args, out_dir, clock):
            with clock:
                block = b"x" * (args["mib"] << 20)
            return {"samples": 1, "bytes": len(block), "outputs": None}
    ''')
    # A big harness must not make a small run look big (Linux's ru_maxrss after vfork would).
    harness_ballast = b"y" * (600 << 20)
    [result] = harness.run_benchmark(
        [harness.Runner("allocates", "allocating_runner:allocate", {"mib": 100})], repeat=1, workdir=tmp_path)
    del harness_ballast
    summary = result.summary()
    assert result.status == "ok", result.message
    assert 90 <= summary["timed_rss_mib"] < 150  # 100 MiB, less memory freed during setup
    assert summary["peak_rss_mib"] < 400


@pytest.mark.parametrize("size", [0, 1, harness.FLOOR_WRITE_PIECE - 1, harness.FLOOR_WRITE_PIECE,
                                  3 * harness.FLOOR_WRITE_PIECE + 5])
def test_floors_write_every_byte_in_pieces(size: int) -> None:
    """The floors' piecewise writes put exactly the given bytes out, from bytes and from a
    pyarrow buffer (what the parquet floor writes), in writes no larger than the piece size."""
    import pyarrow as pa

    data = os.urandom(size)
    for source in (data, pa.py_buffer(data)):
        sizes: list[int] = []

        class Recording(io.BytesIO):
            def write(self, chunk) -> int:  # type: ignore[override]
                sizes.append(len(chunk))
                return super().write(chunk)

        out = Recording()
        harness.write_in_pieces(out, source)
        assert out.getvalue() == data
        assert all(0 < n <= harness.FLOOR_WRITE_PIECE for n in sizes)
        assert len(sizes) == -(-size // harness.FLOOR_WRITE_PIECE)
