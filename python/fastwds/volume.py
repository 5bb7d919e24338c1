"""float16 volumes: stream an array out of an ``.npz`` file into float16, chunk by chunk, counting
what float16 cannot hold (NaN, inf, values beyond its range) and measuring the rounding error.

Memory: the float32 data is never held whole. It is read from the zip member in chunks of
``CHUNK_ELEMENTS`` values, each converted into a preallocated float16 array; the chunk and its
error temporaries are a few MB. Encoding the ``.npy`` member then copies the float16 array once
(``npy_member``). So one volume costs about twice its float16 size at the peak.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fastwds import _core, storage

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
ROUNDS_TO_INF = 65520.0  # the smallest magnitude that float16 rounds to inf
CHUNK_ELEMENTS = 1 << 20  # 4 MB of float32 per read
OUTPUT_DTYPE = np.dtype("<f2")


class VolumeReadError(Exception):
    """A volume cannot be read: ``reason`` is a stable code for the rejects file."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class VolumeStats:
    """What the float16 conversion did to one volume. Errors are |float16 - source| over the
    source's finite values (so they include clipping); NaN and inf have no error to measure."""

    shape: list[int]
    source_dtype: str
    fortran_order: bool
    elements: int
    source_min: float | None = None  # over finite values
    source_max: float | None = None
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    overflow: int = 0  # finite values that become inf in float16 (|x| >= 65520)
    clipped: int = 0  # values replaced by clipping: NaN -> 0, +-inf and overflow -> +-65504
    max_abs_error: float | None = None
    rmse: float | None = None
    compared: int = 0  # finite values the errors are measured over

    @property
    def problems(self) -> int:
        return self.nan + self.posinf + self.neginf + self.overflow

    def problem_text(self) -> str:
        parts = [f"{count} {name}" for name, count in
                 (("NaN", self.nan), ("+inf", self.posinf), ("-inf", self.neginf)) if count]
        if self.overflow:
            parts.append(f"{self.overflow} value(s) beyond the float16 range (+-{FLOAT16_MAX:g}); "
                         f"source range [{self.source_min:g}, {self.source_max:g}]")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """As JSON allows it: an infinite error (float64 squares of absurd clipped values) is null."""
        return {name: None if isinstance(value, float) and not math.isfinite(value) else value
                for name, value in asdict(self).items()}


@dataclass
class _Accumulator:
    minimum: float = math.inf
    maximum: float = -math.inf
    max_error: float = 0.0
    squared_error: float = 0.0
    compared: int = 0


def choose_member(archive: zipfile.ZipFile, array: str | None) -> str:
    """The ``.npy`` member holding the volume: ``array`` by name, else the only array."""
    arrays = [n for n in archive.namelist() if n.endswith(".npy")]
    if array is not None:
        if f"{array}.npy" not in arrays:
            raise VolumeReadError("array_not_found", f"no array {array!r} (arrays: "
                                  f"{', '.join(n[:-4] for n in arrays) or 'none'})")
        return f"{array}.npy"
    if len(arrays) != 1:
        raise VolumeReadError("array_not_found", f"{len(arrays)} arrays "
                              f"({', '.join(n[:-4] for n in arrays) or 'none'}); name one with --array")
    return arrays[0]


