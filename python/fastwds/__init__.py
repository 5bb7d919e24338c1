"""fastwds: turn ML training data into validated, deterministic WebDataset shards, fast.

The public names load on first use (``fastwds.ShardWriter`` imports the writer, numpy and the
Rust core then), so that ``fastwds --help`` and Ctrl-C at start-up are instant."""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "DecodeError": "fastwds.errors",
    "DuplicateKeyError": "fastwds.errors",
    "FastwdsError": "fastwds.errors",
    "InputChangedError": "fastwds.errors",
    "InvalidInputError": "fastwds.errors",
    "NothingWrittenError": "fastwds.errors",
    "ResumeMismatchError": "fastwds.errors",
    "SampleError": "fastwds.errors",
    "ShardFormatError": "fastwds.errors",
    "ShardPatternError": "fastwds.errors",
    "UnsafeMemberError": "fastwds.errors",
    "WriterClosedError": "fastwds.errors",
    "ShardRecord": "fastwds._core",
    "__version__": "fastwds._core",
    "portable_key": "fastwds._core",
    "ShardWriter": "fastwds.writer",
    "WebDataset": "fastwds.reader",
    "make_loader": "fastwds.reader",
    "write_wids_index": "fastwds.indexes",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'fastwds' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
