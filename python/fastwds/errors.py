"""Exceptions fastwds raises. I/O problems are plain ``OSError`` subclasses with errno and path."""

from fastwds._core import DuplicateKeyError, SampleError, ShardPatternError, WriterClosedError


class FastwdsError(Exception):
    """Base of the errors fastwds raises about input data and options (not about samples)."""


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
    "DuplicateKeyError",
    "FastwdsError",
    "InputChangedError",
    "InvalidInputError",
    "InvalidSamplesError",
    "NothingWrittenError",
    "ResumeMismatchError",
    "SampleError",
    "ShardPatternError",
    "UsageError",
    "WriterClosedError",
]