class DeflatedMember:
    """A deflated zip member read like ``archive.open(name)``: ``read(n)`` gives the next ``n``
    bytes, and damage (a bad CRC-32, a short or long stream) raises ``zipfile.BadZipFile`` once
    the member's last byte has been read. The inflating and the CRC run in Rust without the GIL
    (``fastwds._core.Inflater``), ~1.6x faster than zipfile's path on CT data."""

    READ_SIZE = 1 << 20  # compressed bytes read at a time

    def __init__(self, file: Any, info: zipfile.ZipInfo) -> None:
        # The local header repeats the name and has its own extra field: the data starts after them.
        file.seek(info.header_offset)
        header = file.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"{info.filename}: bad local file header")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        self.file = file
        self.name = info.filename
        self.position = info.header_offset + 30 + name_length + extra_length
        self.compressed_left = info.compress_size
        self.inflater = _core.Inflater(info.CRC, info.file_size)
        self.pending = memoryview(b"")

    def read(self, size: int) -> bytearray:
        out = bytearray(size)
        view = memoryview(out)
        filled = 0
        while filled < size and not self.inflater.finished:
            if not self.pending:
                self._refill()
            try:
                consumed, produced = self.inflater.inflate(self.pending, view[filled:])
            except ValueError as error:
                raise zipfile.BadZipFile(f"{self.name}: {error}") from None
            self.pending = self.pending[consumed:]
            filled += produced
        view.release()
        del out[filled:]
        return out

    def _refill(self) -> None:
        # The archive's file is shared with zipfile: seek before every read, as zipfile does.
        self.file.seek(self.position)
        data = self.file.read(min(self.READ_SIZE, self.compressed_left))
        self.position += len(data)
        self.compressed_left -= len(data)
        self.pending = memoryview(data)  # empty at the end: the inflater then reports a short stream

    def __enter__(self) -> DeflatedMember:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pending = memoryview(b"")


