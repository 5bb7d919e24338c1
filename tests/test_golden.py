"""Golden outputs: the shipped examples converted by the CLI give exactly the recorded bytes.

Every file the converters write (shards, sidecar indexes, rejects.jsonl, the wids index, Energon's
.nv-meta) must have the sha256 recorded in ``tests/golden/*.json``, and the manifest's stable parts
(shards, totals, reasons, options, source statistics) must be equal. The examples are shipped as
files, so nothing here depends on the image encoder of the machine. A change that alters output
bytes fails here; if the change is intended, regenerate with ``FASTWDS_REGEN_GOLDEN=1 pytest
tests/test_golden.py`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import run_cli

EXAMPLES = Path(__file__).parent.parent / "examples"
GOLDEN = Path(__file__).parent / "golden"
# Manifest parts that must not change; the rest holds paths, mtimes and timings.
STABLE_MANIFEST_KEYS = ("command", "options", "shards", "totals", "invalid_by_reason", "stats", "energon", "indexes")

CASES = {
    "llava": ["convert", "parquet", str(EXAMPLES / "llava"), "{out}"],
    "sft": ["convert", "sft", str(EXAMPLES / "sft" / "train.jsonl"), "{out}"],
    "ct": ["convert", "npz", str(EXAMPLES / "ct" / "data"), "{out}", "--reports", str(EXAMPLES / "ct" / "reports.csv"),
           "--meta", str(EXAMPLES / "ct" / "meta.csv"), "--labels", str(EXAMPLES / "ct" / "labels.csv"),
           "--samples-per-shard", "2"],
}


def normalized(value, root: str):
    """The value with the examples folder's absolute path replaced, so goldens hold on any checkout."""
    return json.loads(json.dumps(value).replace(root, "<examples>"))


def outputs(out: Path) -> dict:
    files = {}
    root = str(EXAMPLES.resolve()).encode()
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out).as_posix()
        if path.is_file() and not relative.startswith(".fastwds/") and relative != "manifest.json":
            data = path.read_bytes()
            if relative == "rejects.jsonl":  # its details name input files by their absolute path
                data = data.replace(root, b"<examples>")
            files[relative] = hashlib.sha256(data).hexdigest()
    manifest = json.loads((out / "manifest.json").read_text())
    stable = {key: manifest[key] for key in STABLE_MANIFEST_KEYS if key in manifest}
    return {"files": files, "manifest": normalized(stable, str(EXAMPLES.resolve()))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_examples_convert_to_the_recorded_bytes(case, tmp_path):
    out = tmp_path / case
    run_cli(*(str(out) if arg == "{out}" else arg for arg in CASES[case]), "--no-progress")
    got = outputs(out)
    golden = GOLDEN / f"{case}.json"
    if os.environ.get("FASTWDS_REGEN_GOLDEN"):
        golden.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    expected = json.loads(golden.read_text())
    assert got["files"] == expected["files"]
    assert got["manifest"] == expected["manifest"]
    assert any(name.endswith(".tar") for name in got["files"])
