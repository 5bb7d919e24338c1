"""Full image verification: what it rejects, and that JPEG draft decoding rejects exactly what a
full-size decode rejects."""

from __future__ import annotations

import io
import random
import warnings
from concurrent.futures import ThreadPoolExecutor

from conftest import jpeg_bytes, png_bytes
from parquet_data import png_with_size
from fastwds.media import decode_problem
from PIL import Image


def full_size_decode_fails(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception:
        return True
    return False


def damaged(data: bytes, rng: random.Random) -> bytes:
    """Random bytes overwritten in the scan data (headers intact, so only decoding can tell)."""
    out = bytearray(data)
    scan = out.index(b"\xff\xda") + 20
    for _ in range(rng.randint(1, 40)):
        out[rng.randrange(scan, len(out) - 2)] = rng.randrange(256)
    return bytes(out)


def test_jpeg_verification_agrees_with_full_size_decoding():
    rng = random.Random(1)
    sources = [jpeg_bytes(320, 240, seed=s, quality=q) for s, q in ((1, 90), (2, 75), (3, 95))]
    verdicts = []
    for source in sources:
        assert decode_problem(source) is None
        for _ in range(80):
            data = damaged(source, rng)
            verdicts.append((full_size_decode_fails(data), decode_problem(data) is not None))
    assert all(full == ours for full, ours in verdicts), [v for v in verdicts if v[0] != v[1]]
    # The sample must contain both outcomes, or it proves nothing.
    assert {full for full, _ in verdicts} == {True, False}


def test_png_decode_failure_names_the_reason():
    data = bytearray(png_bytes(64, 64, seed=5))
    start = data.index(b"IDAT") + 30
    for i in range(start, start + 170):
        data[i] ^= 0x5A
    problem = decode_problem(bytes(data))
    assert problem is not None and problem.reason == "image_decode_failed" and "Pillow" in problem.detail


def test_an_image_over_pillows_pixel_limit_is_a_decode_failure():
    with warnings.catch_warnings():  # as outside pytest (which makes warnings errors): Pillow only warns
        warnings.simplefilter("ignore")
        problem = decode_problem(png_with_size(20_000, 20_000))  # 400 megapixels, over its 300M
    assert problem is not None and problem.reason == "image_decode_failed" and "20000x20000" in problem.detail


def test_decoding_in_threads_leaves_the_warning_filters_alone():
    """Decodes run on a pool: they must not change process-wide state such as the warning
    filters (warnings.catch_warnings in threads leaked an 'error' filter into the process)."""
    before = list(warnings.filters)
    with ThreadPoolExecutor(4) as pool:
        assert not any(pool.map(decode_problem, [jpeg_bytes(32, 32, seed=s % 7) for s in range(4000)]))
    assert warnings.filters == before
