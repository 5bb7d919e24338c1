"""Regenerate examples/llava/: a small LLaVA-style parquet dataset (two subsets, real JPEG and
PNG images, multi-image rows, both conversation spellings, and a few broken rows of known
kinds) for the README's quick start. Deterministic: running it again gives the same files."""

from pathlib import Path

import numpy as np

from fastwds.synthetic import generate, make_jpeg, make_png

rng = np.random.default_rng(7)
small_images = [make_jpeg(rng, 192, 144, 80) for _ in range(10)] + [make_png(rng, 32, 32) for _ in range(2)]
dataset = generate(Path(__file__).parent / "llava", rows=48, subsets=2, files_per_subset=1, broken_share=0.12,
                   multi_image_share=0.1, row_group_rows=8, seed=7, pool=small_images)
print(f"{dataset.rows} rows, broken: {dataset.broken}")
