"""Generate LLaVA-style parquet datasets with real images and a known share of broken rows, for
tests, benchmarks and the shipped example. Deterministic for a given seed."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

# Each broken row carries exactly one of these problems; `expected_reason` names it.
BROKEN_KINDS = ("image_truncated", "image_token_mismatch", "no_conversation", "image_unknown_format",
                "image_empty", "bad_role")


def make_jpeg(rng: np.random.Generator, width: int, height: int, quality: int) -> bytes:
    # Smooth gradients plus noise compress like photos: sizes land in the 50-100 KB range.
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * rng.uniform(0.2, 1.0)) % 256, (y * rng.uniform(0.2, 1.0)) % 256,
                     ((x + y) * rng.uniform(0.1, 0.5)) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 28, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def make_png(rng: np.random.Generator, width: int, height: int) -> bytes:
    pixels = rng.integers(0, 255, (height, width, 4), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(out, format="PNG")
    return out.getvalue()


@dataclass
class SyntheticDataset:
    root: Path
    rows: int
    broken: dict[str, str]  # id -> expected reason
    image_bytes: int


def image_pool(seed: int, jpegs: int = 48, pngs: int = 6) -> list[bytes]:
    rng = np.random.default_rng(seed)
    pool = [make_jpeg(rng, int(rng.integers(420, 560)), int(rng.integers(320, 420)), int(rng.integers(80, 92)))
            for _ in range(jpegs)]
    pool += [make_png(rng, int(rng.integers(60, 120)), int(rng.integers(60, 120))) for _ in range(pngs)]
    return pool


def generate(root: str | Path, rows: int = 1000, subsets: int = 2, files_per_subset: int = 2,
             broken_share: float = 0.03, multi_image_share: float = 0.05, row_group_rows: int = 100,
             seed: int = 0, pool: list[bytes] | None = None) -> SyntheticDataset:
    """Write ``rows`` rows over ``subsets`` folders of ``files_per_subset`` parquet files."""
    root = Path(root)
    rng = np.random.default_rng(seed + 1)
    pool = pool or image_pool(seed)
    broken: dict[str, str] = {}
    image_total = 0
    per_file = -(-rows // (subsets * files_per_subset))
    row = 0
    for s in range(subsets):
        for f in range(files_per_subset):
            ids, images, image_lists, conversations, sources = [], [], [], [], []
            for _ in range(min(per_file, rows - row)):
                sample_id = f"src{s}/{row:08d}.jpg" if row % 10 == 3 else f"{s:02d}{row:08d}"
                count = 2 if rng.random() < multi_image_share else 1
                picks = [pool[int(rng.integers(len(pool)))] for _ in range(count)]
                tokens = "".join("<image>\n" for _ in picks)
                llava = row % 2 == 0
                user, bot = ("human", "gpt") if llava else ("user", "assistant")
                turns = [(user, f"{tokens}What is shown in picture {row}?"), (bot, f"A test pattern number {row}.")]
                if rng.random() < broken_share:
                    kind = BROKEN_KINDS[len(broken) % len(BROKEN_KINDS)]
                    broken[sample_id] = kind
                    if kind == "image_truncated":
                        picks[0] = picks[0][: len(picks[0]) // 2]
                    elif kind == "image_token_mismatch":
                        turns[0] = (user, f"What is shown in picture {row}?")
                    elif kind == "no_conversation":
                        turns = []
                    elif kind == "image_unknown_format":
                        picks[0] = b"GIF0 not really an image" * 10
                    elif kind == "image_empty":
                        picks[0] = b""
                    elif kind == "bad_role":
                        turns[1] = ("robot", turns[1][1])
                key, value = ("from", "value") if llava else ("role", "content")
                ids.append(sample_id)
                conversations.append([{key: r, value: c} for r, c in turns])
                images.append({"bytes": picks[0], "path": f"{row}.jpg"} if count == 1 else None)
                image_lists.append([{"bytes": p, "path": f"{row}_{i}.jpg"} for i, p in enumerate(picks)]
                                   if count > 1 else None)
                sources.append(f"source_{s}")
                image_total += sum(len(p) for p in picks)
                row += 1
            if not ids:
                continue
            image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            table = pa.table({
                "id": pa.array(ids),
                "image": pa.array(images, type=image_type),
                "images": pa.array(image_lists, type=pa.list_(image_type)),
                "conversations": pa.array(conversations),
                "data_source": pa.array(sources),
            })
            folder = root / f"subset_{s}"
            folder.mkdir(parents=True, exist_ok=True)
            # Rows reuse a small pool of images; dictionary encoding would store each image once
            # per row group and make the files (and every benchmark's reads) far smaller than
            # real data, where images are unique.
            pq.write_table(table, folder / f"part-{f:03d}.parquet", row_group_size=row_group_rows,
                           use_dictionary=["id", "data_source"])
    return SyntheticDataset(root, row, broken, image_total)
