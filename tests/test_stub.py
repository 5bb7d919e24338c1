"""The hand-written stub of the Rust extension matches the built module (pydantic-core's check)."""

import subprocess
import sys


def test_core_stub_matches_the_extension():
    result = subprocess.run([sys.executable, "-m", "mypy.stubtest", "fastwds._core"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
