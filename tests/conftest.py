"""Shared helpers: reading shards back with the standard library's tarfile, independent of fastwds."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@dataclass
class TarMember:
    name: str
    offset: int  # first header block
    offset_data: int
    size: int
    data: bytes


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``fastwds ARGS...`` as a user runs it; with ``check``, a non-zero exit fails with its output."""
    result = subprocess.run([sys.executable, "-m", "fastwds", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def crafted_tar(path: str | Path, members: dict[str, bytes]) -> str:
    """A plain ustar shard with exactly these members, in this order (names as given)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def read_members(path: str | Path) -> list[TarMember]:
    with tarfile.open(path, "r:") as tar:
        return [
            TarMember(m.name, m.offset, m.offset_data, m.size, tar.extractfile(m).read())
            for m in tar.getmembers()
        ]


def tar_end_of_data(path: str | Path) -> int:
    """tarfile's offset after the last member: where the end-of-archive blocks start."""
    with tarfile.open(path, "r:") as tar:
        tar.getmembers()
        return tar.offset


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(width: int = 32, height: int = 32, mode: str = "RGBA", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGBA": 4, "RGB": 3, "L": 1}[mode]
    pixels = rng.integers(0, 255, (height, width, channels), dtype=np.uint8).squeeze()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=None).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def jpeg() -> bytes:
    return jpeg_bytes()


def read_webdataset(urls, decode: bool = False) -> list[dict]:
    """All samples of ``urls`` through webdataset.WebDataset. webdataset leaves its shard files
    for the garbage collector to close; collect them here, so the ResourceWarning it causes is not
    mistaken for a leak of ours (pytest turns warnings into errors)."""
    import gc
    import warnings

    import webdataset as wds

    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    if decode:
        dataset = dataset.decode()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        samples = list(dataset)
        del dataset
        gc.collect()
    return samples
