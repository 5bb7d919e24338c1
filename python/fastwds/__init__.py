"""fastwds: turn ML training data into validated, deterministic WebDataset shards, fast.

The public names load on first use (``fastwds.ShardWriter`` imports the writer, numpy and the
Rust core then), so that ``fastwds --help`` and Ctrl-C at start-up are instant."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "DecodeError": "fastwds.errors",
    "DuplicateKeyError": "fastwds.errors",
    "FastwdsError": "fastwds.errors",
    "InputChangedError": "fastwds.errors",
    "InvalidInputError": "fastwds.errors",
    "NothingWrittenError": "fastwds.errors",
    "ResumeMismatchError": "fastwds.errors",
    "SampleError": "fastwds.errors",
    "ShardBusyError": "fastwds.errors",
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

# Submodules the documentation names, reachable as ``fastwds.hf`` etc. after ``import fastwds``.
_SUBMODULES = frozenset(("decode", "energon_types", "errors", "hf", "indexes", "reader", "writer"))

__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:  # the real names for type checkers; at run time they load on first use
    from fastwds import decode as decode, energon_types as energon_types, errors as errors, hf as hf
    from fastwds import indexes as indexes, reader as reader, writer as writer
    from fastwds._core import ShardRecord as ShardRecord, __version__ as __version__
    from fastwds._core import portable_key as portable_key
    from fastwds.errors import DecodeError as DecodeError, DuplicateKeyError as DuplicateKeyError
    from fastwds.errors import FastwdsError as FastwdsError, InputChangedError as InputChangedError
    from fastwds.errors import InvalidInputError as InvalidInputError
    from fastwds.errors import NothingWrittenError as NothingWrittenError
    from fastwds.errors import ResumeMismatchError as ResumeMismatchError, SampleError as SampleError
    from fastwds.errors import ShardBusyError as ShardBusyError
    from fastwds.errors import ShardFormatError as ShardFormatError, ShardPatternError as ShardPatternError
    from fastwds.errors import UnsafeMemberError as UnsafeMemberError, WriterClosedError as WriterClosedError
    from fastwds.indexes import write_wids_index as write_wids_index
    from fastwds.reader import WebDataset as WebDataset, make_loader as make_loader
    from fastwds.writer import ShardWriter as ShardWriter
else:  # hidden from type checkers, so that ``fastwds.NoSuchThing`` is an error there too
    def __getattr__(name: str) -> Any:
        if name in _SUBMODULES:
            return importlib.import_module(f"fastwds.{name}")  # the import sets it on this module
        if name not in _PUBLIC:
            raise AttributeError(f"module 'fastwds' has no attribute {name!r}")
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC) | _SUBMODULES)
