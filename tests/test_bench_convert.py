"""``fastwds bench convert``: every runner reported with its numbers (or why it failed), the
fastwds runs checked against the planted broken rows, the same rows and payload for every
runner, INPUT sampling with --limit, and --plot. No timing is asserted."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from bench_table import table_row
from fastwds.bench import convert as bench_convert
from fastwds.bench import harness
from fastwds.synthetic import generate
from npz_data import make_dataset as make_npz_dataset
from sft_data import make_image_dataset


def bench(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastwds", "bench", "convert", *arguments],
                          capture_output=True, text=True, check=False, cwd=cwd)


def first_rows(root: Path, count: int) -> tuple[list[str], int]:
    """Ids and image bytes of the first ``count`` rows in fastwds's order (subset folders, then
    files, by name), read with pyarrow independently of the benchmark's reader."""
    ids: list[str] = []
    size = 0
    for path in sorted(root.rglob("*.parquet")):
        table = pq.read_table(path).slice(0, count - len(ids))
        ids += table.column("id").to_pylist()
        size += sum(len(v["bytes"]) for v in table.column("image").to_pylist() if v)
        size += sum(len(i["bytes"]) for v in table.column("images").to_pylist() if v for i in v)
        if len(ids) == count:
            break
    return ids, size


@pytest.mark.slow
def test_generated_dataset_every_runner_scaling_and_targets(tmp_path):
    pytest.importorskip("webdataset")
    work = tmp_path / "work"
    work.mkdir()
    completed = bench("--rows", "200", "--repeat", "1", "--workers", "2,1", "--modes", "default,full",
                      "--report", "out.json", "--dir", str(work), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    table = completed.stdout
    assert list(work.iterdir()) == []  # the generated dataset and every run's output are gone

    report = json.loads((tmp_path / "out.json").read_text())
    params = report["params"]
    assert params["rows"] == 200 and params["generated"] and params["workers"] == [1, 2]
    assert 0 < params["broken_rows"] < 30
    full = bench_convert.fastwds_name("full", bench_convert.target_workers([1, 2], "full"))
    names = ["fastwds convert, 1 worker", "fastwds convert, 2 workers",
             full, bench_convert.PEER, bench_convert.FLOOR,
             bench_convert.DECODE]
    assert [r["name"] for r in report["runners"]] == names
    by_name = {r["name"]: r for r in report["runners"]}
    for runner in report["runners"]:
        summary = runner["summary"]
        assert runner["status"] == "ok", runner["message"]
        assert summary["samples_per_s"] > 0 and summary["mb_per_s"] > 0 and summary["peak_rss_mib"] > 0
        assert summary["x_floor"] > 0 and summary["x_peer"] > 0
        assert [run["warmup"] for run in runner["runs"]] == [True, False]
        # One payload for all: the images of the 200 rows (~90 kB each).
        assert {run["bytes"] for run in runner["runs"]} == {params["payload_bytes"]}
        cells = table_row(table, runner["name"])
        assert f"{summary['samples_per_s']:,.0f}" in cells and f"{summary['mb_per_s']:,.1f}" in cells
        assert f"{summary['x_floor']:.2f}x" in cells and f"{summary['x_peer']:.2f}x" in cells
    assert 200 * 50_000 < params["payload_bytes"] < 200 * 150_000
    assert by_name[bench_convert.FLOOR]["summary"]["x_floor"] == pytest.approx(1.0)

    # fastwds wrote the valid rows only, the same bytes at every worker count and in every mode
    # (the planted broken images are all caught by the fast checks already).
    fastwds_runs = [run for name in names[:3] for run in by_name[name]["runs"]]
    assert {run["samples"] for run in fastwds_runs} == {200 - params["broken_rows"]}
    assert len({tuple(run["outputs"]) for run in fastwds_runs}) == 1
    assert len(fastwds_runs[0]["outputs"]) == 2  # two subsets, one shard each
    for name in (bench_convert.PEER, bench_convert.FLOOR, bench_convert.DECODE):
        assert {run["samples"] for run in by_name[name]["runs"]} == {200}

    one, two = (by_name[names[i]]["summary"]["samples_per_s"] for i in (0, 1))
    scaling = f"scaling: 1 worker {one:,.0f}/s, 2 workers {two:,.0f}/s ({two / one:.2f}x)"
    assert scaling in table.splitlines() and scaling in report["findings"]
    targets = next(line for line in report["findings"] if line.startswith("targets: "))
    target = bench_convert.fastwds_name("default", bench_convert.target_workers([1, 2]))
    x_floor, x_peer = (by_name[target]["summary"][k] for k in ("x_floor", "x_peer"))
    assert f"is {x_floor:.2f}x the floor (target >= 0.9x: " in targets
    assert f"and {x_peer:.2f}x the peer (target >= 3.0x: " in targets
    full_line = next(line for line in report["findings"] if line.startswith("full verify: "))
    ratio = by_name[names[2]]["summary"]["mb_per_s"] / by_name[bench_convert.DECODE]["summary"]["mb_per_s"]
    assert f"is {ratio:.2f}x the one-core Pillow decode rate" in full_line and "target >= 1.9x" in full_line
    assert targets in table and full_line in table
    assert "largest single process" in table and "fsync" in table


@pytest.mark.slow
def test_input_sampled_with_limit(tmp_path):
    pytest.importorskip("webdataset")
    dataset = generate(tmp_path / "data", rows=300, broken_share=0.1, row_group_rows=100)
    # 75 rows per file: the limit ends in the middle of the second file's row group.
    ids, image_bytes = first_rows(tmp_path / "data", 110)
    broken = sum(sample_id in dataset.broken for sample_id in ids)
    assert broken > 0
    completed = bench(str(tmp_path / "data"), "--limit", "110", "--repeat", "1", "--workers", "1",
                      "--report", "out.json", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["params"]["rows"] == 110 and report["params"]["limit"] == 110
    assert report["params"]["payload_bytes"] == image_bytes
    assert "the first 110 rows of" in completed.stdout
    by_name = {r["name"]: r for r in report["runners"]}
    assert set(by_name) == {"fastwds convert, 1 worker", bench_convert.PEER, bench_convert.FLOOR}
    for runner in report["runners"]:
        assert runner["status"] == "ok", runner["message"]
        assert runner["summary"]["samples_per_s"] > 0 and runner["summary"]["mb_per_s"] > 0
    # No planted list for the user's data: the count is what fastwds found, the same every run.
    assert {run["samples"] for run in by_name["fastwds convert, 1 worker"]["runs"]} == {110 - broken}
    assert {run["samples"] for run in by_name[bench_convert.PEER]["runs"]} == {110}
    assert {run["samples"] for run in by_name[bench_convert.FLOOR]["runs"]} == {110}
    assert "scaling: one worker count measured" in completed.stdout


def corrupt_column(path: Path, column: str) -> None:
    """Scramble one column's compressed pages, keeping the file's metadata readable: planning
    works, reading that column fails."""
    metadata = pq.read_metadata(path)
    data = bytearray(path.read_bytes())
    for group in range(metadata.num_row_groups):
        for number in range(metadata.num_columns):
            chunk = metadata.row_group(group).column(number)
            if chunk.path_in_schema.startswith(column):
                start = chunk.dictionary_page_offset or chunk.data_page_offset
                for i in range(start + 20, start + chunk.total_compressed_size):
                    data[i] = (data[i] * 7 + 13) % 256
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_damaged_input_fails_runners_visibly(tmp_path):
    generate(tmp_path / "data", rows=120, subsets=1, files_per_subset=2)
    corrupt_column(tmp_path / "data" / "subset_0" / "part-001.parquet", "conversations.list.element.value")
    completed = bench(str(tmp_path / "data"), "--repeat", "1", "--workers", "1", "--modes", "default,full",
                      "--report", "out.json", cwd=tmp_path)
    assert completed.returncode == 1  # a failed runner fails the benchmark
    report = json.loads((tmp_path / "out.json").read_text())
    by_name = {r["name"]: r for r in report["runners"]}
    # Every runner that reads the conversations fails, and says why, in the table too.
    for name in ("fastwds convert, 1 worker", "fastwds convert --verify-images full, 1 worker",
                 bench_convert.FLOOR, bench_convert.PEER):
        if by_name[name]["status"] == "skipped":  # the peer without webdataset installed
            continue
        assert by_name[name]["status"] == "failed"
        assert by_name[name]["summary"] is None
        # The decoder's own words vary with where the damage lands (and whether the runner's
        # setup or fastwds itself hit it first); the reason must be that reading failed.
        message = by_name[name]["message"].lower()
        assert any(w in message for w in ("cannot be read", "thrift", "snappy", "corrupt", "page header")), message
        assert table_row(completed.stdout, name)[0] == "FAILED:"
    # Decoding reads only the images, which are intact: its numbers are still there.
    assert by_name[bench_convert.DECODE]["status"] == "ok"
    assert by_name[bench_convert.DECODE]["summary"]["samples_per_s"] > 0
    assert "targets: no ratios, fastwds convert, 1 worker failed" in completed.stdout
    assert "full verify: no ratio to the one-core decode rate" in completed.stdout


def test_unreadable_input_is_one_clear_error(tmp_path):
    generate(tmp_path / "data", rows=40, subsets=1, files_per_subset=2)
    damaged = tmp_path / "data" / "subset_0" / "part-001.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-100])  # the footer is gone
    completed = bench(str(tmp_path / "data"), "--repeat", "1", cwd=tmp_path)
    assert completed.returncode == 1
    assert completed.stdout == ""
    assert completed.stderr.startswith(f"fastwds: error: {damaged}: not a readable parquet file")
    assert len(completed.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("arguments, message", [
    (["--limit", "10"], "--limit samples INPUT; without INPUT, --rows sets the size"),
    (["INPUT", "--rows", "10", "--seed", "1"], "--rows, --seed: only without INPUT (use --limit to sample INPUT)"),
    (["INPUT"], "INPUT: no .parquet files found (searched all subfolders)"),
])
def test_bad_invocations_are_one_clear_error(tmp_path, arguments, message):
    (tmp_path / "INPUT").mkdir()
    completed = bench(*arguments, cwd=tmp_path)
    assert completed.returncode == 1
    assert completed.stderr == f"fastwds: error: {message}\n"


def test_plot_without_matplotlib_fails_before_running(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    # matplotlib is a test dependency: hide it, as on a machine without it (find_spec sees None).
    hidden = ("import sys; sys.modules['matplotlib'] = None; from fastwds.cli import main; "
              "sys.exit(main(sys.argv[1:]))")
    completed = subprocess.run([sys.executable, "-c", hidden, "bench", "convert", "--rows", "50", "--plot",
                                "scaling.png", "--dir", str(work)], cwd=tmp_path, capture_output=True, text=True)
    assert completed.returncode == 1
    assert completed.stderr == "fastwds: error: --plot needs matplotlib: pip install matplotlib\n"
    assert completed.stdout == "" and list(work.iterdir()) == [] and not (tmp_path / "scaling.png").exists()


@pytest.mark.slow
def test_plot_is_drawn(tmp_path):
    completed = bench("--rows", "100", "--repeat", "1", "--workers", "1,2", "--plot", "scaling.png",
                      cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "plot: scaling.png" in completed.stdout
    assert (tmp_path / "scaling.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_fastwds_runner_modes_and_sample_check(tmp_path):
    dataset = generate(tmp_path / "data", rows=60, broken_share=0.2, subsets=1, files_per_subset=1)
    planted = dict(Counter(dataset.broken.values()))
    rows, payload = bench_convert.payload_of(str(tmp_path / "data"), None, bench_convert.ParquetColumns())
    assert (rows, payload) == (60, dataset.image_bytes)
    args = {"kind": "parquet", "input": str(tmp_path / "data"), "limit": None, "rows": 60,
            "payload_bytes": payload, "mode": "default", "workers": 1, "expected_rejects": planted}
    out = tmp_path / "out"
    out.mkdir()
    result = bench_convert.fastwds_convert(args, out, harness.Clock())
    assert result["samples"] == 60 - len(dataset.broken) and result["bytes"] == payload
    shards = sorted(out.glob("*.tar"))
    assert len(shards) == 1 and result["outputs"] == [hashlib.sha256(shards[0].read_bytes()).hexdigest()]

    # The other modes: the same samples; re-encoding changes the bytes, full verification does not.
    outputs = {}
    for mode in ("full", "reencode"):
        (tmp_path / mode).mkdir()
        other = bench_convert.fastwds_convert(dict(args, mode=mode), tmp_path / mode, harness.Clock())
        assert other["samples"] == result["samples"]
        outputs[mode] = other["outputs"]
    assert outputs["full"] == result["outputs"] and outputs["reencode"] != result["outputs"]

    # One planted row fewer than fastwds rejected: the run must fail, naming both counts.
    reason = next(iter(planted))
    wrong = dict(planted, **{reason: planted[reason] - 1})
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(RuntimeError, match=f"wrote {60 - len(dataset.broken)} samples, expected "
                                           f"{60 - len(dataset.broken) + 1}"):
        bench_convert.fastwds_convert(dict(args, expected_rejects=wrong), again, harness.Clock())


def test_floor_reads_exactly_the_limited_rows(tmp_path):
    generate(tmp_path / "data", rows=300, row_group_rows=100)  # 4 files of 75 rows
    _, image_bytes = first_rows(tmp_path / "data", 110)
    batches = list(bench_convert.read_batches(str(tmp_path / "data"), 110))
    assert [b.num_rows for b in batches] == [75, 35]
    args = {"input": str(tmp_path / "data"), "limit": 110, "rows": 110, "payload_bytes": image_bytes}
    result = bench_convert.pyarrow_floor(args, tmp_path, harness.Clock())
    assert result["samples"] == 110
    # The images plus small columns (ids, paths, conversations): not the second file's whole group.
    written = (tmp_path / "columns.bin").stat().st_size
    assert image_bytes < written < image_bytes * 1.05


def test_each_mode_runs_with_fastwds_default_worker_count_for_it(monkeypatch):
    monkeypatch.setattr(bench_convert, "default_workers", lambda decoding=False: 4 if decoding else 2)
    assert [bench_convert.target_workers(None, mode) for mode in ("default", "full", "reencode", "resize")] == \
        [2, 4, 4, 4]
    assert bench_convert.target_workers([1, 4], "full") == 4 and bench_convert.target_workers([1, 4]) == 4
    assert bench_convert.target_workers([1, 2], "full") == 2 and bench_convert.target_workers([1, 2]) == 2
    assert bench_convert.default_mode_workers(None) == [2] and bench_convert.default_mode_workers([1, 3]) == [1, 3]


def test_scaling_line_and_targets_from_summaries(monkeypatch):
    monkeypatch.setattr(bench_convert, "default_workers", lambda decoding=False: 3)  # not measured: the largest count is used

    def summary(rate, x_floor=None, x_peer=None, mb=1.0):
        return {"samples_per_s": rate, "mb_per_s": mb, "x_floor": x_floor, "x_peer": x_peer}

    lines = bench_convert.findings({
        "fastwds convert, 1 worker": summary(2100),
        "fastwds convert, 2 workers": summary(3900, x_floor=0.95, x_peer=2.4),
    }, ["default"], [1, 2])
    assert lines == [
        "scaling: 1 worker 2,100/s, 2 workers 3,900/s (1.86x)",
        "targets: fastwds convert, 2 workers is 0.95x the floor (target >= 0.9x: met) and "
        "2.40x the peer (target >= 3.0x: NOT met)",
    ]
    lines = bench_convert.findings({
        "fastwds convert, 1 worker": summary(2100),
        "fastwds convert, 4 workers": None,
        "fastwds convert --verify-images full, 4 workers": summary(1000, mb=90.0),
        bench_convert.DECODE: summary(500, mb=50.0),
    }, ["default", "full"], [1, 4])
    assert lines[0] == "scaling: 1 worker 2,100/s, 4 workers FAILED"
    assert lines[1] == "targets: no ratios, fastwds convert, 4 workers failed"
    assert lines[2].startswith("full verify: fastwds convert --verify-images full, 4 workers at 90.0 MB/s is "
                               "1.80x the one-core Pillow decode rate of 50.0 MB/s (target >= 1.9x: NOT met)")
    # When fastwds' default worker count was measured, the targets speak of it: what users get.
    monkeypatch.setattr(bench_convert, "default_workers", lambda decoding=False: 1)
    lines = bench_convert.findings({
        "fastwds convert, 1 worker": summary(2100, x_floor=0.91, x_peer=3.0),
        "fastwds convert, 2 workers": summary(1900, x_floor=0.8, x_peer=2.6),
    }, ["default"], [1, 2])
    assert lines[1] == ("targets: fastwds convert, 1 worker is 0.91x the floor (target >= 0.9x: met) and "
                        "3.00x the peer (target >= 3.0x: met)")
    # Each kind of input has its own targets.
    lines = bench_convert.findings({"fastwds convert, 1 worker": summary(50, x_floor=0.85, x_peer=2.0)},
                                   ["default"], [1], kind="npz")
    assert lines[1] == ("targets: fastwds convert, 1 worker is 0.85x the floor (target >= 0.9x: NOT met) and "
                        "2.00x the peer (target >= 1.8x: met)")


FINDINGS_RUNNERS = '''
def constant(args, out_dir, clock):
    with clock:
        pass
    return {"samples": args["samples"], "bytes": 1000, "outputs": None}
'''


def test_harness_prints_findings_and_hands_over_the_report(tmp_path, monkeypatch):
    (tmp_path / "findings_runners.py").write_text(textwrap.dedent(FINDINGS_RUNNERS))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    seen = []
    suite = harness.Suite(
        name="test", description="findings", floor="a", peer="b",
        runners=[harness.Runner("a", "findings_runners:constant", {"samples": 10}),
                 harness.Runner("b", "findings_runners:constant", {"samples": 20})],
        findings=lambda summaries: [f"runners: {', '.join(sorted(summaries))}",
                                    f"b has a ratio to the floor: {summaries['b']['x_floor'] > 0}"],
    )
    out = io.StringIO()
    assert harness.run_suite(suite, repeat=1, json_path=tmp_path / "r.json", out=out, on_report=seen.append) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert seen == [report]
    assert report["findings"] == ["runners: a, b", "b has a ratio to the floor: True"]
    assert out.getvalue().endswith("\n\nrunners: a, b\nb has a ratio to the floor: True\n")


def check_runners(report: dict, names: list[str], payload: int) -> dict:
    """Every runner ran, with positive rates and the one payload; returns the runners by name."""
    assert [r["name"] for r in report["runners"]] == names
    for runner in report["runners"]:
        assert runner["status"] == "ok", runner["message"]
        summary = runner["summary"]
        assert summary["samples_per_s"] > 0 and summary["mb_per_s"] > 0
        assert {run["bytes"] for run in runner["runs"]} == {payload}
    return {r["name"]: r for r in report["runners"]}


@pytest.mark.slow
def test_sft_input_sampled_with_limit(tmp_path):
    pytest.importorskip("webdataset")
    dataset = make_image_dataset(tmp_path / "sft")
    # The first 20 rows of data.json: the 12 valid ones, then 8 rejected for their own reasons.
    first = dataset.expected[:20]
    valid = [e for e in first if e.reason is None]
    payload = sum(len(dataset.files[name]) for e in first if e.reason is None for name in e.media)
    # Rejected rows name media too (a missing file counts 0 bytes, a cut one its size).
    payload += sum(len(dataset.files["a.jpg"]) for e in first
                   if e.id in ("too-few", "video-token", "late-system", "bad-role"))
    payload += len(dataset.files["cut.jpg"])
    completed = bench(str(tmp_path / "sft" / "data.json"), "--limit", "20", "--repeat", "1", "--workers", "1",
                      "--modes", "default,full", "--report", "out.json", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["params"]["kind"] == "sft" and report["params"]["rows"] == 20
    assert report["params"]["payload_bytes"] == payload
    by_name = check_runners(report, ["fastwds convert, 1 worker", "fastwds convert --verify-images full, 1 worker",
                                     bench_convert.KIND_PEER["sft"], bench_convert.KIND_FLOOR["sft"],
                                     bench_convert.DECODE], payload)
    for name in ("fastwds convert, 1 worker", "fastwds convert --verify-images full, 1 worker"):
        assert {run["samples"] for run in by_name[name]["runs"]} == {len(valid)}
    assert {run["samples"] for run in by_name[bench_convert.KIND_PEER["sft"]]["runs"]} == {20}
    assert {run["samples"] for run in by_name[bench_convert.KIND_FLOOR["sft"]]["runs"]} == {20}
    assert "the first 20 rows of" in completed.stdout
    summary = by_name["fastwds convert, 1 worker"]["summary"]
    targets = (f"targets: fastwds convert, 1 worker is {summary['x_floor']:.2f}x the floor (target >= 0.8x: "
               f"{'met' if summary['x_floor'] >= 0.8 else 'NOT met'}) and {summary['x_peer']:.2f}x the peer "
               f"(target >= 3.0x: {'met' if summary['x_peer'] >= 3.0 else 'NOT met'})")
    assert targets in completed.stdout.splitlines()


@pytest.mark.slow
def test_npz_input_sampled_with_limit(tmp_path):
    pytest.importorskip("webdataset")
    dataset = make_npz_dataset(tmp_path, defects=False)
    first = sorted(dataset.files.values())[:5]  # fastwds' order: relative paths, sorted
    payload = sum((dataset.root / relative).stat().st_size for relative in first)
    completed = bench(str(dataset.root), "--limit", "5", "--repeat", "1", "--workers", "1",
                      "--report", "out.json", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["params"]["kind"] == "npz" and report["params"]["rows"] == 5
    assert report["params"]["payload_bytes"] == payload
    by_name = check_runners(report, ["fastwds convert, 1 worker", bench_convert.KIND_PEER["npz"],
                                     bench_convert.KIND_FLOOR["npz"]], payload)
    for runs in by_name.values():
        assert {run["samples"] for run in runs["runs"]} == {5}
    assert "the first 5 volumes of" in completed.stdout and "(target >= 1.8x: " in completed.stdout


def test_npz_input_refuses_image_modes(tmp_path):
    dataset = make_npz_dataset(tmp_path, defects=False)
    completed = bench(str(dataset.root), "--modes", "default,reencode", cwd=tmp_path)
    assert completed.returncode == 1 and completed.stdout == ""
    assert completed.stderr == ("fastwds: error: --modes default,reencode: NPZ input has no images to verify "
                                "or re-encode; only the default mode applies\n")


def test_unknown_input_kind_is_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    completed = bench("notes.txt", cwd=tmp_path)
    assert completed.returncode == 1 and completed.stdout == ""
    assert completed.stderr == ("fastwds: error: notes.txt: bench convert reads a folder of parquet files, "
                                "a folder of .npz volumes or an SFT .json/.jsonl file\n")
