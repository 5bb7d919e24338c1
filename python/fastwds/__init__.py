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
from fastwds.reader import WebDataset, make_loader
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
    "WebDataset",
    "WriterClosedError",
    "__version__",
    "make_loader",
    "portable_key",
    "write_wids_index",
]
