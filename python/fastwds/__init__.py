"""fastwds: turn ML training data into validated, deterministic WebDataset shards, fast."""

from fastwds._core import ShardRecord, __version__, portable_key
from fastwds.errors import (
    DuplicateKeyError,
    FastwdsError,
    InvalidInputError,
    ResumeMismatchError,
    SampleError,
    ShardPatternError,
    WriterClosedError,
)
from fastwds.indexes import write_wids_index
from fastwds.writer import ShardWriter

__all__ = [
    "DuplicateKeyError",
    "FastwdsError",
    "InvalidInputError",
    "ResumeMismatchError",
    "SampleError",
    "ShardPatternError",
    "ShardRecord",
    "ShardWriter",
    "WriterClosedError",
    "__version__",
    "portable_key",
    "write_wids_index",
]
