"""Video checks without decoding: the container format by magic bytes (which names the member:
``mp4``, ``mov``, ``webm``, ``mkv``, ``avi``) and, where the container says how long it is, whether
the file is cut short. Decoding frames is the training loader's job; a truncated download is the
common failure, and that the container structure shows."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fastwds.reasons import Problem

# QuickTime files from before the ``ftyp`` box start directly with one of these boxes.
_QUICKTIME_FIRST_BOXES = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


@dataclass(frozen=True)
class VideoInfo:
    format: str  # "mp4", "mov", "webm", "mkv", "avi"

    @property
    def extension(self) -> str:
        return self.format


def inspect_video(data: bytes | None) -> VideoInfo | Problem:
    if not data:
        return Problem("video_empty", "the video has no bytes")
    if data[4:8] == b"ftyp" or data[4:8] in _QUICKTIME_FIRST_BOXES:
        return _inspect_iso_media(data)
    if data[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska or its WebM profile
        # The DocType element sits in the EBML header, within the first few dozen bytes.
        return VideoInfo("webm" if b"webm" in data[:64] else "mkv")
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        declared = struct.unpack_from("<I", data, 4)[0] + 8
        if declared > len(data):
            return Problem("video_truncated", f"the AVI declares {declared} bytes but has {len(data)}")
        return VideoInfo("avi")
    return Problem("video_unknown_format", f"not MP4/MOV/WebM/MKV/AVI (starts with {data[:12].hex()})")


def _inspect_iso_media(data: bytes) -> VideoInfo | Problem:
    """MP4 and MOV: walk the top-level boxes. A box running past the end of the file, or no
    ``moov`` box (the index every player needs), means the file is incomplete."""
    brand = data[8:12] if data[4:8] == b"ftyp" else b"qt  "
    position, boxes = 0, set()
    while position < len(data):
        if position + 8 > len(data):
            return Problem("video_truncated", f"a box header is cut short at byte {position}")
        size, kind = struct.unpack_from(">I4s", data, position)
        header = 8
        if size == 1:  # 64-bit size follows
            if position + 16 > len(data):
                return Problem("video_truncated", f"a box header is cut short at byte {position}")
            size = struct.unpack_from(">Q", data, position + 8)[0]
            header = 16
        elif size == 0:  # the box runs to the end of the file
            size = len(data) - position
        if size < header:
            return Problem("video_truncated", f"box {kind!r} at byte {position} has an impossible size {size}")
        if position + size > len(data):
            return Problem("video_truncated", f"box {kind.decode('latin-1')!r} at byte {position} needs "
                                                   f"{size} bytes but the file ends after {len(data) - position}")
        boxes.add(kind)
        position += size
    if b"moov" not in boxes:
        return Problem("video_truncated", "no 'moov' box (the movie index): the file is incomplete")
    return VideoInfo("mov" if brand == b"qt  " else "mp4")
