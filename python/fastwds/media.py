"""Image checks and re-encoding.

The default ("fast") check runs in Rust without decoding pixels: format by magic bytes,
dimensions from the header, truncation by the end marker. ``decode_problem`` fully decodes with
Pillow (``--verify-images full``) and ``reencode_jpeg`` re-encodes. pillow-simd installs under the
same ``PIL`` name, so it is used automatically when it is the installed Pillow.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps

from fastwds import _core
from fastwds.reasons import Problem

# Decompression-bomb protection stays on; a bomb is reported as a decode failure.
Image.MAX_IMAGE_PIXELS = 300_000_000


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "jpeg", "png", ...
    width: int
    height: int

    @property
    def extension(self) -> str:
        return "jpg" if self.format == "jpeg" else self.format


# An image as the pipeline carries it: bytes, or a (BinaryColumn, index) reference into Arrow memory.
ImageData = bytes | tuple | None


def payload_bytes(image: ImageData) -> bytes:
    """The bytes of an image (a copy out of Arrow memory for a reference)."""
    if isinstance(image, tuple):
        column, index = image
        return column.get(index) or b""
    return image or b""


def payload_size(image: ImageData) -> int:
    if isinstance(image, tuple):
        column, index = image
        return column.value_len(index)
    return len(image) if image else 0


def inspect_images(images: list[ImageData]) -> list[ImageInfo | Problem]:
    """Fast checks of many images in one call (Rust, GIL released)."""
    return [
        ImageInfo(detail, width, height) if status == "ok" else Problem(status, detail)
        for status, detail, width, height in _core.inspect_images(images)
    ]


def decode_problem(data: bytes) -> Problem | None:
    """Decode the image with Pillow; the problem if that fails. Pillow releases the GIL while
    decoding, so callers run this in threads.

    JPEGs are decoded in libjpeg's draft mode at 1/8 scale: all of the entropy-coded data is
    still decoded (that is where every JPEG decoding error comes from: Huffman codes, markers,
    truncated scans), only the inverse DCT, upsampling and colour conversion, which cannot fail,
    produce fewer pixels. It rejects exactly what a full-size decode rejects (a test checks this
    on damaged JPEGs) at about 1.4x the speed."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that. Checked here, not by
            # turning the warning into an error: warnings.catch_warnings changes the process's
            # filters, which is not thread-safe (decodes run in threads: the filter leaked).
            if image.width * image.height > Image.MAX_IMAGE_PIXELS:
                return Problem("image_decode_failed", f"Pillow cannot decode the image: {image.width}x{image.height} "
                                                      f"is more than its {Image.MAX_IMAGE_PIXELS:,} pixels")
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as error:  # Pillow raises many types for corrupt data: all mean "cannot decode"
        return Problem("image_decode_failed", f"Pillow cannot decode the image: {error}")
    return None


def reencode_jpeg(data: bytes, quality: int, max_side: int | None) -> tuple[bytes, ImageInfo]:
    """Re-encode as baseline JPEG: EXIF orientation applied, CMYK/palette/16-bit converted,
    transparency flattened onto white (JPEG has no alpha), longest side capped at ``max_side``."""
    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        elif image.mode != "RGB" and image.mode != "L":
            image = image.convert("RGB")
        if max_side and max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality)
        return out.getvalue(), ImageInfo("jpeg", image.width, image.height)