def open_member(archive: zipfile.ZipFile, name: str) -> Any:
    """The member ``name`` to read: deflated ones (``np.savez_compressed``) through
    ``DeflatedMember``, others (stored, encrypted, other methods) through zipfile itself."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_DEFLATED or info.flag_bits & 0x1 or archive.fp is None:
        return archive.open(name)
    return DeflatedMember(archive.fp, info)


def read_npy_header(stream: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise VolumeReadError("unreadable_volume", f"unsupported .npy format version {version}")
    except (ValueError, EOFError) as error:
        raise VolumeReadError("unreadable_volume", f"bad .npy header: {error}") from None
    if dtype.hasobject:
        raise VolumeReadError("not_numeric", "object array: reading it would mean unpickling, which "
                              "fastwds never does")
    if dtype.kind not in "biuf":
        raise VolumeReadError("not_numeric", f"dtype {dtype} cannot become float16")
    return shape, fortran_order, dtype


def npz_to_float16(path: str, array: str | None = None, clip: bool = False) -> tuple[np.ndarray, VolumeStats]:
    """Read the volume in ``path`` (an ``.npz``) as a flat float16 array (in the file's element
    order) and its statistics. With ``clip``, NaN becomes 0 and +-inf and out-of-range values
    become +-65504; without it they become NaN/inf (the caller decides what to do with them).
    Raises ``VolumeReadError`` for files that cannot be read."""
    try:
        with storage.readable(os.fspath(path)) as source, zipfile.ZipFile(source) as archive:
            with open_member(archive, choose_member(archive, array)) as member:
                shape, fortran_order, dtype = read_npy_header(member)
                count = math.prod(shape)
                if count == 0:
                    raise VolumeReadError("empty_volume", f"shape {list(shape)} holds no values")
                stats = VolumeStats(list(shape), dtype.str if dtype.byteorder != "|" else dtype.name,
                                    fortran_order, count)
                out = np.empty(count, OUTPUT_DTYPE)
                _convert_stream(member, dtype, out, stats, clip)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        # Also a bad CRC: zipfile checks it when the member's last byte has been read.
        raise VolumeReadError("unreadable_volume", f"{type(error).__name__}: {error}") from None
    except OSError as error:
        if storage.is_url(os.fspath(path)):
            raise  # the network or the store: retried or failed by the run, never a row's fault
        # A local file that cannot be opened or read (permissions, a symlink loop) is one bad volume.
        raise VolumeReadError("unreadable_volume", error.strerror or str(error)) from None
    return out, stats


def _convert_stream(member: Any, dtype: np.dtype, out: np.ndarray, stats: VolumeStats, clip: bool) -> None:
    # Error arithmetic in float32 is exact enough for float32 and smaller sources (the float16
    # value converts to float32 exactly); wider sources get float64.
    error_dtype = np.result_type(dtype, np.float32)
    totals = _Accumulator()
    position = 0
    while position < out.size:
        n = min(CHUNK_ELEMENTS, out.size - position)
        raw = member.read(n * dtype.itemsize)
        if len(raw) != n * dtype.itemsize:
            raise VolumeReadError("unreadable_volume", f"array data cut short: {position + len(raw) // dtype.itemsize}"
                                  f" of {out.size} values")
        _convert_chunk(np.frombuffer(raw, dtype), out[position:position + n], error_dtype, stats, totals, clip)
        position += n
    member.read(1)  # reach the end of the member, so its CRC is verified
    if totals.minimum <= totals.maximum:  # some finite value was seen
        stats.source_min, stats.source_max = float(totals.minimum), float(totals.maximum)
    if totals.compared:
        stats.max_abs_error = float(totals.max_error)
        stats.rmse = math.sqrt(totals.squared_error / totals.compared)
    stats.compared = totals.compared


FLOAT16_NORMAL_MIN_BITS = 0x38800000  # 2**-14 as float32 bits: float16's smallest normal number
FAST_PIECE = CHUNK_ELEMENTS // 2


def round_to_float16(source: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = source`` for native float32 values float16 holds (|x| < 65520, no NaN), by
    integer arithmetic: round to nearest, ties to even, at float16's 10 mantissa bits. Returns
    the float16 values as float32 (what ``out.astype(np.float32)`` gives), for the error
    statistics. numpy's own casts both ways cost 4.8 ms per million values here (no vector
    instruction for them on this CPU), these integer passes about a third of that; zero and
    float16's subnormals (|x| < 2**-14) go through numpy's cast."""
    bits = source.view(np.uint32)
    rounded = bits >> 13
    rounded &= 1
    rounded += 0xFFF
    rounded += bits  # a carry out of the mantissa moves to the exponent, as rounding should
    rounded &= 0xFFFFE000  # the float32 bits of the value rounded to float16's precision
    scratch = bits & 0x7FFFFFFF
    tiny = scratch < FLOAT16_NORMAL_MIN_BITS
    np.bitwise_and(rounded, 0x7FFFFFFF, out=scratch)
    scratch >>= 13
    scratch -= 112 << 10  # exponent bias 127 -> 15; wraps for tiny values, fixed below
    half = out.view(np.uint16)
    half[...] = bits.view(np.uint16)[1::2]  # the high half of each float32 (little-endian)...
    half &= 0x8000  # ...of which the sign
    np.bitwise_or(half, scratch, out=half, casting="unsafe")  # and the low 16 bits of the rest
    if tiny.any():
        out[tiny] = source[tiny]
        rounded[tiny] = out[tiny].astype(np.float32).view(np.uint32)
    return rounded.view(np.float32)


