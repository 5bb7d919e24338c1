"""Exceptions fastwds raises. I/O problems are plain ``OSError`` subclasses with errno and path."""

from fastwds._core import DuplicateKeyError, SampleError, ShardPatternError, WriterClosedError


class FastwdsError(Exception):
    """Base of the errors fastwds raises about input data and options (not about samples)."""


class InvalidInputError(FastwdsError, ValueError):
    """The input cannot be converted as given (missing column, no files, bad option, ...)."""


class ResumeMismatchError(FastwdsError):
    """``--resume`` was asked for, but the input or the options differ from the interrupted run."""


class InvalidSamplesError(FastwdsError):
    """``on_invalid="fail"`` and a sample failed validation."""


__all__ = [
    "DuplicateKeyError",
    "FastwdsError",
    "InvalidInputError",
    "InvalidSamplesError",
    "ResumeMismatchError",
    "SampleError",
    "ShardPatternError",
    "WriterClosedError",
]
