"""Hand-made LLaVA-style parquet rows, one per validation reason plus awkward but valid rows."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import jpeg_bytes, png_bytes
from PIL import Image

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (zero allowed), with a valid IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def corrupt_png() -> bytes:
    """Header and IEND intact (passes the fast check) but the compressed pixels are damaged:
    only a full decode sees it."""
    damaged = bytearray(png_bytes(64, 64, seed=5))
    start = damaged.index(b"IDAT") + 30
    for i in range(start, start + 170):
        damaged[i] ^= 0x5A
    return bytes(damaged)


def turns(text: str, llava: bool = False) -> list[dict]:
    if llava:
        return [{"from": "human", "value": text}, {"from": "gpt", "value": "answer"}]
    return [{"role": "user", "content": text}, {"role": "assistant", "content": "answer"}]


# (id, image bytes or None, images list or None, conversations, expected reason or None)
def rows() -> list[tuple]:
    jpg, png = jpeg_bytes(seed=1), png_bytes(seed=2)
    return [
        ("plain", jpg, None, turns("<image>\nWhat?"), None),
        ("llava.spelling/1", png, None, turns("<image> describe", llava=True), None),
        ("中文 id", jpg, None, turns("<image>"), None),
        ("multi", None, [jpg, png, jpeg_bytes(seed=3)], turns("<image><image>\n<image> compare"), None),
        ("text-only", None, None, turns("no image here"), None),
        ("with-system", jpg, None,
         [{"role": "system", "content": "be brief"}] + turns("<image>"), None),
        ("dup", jpg, None, turns("<image>"), None),
        ("dup", jpg, None, turns("<image>"), "duplicate_id"),
        (None, jpg, None, turns("<image>"), "missing_id"),
        ("no-conv", jpg, None, [], "no_conversation"),
        ("bad-role", jpg, None, [{"role": "narrator", "content": "<image>"}], "bad_role"),
        ("empty-turn", jpg, None, [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "  "}],
         "empty_turn"),
        ("tokens-no-images", None, None, turns("<image> where is it"), "image_token_mismatch"),
        ("images-no-tokens", jpg, None, turns("what is this"), "image_token_mismatch"),
        ("too-few-images", None, [jpg], turns("<image> and <image>"), "image_token_mismatch"),
        ("empty-bytes", b"", None, turns("<image>"), "image_empty"),
        ("not-image", b"%PDF-1.4 nope", None, turns("<image>"), "image_unknown_format"),
        ("bad-header", b"\x89PNG\r\n\x1a\n\x00\x00", None, turns("<image>"), "image_unreadable_header"),
        ("zero-size", png_with_size(0, 10), None, turns("<image>"), "image_zero_size"),
        ("truncated-jpg", jpg[:-300], None, turns("<image>"), "image_truncated"),
        ("truncated-png", png[:-12], None, turns("<image>"), "image_truncated"),
        ("corrupt-pixels", corrupt_png(), None, turns("<image>"), None),  # fast mode cannot see it
    ]


def write_rows(path: Path, table_rows: list[tuple], row_group_size: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "id": pa.array([r[0] for r in table_rows], type=pa.string()),
        "image": pa.array([None if r[1] is None else {"bytes": r[1], "path": "x.jpg"} for r in table_rows],
                          type=IMAGE),
        "images": pa.array([None if r[2] is None else [{"bytes": b, "path": "y"} for b in r[2]]
                            for r in table_rows], type=pa.list_(IMAGE)),
        "conversations": pa.array([r[3] for r in table_rows],
                                  type=pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()),
                                                           ("from", pa.string()), ("value", pa.string())]))),
        "data_source": pa.array(["handmade"] * len(table_rows)),
    })
    pq.write_table(table, path, row_group_size=row_group_size)


def rgb_image(mode: str, size=(40, 30), exif_orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    image = base.convert(mode)
    out = io.BytesIO()
    if mode == "CMYK":
        image.save(out, format="JPEG")
    elif exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(out, format="JPEG", exif=exif.tobytes())
    else:
        image.save(out, format="PNG")
    return out.getvalue()
