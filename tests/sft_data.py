"""Hand-made SFT JSON/JSONL datasets with their media files: one row per rejection reason plus
awkward but valid rows, and the expected outcome of each row."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from conftest import jpeg_bytes, png_bytes
from PIL import Image


def webp_bytes(width: int = 20, height: int = 10) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="WEBP")
    return buffer.getvalue()


def video_bytes(container: str = "mp4", codec: str = "mpeg4", frames: int = 3, size=(32, 24)) -> bytes:
    """A real, tiny video encoded with PyAV (FFmpeg)."""
    out = io.BytesIO()
    with av.open(out, "w", format=container) as output:
        stream = output.add_stream(codec, rate=5)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), i * 40, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return out.getvalue()


def chat(text: str, llava: bool = False, system: str | None = None) -> list[dict]:
    if llava:
        return [{"from": "human", "value": text}, {"from": "gpt", "value": "answer"}]
    turns = [{"role": "user", "content": text}, {"role": "assistant", "content": "answer"}]
    return ([{"role": "system", "content": system}] if system is not None else []) + turns


@dataclass
class Expected:
    """What a row should become: written with these media files (in order), or rejected."""

    id: str
    media: list[str] = field(default_factory=list)  # media file names in order (under the media folder)
    exts: list[str] = field(default_factory=list)  # member names expected
    reason: str | None = None
    system: str | None = None
    file: str = "data.json"  # the input file holding the row


@dataclass
class SftDataset:
    root: Path
    files: dict[str, bytes]  # media file name -> bytes
    expected: list[Expected]

    @property
    def valid(self) -> list[Expected]:
        return [e for e in self.expected if e.reason is None]


def make_image_dataset(root: Path) -> SftDataset:
    """``data.json`` (a JSON array) and ``nested/more.jsonl``; images under ``images/``."""
    media = root / "images"
    media.mkdir(parents=True)
    files = {"a.jpg": jpeg_bytes(seed=1), "b.png": png_bytes(seed=2), "c.webp": webp_bytes(),
             "d.jpg": jpeg_bytes(40, 30, seed=4), "png-named.jpg": png_bytes(16, 16, seed=6),
             "cut.jpg": jpeg_bytes(seed=7)[:-300]}
    for name, data in files.items():
        (media / name).write_bytes(data)
    (media / "a-folder.jpg").mkdir()
    absolute = str((media / "d.jpg").resolve())
    rows, expected = [], []

    def add(row, outcome: Expected) -> None:
        rows.append(row)
        expected.append(outcome)

    add({"id": "plain", "image": "images/a.jpg", "conversations": chat("<image>\nWhat?", llava=True)},
        Expected("plain", ["a.jpg"], ["jpg"]))
    add({"id": "png-one", "image": "images/b.png", "messages": chat("<image> describe")},
        Expected("png-one", ["b.png"], ["png"]))
    add({"id": "multi", "images": ["images/a.jpg", "images/b.png", "images/c.webp"],
         "messages": chat("<image><image>\n<image> compare")},
        Expected("multi", ["a.jpg", "b.png", "c.webp"], ["0.jpg", "1.png", "2.webp"]))
    add({"id": "with-system", "image": "images/d.jpg", "messages": chat("<image>", system="be brief")},
        Expected("with-system", ["d.jpg"], ["jpg"], system="be brief"))
    add({"id": "empty-system", "image": ["images/d.jpg"], "messages": chat("<image>", system="")},
        Expected("empty-system", ["d.jpg"], ["jpg"], system=""))
    add({"id": "text-only", "messages": chat("no image here")}, Expected("text-only"))
    add({"image": "images/b.png", "messages": chat("<image> no id")}, Expected("data-6", ["b.png"], ["png"]))
    add({"id": 42, "image": "images/a.jpg", "messages": chat("<image> int id")}, Expected("42", ["a.jpg"], ["jpg"]))
    add({"id": "real-format", "image": "images/png-named.jpg", "messages": chat("<image>")},
        Expected("real-format", ["png-named.jpg"], ["png"]))
    add({"id": "absolute", "image": absolute, "messages": chat("<image>")}, Expected("absolute", ["d.jpg"], ["jpg"]))
    add({"id": "dot.id/with slash", "image": "images/a.jpg", "messages": chat("<image>")},
        Expected("dot.id/with slash", ["a.jpg"], ["jpg"]))
    add({"id": "中文", "image": "images/c.webp", "messages": chat("<image> 这是什么")},
        Expected("中文", ["c.webp"], ["webp"]))
    add({"id": "missing", "image": "images/nope.jpg", "messages": chat("<image>")},
        Expected("missing", reason="media_missing"))
    add({"id": "folder", "image": "images/a-folder.jpg", "messages": chat("<image>")},
        Expected("folder", reason="media_unreadable"))
    add({"id": "too-few", "image": "images/a.jpg", "messages": chat("<image> and <image>")},
        Expected("too-few", reason="image_token_mismatch"))
    add({"id": "video-token", "image": "images/a.jpg", "messages": chat("<image> <video>")},
        Expected("video-token", reason="video_token_mismatch"))
    add({"id": "late-system", "image": "images/a.jpg",
         "messages": chat("<image>") + [{"role": "system", "content": "late"}]},
        Expected("late-system", reason="system_turn_position"))
    add({"id": "only-system", "messages": [{"role": "system", "content": "alone"}]},
        Expected("only-system", reason="no_conversation"))
    add({"id": "bad-role", "image": "images/a.jpg", "messages": [{"role": "narrator", "content": "<image>"}]},
        Expected("bad-role", reason="bad_role"))
    add({"id": "truncated", "image": "images/cut.jpg", "messages": chat("<image>")},
        Expected("truncated", reason="image_truncated"))
    add({"id": "has-video", "video": "v.mp4", "messages": chat("<video>")},
        Expected("has-video", reason="media_kind_mismatch"))
    add({"id": "bad-path", "image": 5, "messages": chat("<image>")}, Expected("bad-path", reason="bad_sample"))
    add("just a string", Expected("data-22", reason="bad_sample"))
    add({"id": "plain", "image": "images/b.png", "messages": chat("<image>")},
        Expected("plain", reason="duplicate_id"))
    (root / "data.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")

    lines, nested = [], []

    def add_line(text: str, outcome: Expected | None) -> None:
        lines.append(text)
        if outcome is not None:
            nested.append(outcome)

    add_line(json.dumps({"id": "nested-relative", "image": "../images/a.jpg", "messages": chat("<image>")}),
             Expected("nested-relative", ["a.jpg"], ["jpg"], file="nested/more.jsonl"))
    add_line("", None)  # blank lines are not rows
    add_line('{"id": "broken", "messages": [', Expected("nested__more-1", reason="bad_json", file="nested/more.jsonl"))
    add_line(json.dumps({"id": "no-images", "images": [], "messages": chat("plain text")}),
             Expected("no-images", file="nested/more.jsonl"))
    (root / "nested").mkdir()
    (root / "nested" / "more.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return SftDataset(root, files, expected + nested)


def make_video_dataset(root: Path) -> SftDataset:
    """``videos.jsonl`` with its videos beside it."""
    mp4, webm = video_bytes(), video_bytes("webm", "libvpx")
    files = {"clip.mp4": mp4, "clip.webm": webm, "clip.mkv": video_bytes("matroska"), "cut.mp4": mp4[:-40],
             "junk.mp4": b"not a video at all", "still.jpg": jpeg_bytes(seed=9)}
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    table = [
        ({"id": "one", "video": "clip.mp4", "messages": chat("<video> what happens?")},
         Expected("one", ["clip.mp4"], ["mp4"])),
        ({"id": "two", "videos": ["clip.webm", "clip.mkv"], "messages": chat("<video><video> compare", system="sys")},
         Expected("two", ["clip.webm", "clip.mkv"], ["0.webm", "1.mkv"], system="sys")),
        ({"id": "text", "messages": chat("no video")}, Expected("text")),
        ({"id": "cut", "video": "cut.mp4", "messages": chat("<video>")}, Expected("cut", reason="video_truncated")),
        ({"id": "junk", "video": "junk.mp4", "messages": chat("<video>")},
         Expected("junk", reason="video_unknown_format")),
        ({"id": "gone", "video": "gone.mp4", "messages": chat("<video>")}, Expected("gone", reason="media_missing")),
        ({"id": "tokens", "video": "clip.mp4", "messages": chat("no token")},
         Expected("tokens", reason="video_token_mismatch")),
        ({"id": "image-token", "video": "clip.mp4", "messages": chat("<video><image>")},
         Expected("image-token", reason="image_token_mismatch")),
        ({"id": "an-image", "image": "still.jpg", "messages": chat("<image>")},
         Expected("an-image", reason="media_kind_mismatch")),
    ]
    (root / "videos.jsonl").write_text("".join(json.dumps(row) + "\n" for row, _ in table), encoding="utf-8")
    return SftDataset(root, files, [outcome for _, outcome in table])
