"""Member decoders for ``fastwds.WebDataset``, chosen by the last part of a member's extension
(``labels.npy`` decodes as ``npy``; ``npy.zst`` is decompressed, then decoded as ``npy``). A custom
``decode`` mapping may also name a whole extension (``{"labels.npy": fn}``), which then wins over
its last part for that member only; a key that can never match a member (``".json"``, ``"a..b"``,
webdataset's ``"pil"``) is a ``ValueError``.

Nothing here unpickles: ``.npy``/``.npz`` load with ``allow_pickle=False`` (an object array is an
error), and ``.pyd``, ``.pickle``, ``.pkl``, ``.pth``/``.pt`` (torch.load unpickles) and every
unknown extension stay ``bytes``. webdataset's decoder unpickles ``.pyd``/``.pickle`` members, so a
shard from an untrusted source can run code there; here it cannot.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import numpy as np

from fastwds.errors import DecodeError, ShardFormatError

Decoder = Callable[[bytes], Any]
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "ppm", "pgm", "pbm", "pnm", "webp", "bmp", "tif", "tiff", "gif")


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def read_npy(name: str, size: int, stream: BinaryIO) -> Any:
    """Read a ``.npy`` member of ``size`` bytes from ``stream`` straight into a new array: one
    allocation and one copy, where reading bytes and then ``np.load`` makes two of each. Anything
    else (another extension, another format version, an object array, a size that does not add
    up) comes back as bytes, for the usual decoder to decode or reject."""
    if not name.endswith(".npy"):
        return NotImplemented
    head = stream.read(min(size, 10))
    if len(head) < 10 or head[:8] != b"\x93NUMPY\x01\x00":
        return head + _read_rest(stream, size - len(head), name)
    header_length = int.from_bytes(head[8:10], "little")
    header = stream.read(min(header_length, size - 10))
    prefix = head + header
    try:
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(io.BytesIO(prefix[8:]))
    except ValueError:
        return prefix + _read_rest(stream, size - len(prefix), name)
    count = math.prod(shape)
    if dtype.hasobject or len(prefix) + count * dtype.itemsize != size:
        return prefix + _read_rest(stream, size - len(prefix), name)
    array = np.empty(count, dtype)
    view = memoryview(array.view(np.uint8))
    filled = 0
    while filled < len(view):
        got = stream.readinto(view[filled:])
        if not got:
            raise ShardFormatError(f"member {name!r} is cut short ({len(prefix) + filled} of {size} bytes)")
        filled += got
    return array.reshape(shape[::-1]).transpose() if fortran_order else array.reshape(shape)


def _read_rest(stream: BinaryIO, size: int, name: str) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise ShardFormatError(f"member {name!r} is cut short")
    return data


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def load_image(data: bytes) -> Any:
    """A ``PIL.Image``, fully loaded (so nothing refers to the bytes afterwards)."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:  # its own message names only "<_io.BytesIO object at 0x...>"
        raise Image.UnidentifiedImageError(f"not an image format Pillow can identify (it starts with "
                                           f"{data[:8]!r})") from None
    image.load()
    return image


def load_text(data: bytes) -> str:
    return data.decode("utf-8")


def load_int(data: bytes) -> int:
    return int(data)


def zstd_decompress(data: bytes) -> bytes:
    import zstandard

    # decompressobj handles frames without a content size too (other writers leave it out).
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def load_npy_zst(data: bytes) -> np.ndarray:
    """A zstd-compressed ``.npy``, decompressed straight into its array when the frame states its
    size (fastwds writes it), else decompressed and loaded."""
    import zstandard

    size = zstandard.frame_content_size(data)
    if size < 0:
        return load_npy(zstd_decompress(data))
    with zstandard.ZstdDecompressor().stream_reader(data) as stream:
        array = read_npy("member.npy", size, stream)
    return array if isinstance(array, np.ndarray) else load_npy(array)


