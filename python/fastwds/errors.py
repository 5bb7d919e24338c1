"""Exceptions fastwds raises. I/O problems are plain ``OSError`` subclasses with errno and path.

Reading (``fastwds.WebDataset``): ``ShardFormatError`` for a shard that is not a readable tar,
``UnsafeMemberError`` (a ``ShardFormatError``) for a member path that escapes the archive, and
``DecodeError`` (a ``ShardFormatError``) for a member whose content its decoder refuses."""

from __future__ import annotations

from fastwds._core import DuplicateKeyError, SampleError, ShardBusyError, ShardPatternError, WriterClosedError


class FastwdsError(Exception):
    """Base of the errors fastwds raises about input data and options (not about samples)."""


class ShardFormatError(FastwdsError, ValueError):
    """A shard is not a tar archive fastwds can read (bad header, cut short, duplicate member)."""


class UnsafeMemberError(ShardFormatError):
    """A member's path is absolute or climbs out of the archive with ``..``."""


class DecodeError(ShardFormatError):
    """A member of a sample could not be decoded (a broken image, invalid JSON, a bad ``.npy``, a
    corrupt ``.zst``/``.gz``, or a custom decoder that raised). ``shard``, ``key`` and ``member``
    (the extension, e.g. ``"jpg"``) name it; the decoder's own exception is ``__cause__``."""

    def __init__(self, message: str, shard: str | None = None, key: str | None = None,
                 member: str | None = None) -> None:
        super().__init__(message)
        self.shard = shard
        self.key = key
        self.member = member

    def __reduce__(self):  # survives pickling (multiprocessing, DataLoader workers) with its fields
        return type(self), (str(self), self.shard, self.key, self.member)


class InvalidInputError(FastwdsError, ValueError):
    """The input cannot be converted as given (missing column, no files, bad option, ...)."""


class UsageError(FastwdsError):
    """The command line itself is wrong (a missing argument, a bad combination): exit status 2."""


class ResumeMismatchError(FastwdsError):
    """``--resume`` was asked for, but the input or the options differ from the interrupted run."""


class InputChangedError(FastwdsError):
    """An input file changed while it was being converted: its shards may mix old and new rows,
    so the run does not finish (no manifest); a rerun needs ``--overwrite``."""


class InvalidSamplesError(FastwdsError):
    """``on_invalid="fail"`` and a sample failed validation."""


class NothingWrittenError(FastwdsError):
    """Every input row was rejected: the run wrote its rejects and manifest, but no shard.
    ``manifest`` is the run's manifest."""

    def __init__(self, message: str, manifest: dict) -> None:
        super().__init__(message)
        self.manifest = manifest


__all__ = [
    "DecodeError",
    "DuplicateKeyError",
    "FastwdsError",
    "InputChangedError",
    "InvalidInputError",
    "InvalidSamplesError",
    "NothingWrittenError",
    "ResumeMismatchError",
    "SampleError",
    "ShardBusyError",
    "ShardFormatError",
    "ShardPatternError",
    "UnsafeMemberError",
    "UsageError",
    "WriterClosedError",
]
