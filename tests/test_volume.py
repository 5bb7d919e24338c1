"""fastwds.volume: streamed float16 conversion of npz volumes, checked against numpy's own."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from fastwds import volume as volume_module
from fastwds.volume import VolumeReadError, npy_member, npz_to_float16


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 values, so every test volume spans many chunks with a ragged last one."""
    monkeypatch.setattr(volume_module, "CHUNK_ELEMENTS", 7)


def saved(tmp_path, array, name="v.npz", compressed=False) -> str:
    path = tmp_path / name
    (np.savez_compressed if compressed else np.savez)(path, array)
    return str(path)


def reference_errors(source: np.ndarray) -> np.ndarray:
    finite = source[np.isfinite(source)].astype(np.float64)
    return np.abs(finite.astype(np.float16).astype(np.float64) - finite)


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8", "<i2", "<u1", "<f2", "?"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_matches_numpy_for_every_dtype_and_order(tmp_path, small_chunks, dtype, order):
    rng = np.random.default_rng(0)
    source = np.asarray(rng.uniform(-300, 300, (2, 5, 3)), order=order).astype(dtype, order=order)
    flat, stats = npz_to_float16(saved(tmp_path, source))
    encoded = npy_member(flat, stats.shape, stats.fortran_order)
    expected = io.BytesIO()
    np.save(expected, source.astype(np.float16))
    decoded = np.load(io.BytesIO(encoded))
    np.testing.assert_array_equal(decoded, source.astype(np.float16))
    if order == "C" or source.ndim == 1:
        assert encoded == expected.getvalue()  # byte for byte what np.save writes
    assert stats.fortran_order == (order == "F" and not source.flags.c_contiguous)
    errors = reference_errors(source)
    assert stats.max_abs_error == pytest.approx(errors.max(), rel=1e-6, abs=1e-12)
    assert stats.rmse == pytest.approx(math.sqrt(np.mean(errors ** 2)), rel=1e-6, abs=1e-12)
    assert (stats.source_min, stats.source_max) == (float(source.min()), float(source.max()))


def test_counts_and_clips_what_float16_cannot_hold(tmp_path, small_chunks):
    source = np.linspace(-1, 1, 40).astype(np.float32)
    source[[3, 11, 12, 25, 39]] = [np.nan, np.inf, -np.inf, 65519.0, -70000.0]  # 65519 still rounds to 65504
    path = saved(tmp_path, source)
    flat, stats = npz_to_float16(path)
    assert (stats.nan, stats.posinf, stats.neginf, stats.overflow, stats.clipped) == (1, 1, 1, 1, 0)
    assert stats.problems == 4 and "1 NaN" in stats.problem_text() and "-70000" in stats.problem_text()
    assert flat[25] == np.float16(65504) and np.isinf(flat[39])
    clipped, clip_stats = npz_to_float16(path, clip=True)
    assert clip_stats.clipped == 4 and np.isfinite(clipped).all()
    assert (clipped[3], clipped[11], clipped[12], clipped[39]) == (0, 65504, -65504, -65504)
    assert clip_stats.max_abs_error == 70000 - 65504 and clip_stats.compared == 37  # all but NaN and +-inf


def test_compressed_npz_and_named_arrays(tmp_path, small_chunks):
    source = np.arange(50, dtype=np.float32).reshape(1, 5, 10) / 50
    flat, _ = npz_to_float16(saved(tmp_path, source, compressed=True))
    np.testing.assert_array_equal(flat, source.astype(np.float16).ravel())
    np.savez(tmp_path / "two.npz", image=source, mask=source > 0.5)
    flat, stats = npz_to_float16(str(tmp_path / "two.npz"), array="mask")
    assert stats.source_dtype == "bool" and flat.sum() == (source > 0.5).sum()
    with pytest.raises(VolumeReadError, match="2 arrays"):
        npz_to_float16(str(tmp_path / "two.npz"))
    with pytest.raises(VolumeReadError, match="no array 'x'"):
        npz_to_float16(str(tmp_path / "two.npz"), array="x")


