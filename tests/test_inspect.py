"""``fastwds inspect``: samples, members, image sizes, JSON and mismatches of shards from
fastwds, `convert parquet`, webdataset and hand-written tars."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import jpeg_bytes, png_bytes, read_members
from defects import chat_json, chat_sample, tar_bytes, write_tar
from fastwds import ShardWriter
from fastwds.inspect import safe_target
from fastwds.synthetic import generate

JPEG = jpeg_bytes(64, 48)


def run_inspect(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastwds", "inspect", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def shown_keys(stdout: str) -> list[str]:
    return re.findall(r"^  sample \d+  key '([^']*)'", stdout, flags=re.M)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("converted")
    generate(base / "in", rows=30, broken_share=0.0, multi_image_share=0.3, seed=5)
    subprocess.run([sys.executable, "-m", "fastwds", "convert", "parquet", base / "in", base / "out",
                    "--max-samples-per-shard", "6", "--num-workers", "1", "--no-progress"],
                   check=True, capture_output=True, timeout=300)
    return base / "out"


def test_folder_shows_three_samples_by_default(converted):
    done = run_inspect(converted)
    assert done.returncode == 0, done.stderr
    first = sorted(converted.glob("*.tar"))[0]
    members = read_members(first)
    keys = list(dict.fromkeys(m.name.split(".", 1)[0] for m in members))
    assert shown_keys(done.stdout) == keys[:3]
    assert done.stdout.startswith(f"shard {first.name} ({first.stat().st_size:,} bytes)\n")
    # Every member of the first sample with its size, the image's real dimensions, the JSON.
    for m in members:
        if m.name.split(".", 1)[0] == keys[0]:
            assert re.search(rf"^    {re.escape(m.name)} +{m.size:,} B", done.stdout, flags=re.M), m.name
    document = json.loads(next(m.data for m in members if m.name == f"{keys[0]}.json"))
    image = document["images"][0]
    assert f"{image['format']} {image['width']}x{image['height']}" in done.stdout
    assert f'"id": "{document["id"]}"' in done.stdout
    assert "MISMATCH" not in done.stdout and "PROBLEM" not in done.stdout
    assert done.stdout.endswith(f"shown 3 sample(s) from {len(list(converted.glob('*.tar')))} shard(s)\n")


def test_n_spans_shards(converted):
    done = run_inspect(converted, "-n", "8")
    keys = shown_keys(done.stdout)
    assert len(keys) == 8 and len(set(keys)) == 8
    assert done.stdout.count("\nshard ") + done.stdout.startswith("shard ") == 2  # 6 per shard


def test_key_is_found_in_a_later_shard(converted):
    last = sorted(converted.glob("*.tar"))[-1]
    member = read_members(last)[-1]
    key = member.name.split(".", 1)[0]
    done = run_inspect(converted, key)
    assert done.returncode == 0, done.stderr
    assert shown_keys(done.stdout) == [key]
    assert done.stdout.startswith(f"shard {last.name} ")


def test_unknown_key_and_missing_path(converted, tmp_path):
    done = run_inspect(converted, "no-such-key")
    assert done.returncode == 1
    shards = len(list(converted.glob("*.tar")))
    assert done.stderr.strip() == f"fastwds: error: key 'no-such-key' not found in {shards} shard(s) of {converted}"
    done = run_inspect(tmp_path)
    assert done.returncode == 1 and "no shards" in done.stderr


def test_save_images(converted, tmp_path):
    done = run_inspect(converted, "-n", "30", "--save-images", tmp_path / "img")
    assert done.returncode == 0, done.stderr
    expected = {}
    for shard in sorted(converted.glob("*.tar")):
        for m in read_members(shard):
            if not m.name.endswith(".json"):
                expected[f"{shard.stem}/{m.name}"] = m.data
    saved = {p.relative_to(tmp_path / "img").as_posix(): p.read_bytes()
             for p in (tmp_path / "img").rglob("*") if p.is_file()}
    assert saved == expected
    assert f"saved {len(expected)} image(s)" in done.stdout


def test_mismatch_lines(tmp_path):
    members = [("a.jpg", JPEG), ("a.json", chat_json("a", 1, name=["0.jpg", "1.jpg"]))]
    members += [("b.0.jpg", JPEG), ("b.1.jpg", JPEG), ("b.json", chat_json("b", 2, tokens=1))]
    write_tar(tmp_path / "x.tar", members)
    done = run_inspect(tmp_path / "x.tar")
    assert done.returncode == 0
    lines = [line.strip() for line in done.stdout.splitlines() if "MISMATCH" in line]
    assert lines == [
        "MISMATCH: key a: JSON 'name' lists '0.jpg' but the sample has no such member (members: jpg, json)",
        "MISMATCH: key a: JSON 'name' lists '1.jpg' but the sample has no such member (members: jpg, json)",
        "MISMATCH: key a: image member 'jpg' is not listed in the JSON's 'name' ('0.jpg', '1.jpg')",
        "MISMATCH: key b: 1 <image> token(s) in the JSON but 2 image member(s) (0.jpg, 1.jpg)",
    ]
    assert len(shown_keys(done.stdout)) == 2  # a single shard: every sample by default


def test_webdataset_shard(tmp_path):
    import webdataset as wds

    with wds.ShardWriter(str(tmp_path / "w-%03d.tar"), maxcount=10, verbose=0) as writer:
        writer.write({"__key__": "one", "png": png_bytes(20, 10), "json": {"caption": "c" * 1000}, "txt": "hello"})
    done = run_inspect(tmp_path / "w-000.tar")
    assert done.returncode == 0, done.stderr
    assert "png 20x10" in done.stdout and '"hello"' in done.stdout
    assert "... [700 more chars]" in done.stdout  # long strings shortened
    full = run_inspect(tmp_path / "w-000.tar", "--full-json")
    assert '"' + "c" * 1000 + '"' in full.stdout


def test_brace_pattern_and_npy(tmp_path):
    import numpy as np

    with ShardWriter(str(tmp_path / "s-%02d.tar"), maxcount=1) as writer:
        for i in range(3):
            writer.write({"__key__": f"k{i}", "npy": np.zeros((i + 1, 4), dtype=np.float16)})
    done = run_inspect(tmp_path / "s-{00..01}.tar")
    assert shown_keys(done.stdout) == ["k0", "k1"]
    assert "npy float16 (2, 4)" in done.stdout


def test_damaged_shard_shows_what_precedes_the_damage(tmp_path):
    data = tar_bytes(chat_sample("a", JPEG) + chat_sample("b", JPEG))
    (tmp_path / "x.tar").write_bytes(data[: len(data) - 2 * 512 - 100])  # cut inside b.json
    done = run_inspect(tmp_path / "x.tar")
    assert done.returncode == 0
    assert shown_keys(done.stdout) == ["a", "b"]
    assert re.search(r"PROBLEM: tar_truncated at byte \d+: member 'b.json' is cut short", done.stdout)


def test_unsafe_names_are_not_saved(tmp_path):
    shard = tmp_path / "x.tar"
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("../evil.jpg", "ok/fine.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(JPEG)
            tar.addfile(info, io.BytesIO(JPEG))
    out = tmp_path / "out"
    done = run_inspect(shard, "--save-images", out)
    assert done.returncode == 0
    assert not (tmp_path / "evil.jpg").exists() and not (out / "evil.jpg").exists()
    assert (out / "x" / "ok" / "fine.jpg").read_bytes() == JPEG
    assert "unsafe path" in done.stderr and "refused 1 unsafe name(s)" in done.stdout


def test_safe_target(tmp_path):
    shard = Path("d/s-000.tar")
    assert safe_target(tmp_path, shard, "a/b", "jpg") == (tmp_path / "s-000" / "a" / "b.jpg").resolve()
    for key in ("../x", "/abs", "a/../../x", "a//b", "a\\b"):
        assert safe_target(tmp_path, shard, key, "jpg") is None, key
