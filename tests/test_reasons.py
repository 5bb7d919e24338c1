"""Every reason code a source can produce is registered in ``fastwds.reasons``.

Three ways a code could slip through, three checks: codes written in Python where a rejection is
made (``Problem(...)``, ``VolumeReadError(...)``, ``reject(...)``, tuples of plan-time rejections),
codes the Rust image inspector returns, and, at run time, ``Problem`` refusing an unknown code.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from fastwds.reasons import REJECT_REASONS, VERIFY_CODES, Problem, UnregisteredReasonError

PACKAGE = Path(__file__).parent.parent / "python" / "fastwds"
RUST = Path(__file__).parent.parent / "rust"
CODE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$")
# Calls whose first string argument that looks like a code is a reject reason.
REJECTING_CALLS = {"Problem", "VolumeReadError", "reject", "reject_row", "skip"}


def reason_literals() -> dict[str, list[str]]:
    """code -> where it appears, for every code-like string passed where a rejection is made."""
    found: dict[str, list[str]] = {}
    modules = [*PACKAGE.glob("sources/**/*.py"), PACKAGE / "media.py", PACKAGE / "video.py", PACKAGE / "volume.py",
               PACKAGE / "convert" / "plan.py"]
    for path in modules:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            values: list[ast.expr] = []
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in REJECTING_CALLS:
                    values = list(node.args)
            elif isinstance(node, ast.Tuple):  # plan-time rejections: (reason, detail) and CSV rows
                values = list(node.elts)
            elif isinstance(node, ast.Dict):  # tables of codes, e.g. TOKEN_MISMATCH
                values = list(node.values)
            # A conditional code (`"a" if x else "b"`) gives both.
            values = [part for value in values for part in
                      ((value.body, value.orelse) if isinstance(value, ast.IfExp) else (value,))]
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str) and CODE.match(value.value):
                    if not isinstance(node, ast.Tuple) or value.value.endswith(("_row", "_volume", "_id", "_collision")):
                        found.setdefault(value.value, []).append(f"{path.name}:{value.lineno}")
                    if isinstance(node, ast.Tuple):
                        break
    return found


def test_every_code_written_in_the_sources_is_registered():
    literals = reason_literals()
    assert len(literals) >= 20, "the scan found too few codes: it no longer sees the sources' rejections"
    assert {"media_missing", "unreadable_volume", "missing_csv_row", "csv_row_without_volume", "non_finite",
            "float16_overflow", "duplicate_id", "key_collision", "video_token_mismatch"} <= literals.keys()
    unregistered = {code: where for code, where in literals.items() if code not in REJECT_REASONS}
    assert not unregistered


def test_every_code_the_rust_image_inspector_returns_is_registered():
    codes = set(re.findall(r'=> "(image_[a-z_]+)"', (RUST / "media.rs").read_text()))
    assert len(codes) == 5 and codes <= REJECT_REASONS.keys()


def test_an_unregistered_code_fails_loudly():
    with pytest.raises(UnregisteredReasonError, match="not_a_reason"):
        Problem("not_a_reason", "detail")


def test_every_verify_code_has_a_severity_and_meaning():
    assert all(severity in ("error", "warning") and meaning for severity, meaning in VERIFY_CODES.values())