def test_damaged_files_are_read_errors(tmp_path):
    saved(tmp_path, np.ones((4, 4), np.float32))
    data = (tmp_path / "v.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:-60])
    damaged = bytearray(data)
    damaged[100] ^= 0xFF  # inside the array data: the CRC catches it
    (tmp_path / "flipped.npz").write_bytes(bytes(damaged))
    for name in ("cut.npz", "flipped.npz"):
        with pytest.raises(VolumeReadError) as error:
            npz_to_float16(str(tmp_path / name))
        assert error.value.reason == "unreadable_volume"


def test_deflated_members_read_as_zipfile_reads_them(tmp_path):
    """fastwds inflates .npz members itself (in Rust): the bytes are zipfile's, for any
    compression level and read size, and damage zipfile would report is an unreadable volume."""
    import zipfile

    from fastwds.volume import open_member

    rng = np.random.default_rng(0)
    payload = np.concatenate([np.zeros(30_000, np.float32), rng.normal(size=50_000).astype(np.float32)]).tobytes()
    for level in (0, 1, 6, 9):
        path = tmp_path / f"level{level}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
            archive.writestr("arr_0.npy", payload)
        for size in (1, 4099, 1 << 20):
            with zipfile.ZipFile(path) as archive, open_member(archive, "arr_0.npy") as member:
                assert type(member).__name__ == "DeflatedMember"
                pieces = []
                while piece := member.read(size):
                    pieces.append(bytes(piece))
            assert b"".join(pieces) == payload, (level, size)

    source = np.linspace(-3, 3, 20_000, dtype=np.float32).reshape(1, 100, 200)
    data = bytearray(Path(saved(tmp_path, source, "good.npz", compressed=True)).read_bytes())
    with zipfile.ZipFile(tmp_path / "good.npz") as archive:
        info = archive.getinfo("arr_0.npy")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    central = data.rfind(b"PK\x01\x02")
    damaged = {
        "cut": bytes(data[:central + 20]) + (info.compress_size // 2).to_bytes(4, "little") + bytes(data[central + 24:]),
        "flipped": bytes(data[:start + 500]) + bytes([data[start + 500] ^ 0x10]) + bytes(data[start + 501:]),
        "crc": bytes(data[:central + 16]) + (info.CRC ^ 1).to_bytes(4, "little") + bytes(data[central + 20:]),
        "longer": bytes(data[:central + 24]) + (info.file_size - 8).to_bytes(4, "little") + bytes(data[central + 28:]),
        "shorter": bytes(data[:central + 24]) + (info.file_size + 8).to_bytes(4, "little") + bytes(data[central + 28:]),
    }
    for name, content in damaged.items():
        (tmp_path / f"{name}.npz").write_bytes(content)
        with pytest.raises(VolumeReadError) as error:
            npz_to_float16(str(tmp_path / f"{name}.npz"))
        assert error.value.reason == "unreadable_volume", name
    flat, _ = npz_to_float16(str(tmp_path / "good.npz"))
    np.testing.assert_array_equal(flat, source.astype(np.float16).ravel())


def test_zstd_member_decompresses_to_the_npy_bytes(tmp_path):
    import zstandard

    flat, stats = npz_to_float16(saved(tmp_path, np.linspace(-1, 1, 1000, dtype=np.float32).reshape(1, 10, 100)))
    plain = npy_member(flat, stats.shape, stats.fortran_order)
    packed = npy_member(flat, stats.shape, stats.fortran_order, zstd_level=3)
    assert len(packed) < len(plain)
    assert zstandard.ZstdDecompressor().decompress(packed) == plain
    assert npy_member(flat, stats.shape, stats.fortran_order, zstd_level=3) == packed  # deterministic


def test_integer_float16_rounding_matches_numpys_cast_bit_for_bit():
    """round_to_float16 replaces numpy's float32 -> float16 cast on the fast path: for every
    float16 value's neighbourhood (each exponent and 10-bit mantissa, with the low bits at and
    around the rounding tie, both signs) and random patterns, the same float16 bits and float32
    values as numpy."""
    from fastwds.volume import round_to_float16

    top = np.arange(0, 0x47800000 >> 13, dtype=np.uint32) << 13
    rng = np.random.default_rng(3)
    patterns = [top | low for low in (0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF)]
    patterns.append(rng.integers(0, 0x477FF000, size=1_000_000, dtype=np.uint32))
    for bits in patterns:
        for sign in (0, 0x80000000):
            values = (bits | np.uint32(sign)).view(np.float32)
            values = values[np.abs(values) < 65520]
            expected = values.astype(np.float16)
            out = np.empty_like(expected)
            widened = round_to_float16(values, out)
            assert np.array_equal(out.view(np.uint16), expected.view(np.uint16))
            assert np.array_equal(widened.view(np.uint32), expected.astype(np.float32).view(np.uint32))
