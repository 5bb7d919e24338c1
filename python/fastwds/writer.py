"""``ShardWriter``: a drop-in for ``webdataset.ShardWriter`` that writes portable, deterministic,
crash-safe shards through the Rust core."""

from __future__ import annotations

import io
import json
import math
import os
import re
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fastwds import _core

DEFAULT_MAXCOUNT = 100_000
DEFAULT_MAXSIZE = 3_000_000_000
# The largest mtime a ustar header holds (11 octal digits).
MAX_MTIME = 8**11 - 1
_MAX_INDEX = 2**63 - 1


def encode_value(ext: str, value: Any, sample_id: str | None = None) -> bytes:
    """Turn one sample value into member bytes the way webdataset's writer does for the common
    types: bytes pass through (under any extension), ``str`` is UTF-8, numbers are their decimal
    text, dicts/lists are JSON (strict: no NaN/Infinity) and arrays ``.npy``. The last two only
    under an extension saying so (``json``, ``npy``, or ``<name>.json`` / ``<name>.npy``): an
    array under ``jpg`` would be .npy bytes in a .jpg member, so it raises ``SampleError``."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    kind = ext.rsplit(".", 1)[-1].lower()
    if isinstance(value, np.ndarray):
        if kind != "npy":
            raise _sample_error(sample_id, f"member {ext!r} is a numpy array, which fastwds writes as .npy bytes "
                                           "only under an 'npy' extension; name the member 'npy' (or '<name>.npy'), or "
                                           "pass the bytes of the format its extension says")
        if value.dtype.hasobject:
            raise _sample_error(sample_id, f"member {ext!r} is an object array; "
                                           "fastwds never pickles (readers would have to unpickle it)")
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return buffer.getvalue()
    if isinstance(value, (dict, list, tuple)):
        if kind != "json":
            raise _sample_error(sample_id, f"member {ext!r} is a {type(value).__name__}, which fastwds writes as "
                                           "JSON only under a 'json' extension; name the member 'json' (or "
                                           "'<name>.json'), or pass the bytes of the format its extension says")
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as error:  # a numpy scalar, a tuple key, NaN ...
            raise _sample_error(sample_id, f"member {ext!r} cannot be written as JSON: {error}") from error
        return text.encode("utf-8")
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        return str(value).encode("ascii")
    kind_name = type(value).__qualname__ if type(value).__module__ == "builtins" else \
        f"{type(value).__module__}.{type(value).__qualname__}"
    raise _sample_error(sample_id, f"cannot encode member {ext!r} of type {kind_name}; "
                                   "pass bytes, str, dict/list, number or ndarray")


def _sample_error(sample_id: str | None, message: str) -> _core.SampleError:
    error = _core.SampleError(f"sample {sample_id!r}: {message}" if sample_id is not None else message)
    error.sample_id = sample_id
    return error


def _sample_id(value: Any) -> str:
    """A sample's ``__key__`` as the id it is written under: ``str``, UTF-8 ``bytes`` (pyarrow and
    HF ids often are) or an integer. Anything else is refused rather than written as its repr
    (``None`` became the key "None", ``b"img"`` the key "b_img_...")."""
    if isinstance(value, str):
        return value if type(value) is str else str(value)  # numpy.str_ and other subclasses
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _sample_error(None, f"sample key {bytes(value)!r} is not UTF-8 text") from None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    raise _sample_error(None, f"sample key {value!r} ({type(value).__name__}) is refused; "
                              "a __key__ must be a str, UTF-8 bytes or an int")


def _argument(name: str, value: Any, minimum: int, maximum: int, *, real: bool = False) -> int:
    """An integer argument in [minimum, maximum]; ``real`` also takes a whole float (3e9)."""
    number = value
    if real and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or not minimum <= number <= maximum:
        bound = f"at least {minimum:,}" if maximum == _MAX_INDEX else f"from {minimum:,} to {maximum:,}"
        raise ValueError(f"ShardWriter: {name} must be a whole number {bound}, not {value!r}")
    return int(number)


def _column_values(ext: str, column: Any, ids: Sequence[str]) -> list:
    """A column as a list of bytes / ``(BinaryColumn, index)`` references / None. pyarrow binary
    arrays are read in place by the Rust writer; other pyarrow / polars columns convert in C."""
    if isinstance(column, (str, bytes, bytearray, memoryview, Mapping)):
        # A str is a sequence of characters: "hi" would write one character per sample.
        raise TypeError(f"write_batch: column {ext!r} is one {type(column).__name__}, not one value per id; "
                        f"pass a list (e.g. [value] * len(ids)) or a pyarrow/polars column")
    if type(column).__module__.startswith("pyarrow"):
        import pyarrow as pa

        from fastwds.arrow import binary_column

        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            values = binary_column(column)
            return [(values, i) for i in range(len(values))]
    if hasattr(column, "to_pylist"):
        column = column.to_pylist()
    return [v if v is None or _is_reference(v) else encode_value(ext, v, ids[i]) for i, v in enumerate(column)]


def _is_reference(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], _core.BinaryColumn)


def _shards_after(pattern: str, last: int) -> list[str]:
    """Names of the shards of ``pattern`` in its folder numbered after ``last``, by number."""
    numbered = re.fullmatch(r"(.*)%(0\d+)?d([^/%]*)", pattern)
    if numbered:
        prefix, width, suffix = numbered.group(1), int(numbered.group(2) or 0), numbered.group(3)
        folder, head = os.path.split(prefix)
        name = re.compile(re.escape(head) + r"(\d+)" + re.escape(suffix))
        spell = lambda i: f"{head}{i:0{width}d}{suffix}"  # noqa: E731
    else:  # "task-7.tar": more shards are "task-7-1.tar", "task-7-2.tar", ...
        folder, head = os.path.split(pattern[:-len(".tar")])
        name = re.compile(re.escape(head) + r"-(\d+)\.tar")
        spell = lambda i: f"{head}-{i}.tar"  # noqa: E731
    found = []
    for entry in os.listdir(folder or "."):
        match = name.fullmatch(entry)
        if match and int(match.group(1)) > last and spell(int(match.group(1))) == entry:
            found.append((int(match.group(1)), entry))
    return [entry for _, entry in sorted(found)]


class ShardWriter:
    """Write samples into shards named by ``pattern`` (``"out/shard-%06d.tar"``).

    A new shard starts after ``maxcount`` samples, or before a sample that would push the shard
    file past ``maxsize`` bytes. Each shard is written under ``<name>.partial`` and renamed when
    complete; ``close()`` returns the ``ShardRecord`` of every shard (name, samples, size,
    sha256, offsets). Leaving a ``with`` block through an exception drops the unfinished shard;
    so does a writer that is never closed, with a ``RuntimeWarning`` when it is garbage-collected.

    One writer may be shared by threads: its calls are serialised (one at a time, in the order
    they take its lock). Two writers must not share a pattern: the second one to reach a shard
    another live writer is writing raises ``fastwds.ShardBusyError`` (a ``BlockingIOError``).

    A sample larger than ``maxsize`` alone gets a shard of its own and a ``UserWarning`` at
    ``close()``; ``warn_oversized=False`` leaves reporting it to the caller (``record.oversized``).
    """

    def __init__(
        self,
        pattern: str | os.PathLike[str],
        maxcount: int = DEFAULT_MAXCOUNT,
        maxsize: float = DEFAULT_MAXSIZE,
        *,
        start_shard: int = 0,
        mtime: int = 0,
        fsync: bool = True,
        overwrite: bool = False,
        energon_index: bool = False,
        dali_index: bool = False,
        verbose: int = 0,
        warn_oversized: bool = True,
    ) -> None:
        pattern = os.fsdecode(os.fspath(pattern))
        self.pattern = pattern
        self.verbose = verbose
        self._warn_oversized = warn_oversized  # off for fastwds convert, which reports them itself
        self._overwrite = bool(overwrite)
        self._sink = _core.ShardSink(
            pattern,
            maxcount=_argument("maxcount", maxcount, 1, _MAX_INDEX),
            maxsize=_argument("maxsize", maxsize, 1, _MAX_INDEX, real=True),
            mtime=_argument("mtime", mtime, 0, MAX_MTIME),
            fsync=fsync,
            overwrite=overwrite,
            start_index=_argument("start_shard", start_shard, 0, _MAX_INDEX),
            energon_index=energon_index,
            dali_index=dali_index,
        )
        self.records: list[_core.ShardRecord] | None = None
        # The Rust sink releases the GIL while it writes: a second thread calling in meanwhile
        # would hit PyO3's "Already borrowed". Calls wait for each other instead.
        self._lock = threading.Lock()

    def write(self, sample: Mapping[str, Any]) -> str:
        """Write one ``{"__key__": id, ext: value, ...}`` sample; returns the key written.

        Entries whose name starts with ``_`` (``__url__``, ...) are metadata and skipped, as in
        webdataset. Values: see ``encode_value``.
        """
        if not isinstance(sample, Mapping):
            raise TypeError(f"ShardWriter.write takes one sample as a mapping ({{'__key__': id, ext: value}}), "
                            f"not a {type(sample).__name__}")
        try:
            sample_id = sample["__key__"]
        except KeyError:
            raise _sample_error(None, "sample has no '__key__'") from None
        sample_id = _sample_id(sample_id)
        for ext in sample:
            if not isinstance(ext, str):
                raise _sample_error(sample_id, f"member name {ext!r} is not a str extension ({type(ext).__name__})")
        members = [(ext, encode_value(ext, value, sample_id))
                   for ext, value in sample.items() if not ext.startswith("_") and value is not None]
        with self._lock:
            return self._sink.write(sample_id, members)

    def write_batch(self, ids: Sequence[Any], columns: Mapping[str, Any]) -> int:
        """Write ``len(ids)`` samples given column by column: ``columns[ext]`` holds one value
        per id (a list, or a pyarrow/polars column); ``None`` leaves that member out. pyarrow
        binary columns are written straight from Arrow memory, without copies into Python.
        Ids are ``str``, UTF-8 ``bytes`` or ints, as ``__key__`` in ``write``.

        All or nothing: every sample is encoded and checked (values, extensions, keys, keys
        already written or repeated in the batch) before any is written, so if one is bad the
        ``SampleError`` names it and none of the batch is written; fix it and write the batch
        again. An I/O error part-way fails the writer, as for ``write`` (its open shard is
        dropped). Returns the number of samples written."""
        if hasattr(ids, "to_pylist"):
            ids = ids.to_pylist()
        ids = [i if type(i) is str else _sample_id(i) for i in ids]
        prepared = [(ext, _column_values(ext, column, ids)) for ext, column in columns.items()]
        with self._lock:
            return self._sink.write_batch(ids, prepared)

    def next_shard(self) -> None:
        """Finish the current shard now; the next sample starts a new one."""
        with self._lock:
            self._sink.finish_shard()

    def close(self) -> list[_core.ShardRecord]:
        """Finish the open shard and return the records of every shard written."""
        with self._lock:
            if self.records is None:
                self.records = self._sink.close()
                self._warn_about(self.records)
                if self._overwrite and self.records:
                    self._warn_about_stale_shards(max(r.index for r in self.records))
        return self.records

    def _warn_about(self, records: list[_core.ShardRecord]) -> None:
        for record in records:
            if record.oversized and self._warn_oversized:
                warnings.warn(f"{record.path}: one sample alone is larger than maxsize; "
                              "it was written to its own shard", stacklevel=3)
            if self.verbose:
                print(f"# wrote {record.path}: {record.num_samples} samples, {record.size} bytes")

    def _warn_about_stale_shards(self, last: int) -> None:
        """overwrite=True replaces the shards this writer writes, and only those: shards of an
        earlier run numbered past the last one written stay, and a glob of the pattern would
        mix them in. Say so, naming them."""
        try:
            stale = _shards_after(self.pattern, last)
        except OSError:
            return
        if stale:
            names = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
            warnings.warn(f"{self.pattern}: overwrite=True replaced this run's shards, but {len(stale)} "
                          f"higher-numbered shard(s) of an earlier run are still there ({names}); a glob of "
                          "the pattern would mix them in: remove them if they are not part of this output",
                          RuntimeWarning, stacklevel=3)

    def abort(self) -> None:
        """Drop the unfinished shard (its ``.partial`` file is removed); finished shards stay.
        Raises ``OSError`` if a full shard still finishing in the background could not be made
        durable (its samples are lost); ``close()`` then raises too."""
        with self._lock:
            self._sink.abort()

    def __del__(self) -> None:
        # The Rust sink drops its open shard when it goes (a half-written shard is never left
        # behind), which must not happen silently: webdataset's writer would have kept them.
        sink = getattr(self, "_sink", None)
        if sink is None or self.records is not None:
            return
        try:
            pending = sink.num_open
        except Exception:  # noqa: BLE001 - nothing to report from a finalizer
            return
        if pending:
            warnings.warn(f"ShardWriter({self.pattern!r}) was never closed: the {pending} sample(s) of its open "
                          "shard were discarded (call close(), or write inside a 'with' block)",
                          RuntimeWarning, stacklevel=2)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
