"""pillow-simd, the faster Pillow build the design names: the same rejects and the same shards as
Pillow, and ``fastwds bench convert --pillow-python`` measures the two builds in one run.

pillow-simd installs the same ``PIL`` package as Pillow, so it lives in a venv of its own:
``.ci/run`` builds it there (from source, against libjpeg-turbo) and names its interpreter in
FASTWDS_PILLOW_SIMD_PYTHON. Without that variable the comparison has nothing to run against.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastwds
from fastwds.synthetic import generate
from tests.conftest import run_cli

SIMD_PYTHON = os.environ.get("FASTWDS_PILLOW_SIMD_PYTHON")
needs_simd = pytest.mark.skipif(not SIMD_PYTHON, reason="FASTWDS_PILLOW_SIMD_PYTHON is not set (.ci/run builds "
                                                          "pillow-simd in .venv-simd and sets it)")


def convert_with(python: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([python, "-m", "fastwds", "convert", "parquet", *args, "--no-progress"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


def outcome(out: Path, data: Path) -> tuple[list, list]:
    """The rejects (id, reason, detail) and each shard's sha256, from the run's own records."""
    rejects = sorted((r["id"], r["reason"], r["detail"].replace(str(data), "DATA"))
                     for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines()))
    manifest = json.loads((out / "manifest.json").read_text())
    return rejects, sorted((shard["name"], shard["sha256"]) for shard in manifest["shards"])


@needs_simd
def test_the_simd_interpreter_has_pillow_simd_not_pillow():
    probe = "import importlib.metadata as m; print(m.version('pillow-simd')); import PIL; print(PIL.__version__)"
    lines = subprocess.run([SIMD_PYTHON, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert lines[0] == lines[1] and ".post" in lines[0]  # pillow-simd's versions are Pillow's plus .postN


@needs_simd
def test_pillow_simd_rejects_and_writes_what_pillow_does(tmp_path):
    data = tmp_path / "data"
    dataset = generate(data, rows=240, broken_share=0.1, multi_image_share=0.1, seed=5)
    assert dataset.broken  # planted corrupt and truncated images, for both builds to find
    results = {}
    for name, python in (("pillow", sys.executable), ("simd", SIMD_PYTHON)):
        out = tmp_path / name
        convert_with(python, str(data), str(out), "--verify-images", "full", "--num-workers", "1")
        results[name] = outcome(out, data)
    assert results["simd"] == results["pillow"]  # same rejects, byte-identical shards
    assert len(results["pillow"][0]) >= len(dataset.broken)

    # Re-encoding: the JPEG bytes depend on the JPEG library build; which samples, images and
    # sizes are written must not.
    written = {}
    for name, python in (("pillow", sys.executable), ("simd", SIMD_PYTHON)):
        out = tmp_path / f"{name}-small"
        convert_with(python, str(data), str(out), "--reencode", "jpeg", "--max-side", "24", "--num-workers", "1")
        documents = [(sample["__key__"], sample["json"]["images"]) for sample in fastwds.WebDataset(out)]
        written[name] = (outcome(out, data)[0], documents)
    assert written["simd"] == written["pillow"]


@needs_simd
def test_bench_measures_both_builds_in_one_run(tmp_path):
    report = tmp_path / "report.json"
    result = run_cli("bench", "convert", "--rows", "200", "--modes", "full,resize", "--repeat", "1",
                     "--pillow-python", SIMD_PYTHON, "--dir", str(tmp_path), "--report", str(report))
    runners = {r["name"]: r for r in json.loads(report.read_text())["runners"]}
    twins = [name for name in runners if "[pillow-simd" in name]
    assert len(twins) == 3, list(runners)  # full verify, resize and the one-core decode, under pillow-simd
    assert all(runners[name]["summary"] is not None for name in twins)
    line = next(line for line in result.stdout.splitlines() if line.startswith("pillow-simd "))
    assert " against Pillow " in line and line.count("x;") == 2 and "FAILED" not in line


def test_a_pillow_python_that_cannot_run_the_bench_is_a_usage_error(tmp_path):
    missing = run_cli("bench", "convert", "--modes", "full", "--pillow-python", str(tmp_path / "nope"), check=False)
    assert missing.returncode == 2 and "--pillow-python" in missing.stderr and "Traceback" not in missing.stderr
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = str(tmp_path / "bare" / "bin" / "python")  # a Python without fastwds
    no_fastwds = run_cli("bench", "convert", "--modes", "full", "--pillow-python", bare, check=False)
    assert no_fastwds.returncode == 2 and "cannot import fastwds" in no_fastwds.stderr
    no_image_mode = run_cli("bench", "convert", "--pillow-python", sys.executable, check=False)
    assert no_image_mode.returncode == 2 and "--modes full" in no_image_mode.stderr