DECODERS: dict[str, Decoder | None] = {
    "npy": load_npy,
    "npz": load_npz,
    "json": json.loads,
    "jsn": json.loads,
    "txt": load_text,
    "text": load_text,
    "caption": load_text,
    "cls": load_int,  # webdataset's meaning: one integer class
    "cls2": load_int,
    "index": load_int,
    **{ext: load_image for ext in IMAGE_EXTENSIONS},
}
DECOMPRESSORS: dict[str, Decoder] = {"zst": zstd_decompress, "zstd": zstd_decompress, "gz": gzip.decompress}
# webdataset's ``decode("pil")`` image specs: names of output types, never member extensions.
WEBDATASET_SPECS = frozenset(("pil", "pill", "pilrgb", "pilrgba", "l8", "rgb8", "rgba8", "torchl8", "torchrgb8",
                              "torchrgba8", "torchl", "torchrgb", "torchrgba"))


def check_decode_key(key: Any) -> str:
    """The key of a ``decode`` mapping, lowercased; a ValueError naming it when no member could
    ever have that extension."""
    if not isinstance(key, str):
        raise TypeError(f"decode keys are member extensions (str), not {key!r}")
    ext = key.lower()
    if ext.startswith("."):
        raise ValueError(f"decode key {key!r}: extensions are written without the leading dot ({key[1:]!r})")
    if not ext or ext.endswith(".") or ".." in ext or "/" in ext or "\\" in ext or ext != ext.strip():
        raise ValueError(f"decode key {key!r} can never match a member extension (like 'jpg' or 'labels.npy')")
    if ext in WEBDATASET_SPECS:
        raise ValueError(f"decode key {key!r} is a webdataset image spec, not a member extension: fastwds "
                         "decodes images (jpg, png, ...) to PIL images; to decode them otherwise, map their "
                         "extensions, e.g. {'jpg': fn}")
    return ext


def decoders_for(decode: bool | Mapping[str, Decoder | None]) -> dict[str, Decoder | None] | None:
    """``True``: the built-in decoders; ``False``: none (bytes); a mapping: the built-ins with
    these extensions replaced (``None`` keeps that extension as bytes)."""
    if decode is True:
        return DECODERS
    if decode is False or decode is None:
        return None
    if isinstance(decode, Mapping):
        return {**DECODERS, **{check_decode_key(ext): fn for ext, fn in decode.items()}}
    raise TypeError(f"decode must be True, False or a mapping of extension -> function, not {decode!r}")


def decode_value(ext: str, data: Any, decoders: Mapping[str, Decoder | None]) -> Any:
    if not isinstance(data, bytes):  # already decoded while reading (read_npy)
        return data
    full = ext.lower()  # extensions are kept as written; decoders are chosen case-insensitively
    if "." in full and full in decoders:  # a custom decoder for the whole extension ("labels.npy")
        decoder = decoders[full]
        return decoder(data) if decoder is not None else data
    inner, _, last = full.rpartition(".")
    if last in DECOMPRESSORS and last not in decoders:
        if (last in ("zst", "zstd") and inner.rpartition(".")[2] == "npy" and inner not in decoders
                and decoders.get("npy") is load_npy):
            return load_npy_zst(data)
        data = DECOMPRESSORS[last](data)
        return decode_value(inner, data, decoders) if inner else data
    decoder = decoders.get(last)
    return decoder(data) if decoder is not None else data


def decode_sample(sample: dict[str, Any], decoders: Mapping[str, Decoder | None]) -> dict[str, Any]:
    """The sample with every member decoded. A member its decoder refuses (a built-in or a custom
    one) raises ``DecodeError`` naming the shard, the sample's key and the member, with the
    decoder's exception as its cause."""
    decoded: dict[str, Any] = {}
    for name, value in sample.items():
        if name.startswith("__"):
            decoded[name] = value
            continue
        try:
            decoded[name] = decode_value(name, value, decoders)
        except MemoryError:  # not the member's fault, and never to be skipped as if it were
            raise
        except Exception as error:
            shard, key = sample.get("__url__"), sample.get("__key__")
            raise DecodeError(f"{shard}: sample {key!r}: cannot decode member {name!r}: "
                              f"{type(error).__name__}: {error}", shard, key, name) from error
    return decoded
