"""pyarrow arrays as ``_core.BinaryColumn``: image bytes read in place by the Rust inspector and
writer, never copied into Python ``bytes``."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from fastwds._core import BinaryColumn

EMPTY = pa.py_buffer(b"")


def binary_column(array: pa.Array) -> BinaryColumn:
    """A binary/large binary array (or a struct array's ``bytes`` field, see ``encoded_images``)."""
    if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        raise TypeError(f"expected a binary array, got {array.type}")
    return _column(array, pa.types.is_large_binary(array.type))


def string_column(array: pa.Array) -> BinaryColumn:
    """A string/large string array: its UTF-8 bytes, read in place the same way."""
    if not is_text(array.type):
        raise TypeError(f"expected a string array, got {array.type}")
    return _column(array, pa.types.is_large_string(array.type))


def is_text(array_type: pa.DataType) -> bool:
    return pa.types.is_string(array_type) or pa.types.is_large_string(array_type)


def _column(array: pa.Array, large: bool) -> BinaryColumn:
    validity, offsets, data = array.buffers()[:3]
    # Arrow arrays are immutable, but pyarrow exports the buffers it decoded (parquet pages) as
    # writable, and BinaryColumn copies a writable buffer (with the GIL held: measured at 38% of
    # a parquet conversion's GIL time). A read-only view of the same memory is what they are.
    data = memoryview(data).toreadonly() if data is not None else EMPTY
    return BinaryColumn(data, offsets, validity if array.null_count else None,
                        array.offset, len(array), large)


def encoded_images(array: pa.Array) -> pa.Array:
    """The encoded bytes of an image column: ``{bytes, path}`` structs (HF datasets' Image
    feature) or plain binary. A null struct gives a null value."""
    if pa.types.is_struct(array.type):
        return pc.struct_field(array, "bytes")
    return array
