"""The public surface of ``import fastwds`` as a user meets it: the errors the reader raises are
importable from ``fastwds`` and ``fastwds.errors``."""

from __future__ import annotations

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


def test_what_the_reader_raises_is_caught_by_the_public_names(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(fastwds.ShardFormatError, match="junk.tar"):
        list(fastwds.WebDataset(str(tmp_path / "junk.tar")))
    with pytest.raises(fastwds.errors.UnsafeMemberError, match="points outside the archive"):
        fastwds.tar.format.check_member_path("../x.npy", "s.tar")