def _convert_chunk(source: np.ndarray, out: np.ndarray, error_dtype: np.dtype, stats: VolumeStats,
                   totals: _Accumulator, clip: bool) -> None:
    lowest, highest = float(source.min()), float(source.max())  # NaN if there is any NaN
    in_range = -ROUNDS_TO_INF < lowest <= highest < ROUNDS_TO_INF
    if in_range and np.little_endian and source.dtype == np.dtype("<f4"):
        totals.minimum = min(totals.minimum, lowest)
        totals.maximum = max(totals.maximum, highest)
        for start in range(0, source.size, FAST_PIECE):  # pieces: its temporaries stay ~4 MB
            piece = slice(start, start + FAST_PIECE)
            _add_errors(round_to_float16(source[piece], out[piece]), source[piece], totals)
        return
    with np.errstate(over="ignore", invalid="ignore"):
        out[...] = source
    if not in_range:
        # Rare: NaN/inf in the source, or values float16 cannot hold.
        finite = np.isfinite(source)
        stats.nan += int(np.isnan(source).sum())
        stats.posinf += int(np.isposinf(source).sum())
        stats.neginf += int(np.isneginf(source).sum())
        stats.overflow += int((np.isinf(out) & finite).sum())
        if clip:
            bad = ~np.isfinite(out)
            stats.clipped += int(bad.sum())
            fixed = np.nan_to_num(source[bad].astype(np.float64), nan=0.0, posinf=FLOAT16_MAX, neginf=-FLOAT16_MAX)
            out[bad] = np.clip(fixed, -FLOAT16_MAX, FLOAT16_MAX)
        if not finite.any():
            return
        totals.minimum = min(totals.minimum, float(source[finite].min()))
        totals.maximum = max(totals.maximum, float(source[finite].max()))
        # Unclipped overflow has no finite error to measure; clipped values do (|65504 - x|).
        measured = finite & np.isfinite(out)
        source, out = source[measured], out[measured]
        if source.size == 0:
            return
    else:
        totals.minimum = min(totals.minimum, lowest)
        totals.maximum = max(totals.maximum, highest)
    with np.errstate(over="ignore", invalid="ignore"):
        _add_errors(out.astype(error_dtype), source, totals)


def _add_errors(error: np.ndarray, source: np.ndarray, totals: _Accumulator) -> None:
    """``error`` (the converted values, widened; overwritten) minus ``source``: the largest
    absolute error and the sum of squares."""
    with np.errstate(over="ignore", invalid="ignore"):
        error -= source
        np.abs(error, out=error)
        largest = float(error.max())
        totals.max_error = max(totals.max_error, largest)
        if largest > 1e18:  # clipped absurd values: their squares overflow float32
            error = error.astype(np.float64)
        np.square(error, out=error)
    totals.squared_error += float(error.sum(dtype=np.float64))
    totals.compared += source.size


def npy_header(shape: tuple[int, ...] | list[int], fortran_order: bool, dtype: np.dtype = OUTPUT_DTYPE) -> bytes:
    """The ``.npy`` header ``np.save`` writes for such an array (format 1.0)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": fortran_order, "shape": tuple(shape)})
    return buffer.getvalue()


def npy_member(flat: np.ndarray, shape: tuple[int, ...] | list[int], fortran_order: bool,
               zstd_level: int | None = None) -> bytes:
    """``.npy`` bytes of ``flat`` (elements in file order) as ``np.save`` would write them;
    zstd-compressed with ``zstd_level``. One copy of the data (the bytes object itself)."""
    header = npy_header(shape, fortran_order, flat.dtype)
    if zstd_level is None:
        return b"".join((header, flat))
    import zstandard

    # Single-threaded zstd with the content size in the frame: the same input gives the same
    # bytes, and decoders can allocate the output at once.
    compressor = zstandard.ZstdCompressor(level=zstd_level).compressobj(size=len(header) + flat.nbytes)
    return b"".join((compressor.compress(header), compressor.compress(flat), compressor.flush()))


# -- reading a volume back, for ``fastwds verify --check-precision`` -------------------------------

@dataclass
class NpzVolume:
    """An open ``.npz`` array: its header, and its values read in chunks (``chunks``)."""

    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype
    member: Any  # the zip member, positioned after the .npy header

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    def chunks(self, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[np.ndarray]:
        """The values in file order, ``chunk_elements`` at a time (the float32 data is never whole)."""
        position = 0
        while position < self.elements:
            n = min(chunk_elements, self.elements - position)
            raw = self.member.read(n * self.dtype.itemsize)
            if len(raw) != n * self.dtype.itemsize:
                raise VolumeReadError("unreadable_volume", f"array data cut short: "
                                      f"{position + len(raw) // self.dtype.itemsize} of {self.elements} values")
            yield np.frombuffer(raw, self.dtype)
            position += n
        self.member.read(1)  # reach the end of the member, so its CRC is verified


@contextmanager
def open_npz_volume(path: str | os.PathLike, array: str | None = None) -> Iterator[NpzVolume]:
    """The volume in ``path`` as ``npz_to_float16`` reads it; raises ``VolumeReadError`` (also for
    a bad CRC found while the caller reads the chunks) and ``OSError``."""
    try:
        with storage.readable(os.fspath(path)) as source, zipfile.ZipFile(source) as archive:
            with open_member(archive, choose_member(archive, array)) as member:
                shape, fortran_order, dtype = read_npy_header(member)
                yield NpzVolume(tuple(shape), fortran_order, dtype, member)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise VolumeReadError("unreadable_volume", f"{type(error).__name__}: {error}") from None


@dataclass
class Float16Comparison:
    """A float16 volume measured against its source again, the way ``npz_to_float16`` measures:
    errors over the source's finite values whose float16 value is finite."""

    compared: int = 0
    max_abs_error: float | None = None
    squared_error: float = 0.0
    clipped: int = 0  # values float16 cannot hold, found clipped (NaN -> 0, others -> +-65504)
    wrong: int = 0  # values that are neither the float16 rounding of the source nor its clipped value
    first_wrong: tuple[int, float, float] | None = None  # (element in file order, source, float16)

    @property
    def rmse(self) -> float | None:
        return math.sqrt(self.squared_error / self.compared) if self.compared else None


