"""``fastwds bench write``: the same in-memory samples written by fastwds (per sample and in
batches), by ``webdataset.ShardWriter`` (the peer) and by plain ``write()`` calls of the payload
bytes into one file (the floor: what the disk and page cache allow)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

import fastwds
from fastwds.arguments import positive
from fastwds.bench.harness import Clock, Runner, Suite, make_durable, run_suite, sha256_files

HELP = "write the same in-memory samples with fastwds, webdataset.ShardWriter and raw write()"
MAXCOUNT = 10_000
BATCH = 1_000
SEED = 0
EXTENSIONS = ("jpg", "json", "txt")
PATTERN = "shard-%06d.tar"
WORDS = ("a", "photo", "of", "the", "red", "small", "dog", "on", "beach", "city", "at", "night",
         "two", "people", "walking", "old", "house", "green", "field", "with", "mountains", "in",
         "view", "bright", "cat", "sleeping", "blue", "sky", "river", "painting")


def make_samples(count: int, payload_kb: float, seed: int = SEED) -> list[dict[str, Any]]:
    """``count`` webdataset-style samples, the same for every seed: a ``jpg`` of random bytes
    whose size varies between 0.66x and 1.34x ``payload_kb`` kB (the mean), LAION-style ``json``
    metadata of about 300 bytes and a ``txt`` caption of about 50 bytes, all as ``bytes``."""
    rng = np.random.default_rng(seed)
    mean = payload_kb * 1000
    sizes = rng.integers(int(mean * 0.66), int(mean * 1.34) + 1, size=count)
    words = rng.integers(len(WORDS), size=(count, 16))
    shapes = rng.integers(256, 1025, size=(count, 2))
    samples = []
    for i in range(count):
        key = f"sample{i:08d}"
        caption = " ".join(WORDS[w] for w in words[i])[:50]
        width, height = (int(v) for v in shapes[i])
        meta = {"key": key, "url": f"https://images.example.org/{i % 997:03d}/{key}.jpg",
                "caption": caption, "width": width, "height": height,
                "original_width": width * 2, "original_height": height * 2,
                "similarity": round(float(rng.random()), 4), "status": "success",
                "sha256": rng.bytes(32).hex()}
        samples.append({"__key__": key, "jpg": rng.bytes(int(sizes[i])),
                        "json": json.dumps(meta).encode(), "txt": caption.encode()})
    return samples


def _samples(args: dict[str, Any]) -> list[dict[str, Any]]:
    return make_samples(args["samples"], args["payload_kb"])


def _payload_bytes(samples: list[dict[str, Any]]) -> int:
    return sum(len(sample[ext]) for sample in samples for ext in EXTENSIONS)


def fastwds_write(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    """Drop-in usage: one ``ShardWriter.write(dict)`` per sample, default options (fsync on)."""
    samples = _samples(args)
    with clock:
        with fastwds.ShardWriter(str(out_dir / PATTERN), maxcount=MAXCOUNT) as writer:
            for sample in samples:
                writer.write(sample)
    written = sum(record.num_samples for record in writer.records or [])
    return {"samples": written, "bytes": _payload_bytes(samples), "outputs": sha256_files(out_dir)}


def fastwds_write_batch(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    """``ShardWriter.write_batch`` over columns of ``BATCH`` samples (built before the clock: a
    columnar source hands them over in that shape)."""
    samples = _samples(args)
    batches = []
    for start in range(0, len(samples), BATCH):
        chunk = samples[start:start + BATCH]
        batches.append(([s["__key__"] for s in chunk], {ext: [s[ext] for s in chunk] for ext in EXTENSIONS}))
    with clock:
        with fastwds.ShardWriter(str(out_dir / PATTERN), maxcount=MAXCOUNT) as writer:
            for ids, columns in batches:
                writer.write_batch(ids, columns)
    written = sum(record.num_samples for record in writer.records or [])
    return {"samples": written, "bytes": _payload_bytes(samples), "outputs": sha256_files(out_dir)}


def webdataset_write(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    """The peer, used the way its users do; it does not fsync, so the timed section does."""
    import webdataset

    samples = _samples(args)
    with clock:
        writer = webdataset.ShardWriter(str(out_dir / PATTERN), maxcount=MAXCOUNT)
        for sample in samples:
            writer.write(sample)
        writer.close()
        make_durable(out_dir)
    # webdataset stores the float time of writing as each member's mtime: not repeatable.
    return {"samples": writer.total, "bytes": _payload_bytes(samples), "outputs": None}


def raw_write(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    """The floor: the payload bytes back to back in one file, with no headers, keys or shards."""
    samples = _samples(args)
    payloads = [sample[ext] for sample in samples for ext in EXTENSIONS]
    with clock:
        with open(out_dir / "payload.bin", "wb") as f:
            for payload in payloads:  # ~61 kB each: measured faster written whole than in pieces
                f.write(payload)
        make_durable(out_dir)
    return {"samples": len(samples), "bytes": _payload_bytes(samples), "outputs": None}


def suite(samples: int, payload_kb: float) -> Suite:
    args = {"samples": samples, "payload_kb": payload_kb}
    floor, peer = "raw write() of the payloads", "webdataset.ShardWriter.write"
    return Suite(
        name="write",
        description=f"{samples:,} in-memory samples (jpg ~{payload_kb:g} kB of random bytes, "
                    f"json ~300 B, txt ~50 B), shards of {MAXCOUNT:,} samples",
        runners=[
            Runner("fastwds ShardWriter.write", f"{__name__}:fastwds_write", args, deterministic=True),
            Runner(f"fastwds ShardWriter.write_batch({BATCH:,})", f"{__name__}:fastwds_write_batch",
                   args, deterministic=True),
            Runner(peer, f"{__name__}:webdataset_write", args, requires=("webdataset",)),
            Runner(floor, f"{__name__}:raw_write", args),
        ],
        floor=floor,
        peer=peer,
        params={**args, "maxcount": MAXCOUNT, "batch": BATCH, "seed": SEED},
        notes=[
            "durable before the clock stops, for every runner: fastwds fsyncs each shard and its "
            "directory itself (default fsync=True); webdataset and the floor fsync their files and "
            "directory after closing them, inside the timed section",
            "building the samples and hashing the output are outside the timed section",
            "targets (foundation issue): fastwds >= 3x webdataset.ShardWriter (x peer) and "
            ">= 0.9x the floor (x floor)",
        ],
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=positive(int), default=12_000, metavar="N",
                        help="samples to write (default: %(default)s)")
    parser.add_argument("--payload-kb", type=positive(float), default=61, metavar="N",
                        help="mean jpg size in kB, 1 kB = 1000 bytes (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    return run_suite(suite(args.samples, args.payload_kb), repeat=args.repeat,
                     json_path=args.report, as_json=args.json, workdir=args.dir)

