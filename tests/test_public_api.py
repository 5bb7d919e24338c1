"""The public surface of ``import fastwds`` as a user meets it: the errors the reader raises are
importable from ``fastwds`` and ``fastwds.errors``, the documented submodules are reachable as
attributes, and type checkers see the real types (mypy runs when it is installed)."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fastwds
import fastwds.errors
import fastwds.tar.format
import pytest


@pytest.mark.parametrize("name", ["ShardFormatError", "UnsafeMemberError"])
def test_reader_errors_are_public_and_the_same_classes(name):
    cls = getattr(fastwds, name)
    assert cls is getattr(fastwds.errors, name) is getattr(fastwds.tar.format, name)
    assert name in fastwds.__all__ and name in fastwds.errors.__all__
    assert issubclass(cls, fastwds.FastwdsError) and issubclass(cls, ValueError)


def test_every_exception_fastwds_raises_is_in_fastwds_errors():
    """The README promises every error class in fastwds.errors (and at the top level)."""
    import fastwds._core

    raised = [name for name in dir(fastwds._core) if name.endswith("Error")]
    assert raised and all(name in fastwds.errors.__all__ and getattr(fastwds, name) is getattr(fastwds._core, name)
                          for name in raised), raised


def test_what_the_reader_raises_is_caught_by_the_public_names(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(fastwds.ShardFormatError, match="junk.tar"):
        list(fastwds.WebDataset(str(tmp_path / "junk.tar")))
    with pytest.raises(fastwds.errors.UnsafeMemberError, match="points outside the archive"):
        fastwds.tar.format.check_member_path("../x.npy", "s.tar")


def test_documented_submodules_are_reachable_after_import_fastwds():
    """The README's ``import fastwds; fastwds.hf.features(folder)``, in a fresh interpreter (this
    one may have imported fastwds.hf already); still without importing torch."""
    code = ("import sys, fastwds\n"
            "assert 'fastwds.hf' not in sys.modules\n"
            "assert callable(fastwds.hf.features) and fastwds.hf is sys.modules['fastwds.hf']\n"
            "assert fastwds.errors.DecodeError is fastwds.DecodeError and callable(fastwds.decode.decode_sample)\n"
            "assert {'hf', 'errors', 'reader', 'writer'} <= set(dir(fastwds))\n"
            "try:\n    fastwds.no_such_thing\nexcept AttributeError as error:\n    print(error)\n"
            "print('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["module 'fastwds' has no attribute 'no_such_thing'", "False"]


def test_every_public_name_is_visible_to_type_checkers():
    """Each name ``fastwds`` exposes lazily is also imported under ``if TYPE_CHECKING:`` (else
    mypy and pyright see ``Any``), and the lazy ``__getattr__`` is hidden from them."""
    tree = ast.parse(Path(fastwds.__file__).read_text(encoding="utf-8"))
    [block] = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    imported = {alias.asname or alias.name for node in block.body for alias in node.names}
    assert imported == set(fastwds._PUBLIC) | fastwds._SUBMODULES
    assert all(alias.asname == alias.name for node in block.body for alias in node.names)  # explicit re-exports
    assert not any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body)
    assert [node.name for node in block.orelse] == ["__getattr__"]


def test_mypy_sees_the_real_types(tmp_path):
    mypy = shutil.which("mypy") or os.environ.get("FASTWDS_MYPY")
    if mypy is None and importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (set FASTWDS_MYPY to a mypy executable)")
    command = [mypy] if mypy else [sys.executable, "-m", "mypy"]
    script = tmp_path / "user.py"
    script.write_text("import fastwds\n"
                      "reveal_type(fastwds.WebDataset)\n"
                      "reveal_type(fastwds.hf.features)\n"
                      "fastwds.ShardWriter('x-%06d.tar', maxcount='oops')\n"
                      "fastwds.NoSuchThing\n")
    result = subprocess.run([*command, "--python-executable", sys.executable, "--no-incremental",
                             "--cache-dir", os.devnull, str(script)], capture_output=True, text=True)
    lines = result.stdout.splitlines()
    assert "-> fastwds.reader.WebDataset" in lines[0], result.stdout
    assert "on_decode_error: Literal['raise'] | Literal['skip']" in lines[0], result.stdout
    assert '"def (location: str) -> ' in lines[1], result.stdout
    assert '"maxcount" to "ShardWriter" has incompatible type "str"; expected "int"' in lines[2], result.stdout
    assert 'Module has no attribute "NoSuchThing"' in lines[3], result.stdout
    assert len(lines) == 5 and "Found 2 errors" in lines[4], result.stdout


def test_help_on_the_reader_stands_on_its_own():
    """``help(fastwds.WebDataset)`` explains every parameter, rather than pointing elsewhere."""
    doc = fastwds.WebDataset.__doc__
    assert "see the module docstring" not in doc
    parameters = [p for p in inspect.signature(fastwds.WebDataset).parameters if p != "self"]
    assert [p for p in parameters if f"``{p}``" not in doc] == []
    assert "set_epoch" in doc and "DecodeError" in doc