def rounding_bound(source: np.ndarray) -> np.ndarray:
    """The largest |float16(x) - x| round-to-nearest allows: half a float16 ULP, which is at most
    |x| * 2**-11 for normal values and exactly 2**-25 for subnormal ones. (The maximum, not the
    sum, of the two: the sum would also accept one-ULP errors below 2**-12.)"""
    return np.maximum(np.abs(source) * 2.0 ** -11, 2.0 ** -25)


def compare_float16(volume: np.ndarray, chunks: Iterable[np.ndarray], clipped: bool) -> Float16Comparison:
    """Check ``volume`` (flat float16, in the source's element order) against the source's values
    (``chunks``, e.g. ``NpzVolume.chunks()``): every value must be the source value rounded to
    float16, or, with ``clipped`` (the volume was converted with clipping), the clipped value for
    values float16 cannot hold. Works in float64 one chunk at a time."""
    result = Float16Comparison()
    position = 0
    for source in chunks:
        if position + source.size > volume.size:
            raise ValueError(f"the source has more values than the float16 volume ({volume.size})")
        _compare_chunk(volume[position:position + source.size], source, position, clipped, result)
        position += source.size
    if position != volume.size:
        raise ValueError(f"the source has {position} values, the float16 volume {volume.size}")
    return result


def _compare_chunk(half: np.ndarray, source: np.ndarray, position: int, clipped: bool,
                   result: Float16Comparison) -> None:
    exact = source.astype(np.float64)
    got = half.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        error = np.abs(got - exact)  # NaN or inf where either side is not finite
        measured = np.isfinite(error)
        if measured.any():
            largest = float(error[measured].max())
            result.max_abs_error = max(result.max_abs_error or 0.0, largest)
            result.squared_error += float(np.square(error[measured]).sum())
            result.compared += int(measured.sum())
        good = measured & (error <= rounding_bound(exact))
        if clipped:
            # What the converter wrote for values float16 cannot hold (see _convert_chunk).
            unholdable = ~np.isfinite(exact) | (np.abs(exact) >= ROUNDS_TO_INF)
            if unholdable.any():
                expected = np.where(np.isnan(exact[unholdable]), 0.0, np.copysign(FLOAT16_MAX, exact[unholdable]))
                as_clipped = got[unholdable] == expected
                result.clipped += int(as_clipped.sum())
                good[unholdable] = as_clipped
    wrong = np.flatnonzero(~good)
    if wrong.size:
        if result.first_wrong is None:
            first = int(wrong[0])
            result.first_wrong = (position + first, float(exact[first]), float(got[first]))
        result.wrong += int(wrong.size)
