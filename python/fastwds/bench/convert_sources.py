"""``fastwds bench convert`` on an SFT JSON/JSONL file or an NPZ folder: what the runners read
and the runners themselves (the parquet ones live in ``fastwds.bench.convert``).

Every runner of a kind converts the same first ``limit`` samples in fastwds' order and is
measured by the same payload: the media files those SFT rows name, or the .npz files of those
volumes. The peer is ``webdataset.ShardWriter`` fed the way a conversion script would feed it,
with no checks. The SFT floor reads the input bytes and writes them to one file; the NPZ floor
does the work no conversion can skip, with every core busy: each volume inflated and cast to
float16 by a pool of one process per core, the bytes written in order to one file. Both fsync
inside the timed section, as fastwds does.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastwds.bench.harness import Clock, make_durable, manifest_shard_digests, write_in_pieces
from fastwds.convert.options import ConvertOptions
from fastwds.convert.plan import Plan
from fastwds.convert.run import convert
from fastwds.cores import available_cores
from fastwds.sources import get_source
from fastwds.sources.npz import NpzOptions, find_volumes, volume_key
from fastwds.sources.sft import SftOptions
from fastwds.sources.sft.plan import resolve_media
from fastwds.sources.sft.rows import SftRow, iter_rows, parse_row

SFT_SUFFIXES = (".json", ".jsonl")


# ---- the input, as every runner reads it -------------------------------------------------------

@dataclass
class SftSample:
    value: Any  # the row as parsed (a Problem for a JSONL line that does not parse)
    media: list[str]  # resolved media paths (none for a row that is not a sample)


def sft_samples(path: str, limit: int | None) -> tuple[list[SftSample], int]:
    """The first ``limit`` rows in fastwds' order, and the bytes of the JSON file they occupy
    (from the file's start to the end of the last row)."""
    json_dir = str(Path(path).parent)
    samples, end = [], 0
    for _, byte_stop, value in iter_rows(str(path)):
        if limit is not None and len(samples) >= limit:
            break
        row = parse_row(value, "image")
        media = [resolve_media(p, json_dir, None) for p in row.paths] if isinstance(row, SftRow) else []
        samples.append(SftSample(value, media))
        end = byte_stop
    return samples, end


def file_size(path: str) -> int:
    """0 for a missing or unreadable media file: fastwds rejects that row, the others skip it."""
    try:
        return os.stat(path).st_size if os.path.isfile(path) else 0
    except OSError:
        return 0


def sft_payload(path: str, limit: int | None) -> tuple[int, int]:
    """``(rows, media bytes)`` of the rows the benchmark converts."""
    samples, _ = sft_samples(path, limit)
    return len(samples), sum(file_size(m) for s in samples for m in s.media)


def plan_sft_input(path: str, limit: int | None, maxcount: int) -> Plan:
    sft = get_source("sft")
    return sft.plan([path], sft.convert_options(source_options=SftOptions(), max_samples_per_shard=maxcount, limit=limit))


def npz_volumes(root: str, limit: int | None) -> list[str]:
    """The first ``limit`` volume files (relative to ``root``) in fastwds' order."""
    return [entry.relative for entry in find_volumes(str(root))][:limit]


def npz_payload(root: str, limit: int | None) -> tuple[int, int]:
    """``(volumes, .npz bytes)`` of the volumes the benchmark converts."""
    volumes = npz_volumes(root, limit)
    return len(volumes), sum(os.stat(Path(root, v)).st_size for v in volumes)


def plan_npz_input(root: str, limit: int | None) -> Plan:
    npz = get_source("npz")
    return npz.plan(root, npz.convert_options(source_options=NpzOptions(), limit=limit))


# ---- runners (each runs in its own process; see harness.py) ------------------------------------

def fastwds_options(args: dict[str, Any], mode_options: dict[str, Any]) -> ConvertOptions:
    """The options the CLI would use, from the source's own defaults and execution settings:
    ``convert sft`` writes Energon metadata and indexes by default; ``convert npz`` converts one
    volume per batch with queues one deep."""
    source = get_source(args["kind"])
    if args["kind"] == "sft":
        return source.convert_options(max_samples_per_shard=args["maxcount"], source_options=SftOptions(),
                                      limit=args["limit"], num_workers=args["workers"], energon_index=True,
                                      **mode_options)
    return source.convert_options(source_options=NpzOptions(), limit=args["limit"], num_workers=args["workers"])


def fastwds_convert(args: dict[str, Any], out_dir: Path, clock: Clock, mode_options: dict[str, Any]) -> dict[str, Any]:
    """The library as ``fastwds convert sft|npz`` calls it: planning is part of the timed job."""
    options = fastwds_options(args, mode_options)
    source = get_source(args["kind"])
    from fastwds.bench.convert import engine_for

    with engine_for(args) as engine:
        with clock:
            plan = source.plan([args["input"]] if args["kind"] == "sft" else args["input"], options)
            manifest = convert(plan, out_dir, options, command="bench convert", show_progress=False, **engine)
    totals = manifest["totals"]
    if totals["rows"] != args["rows"]:
        raise RuntimeError(f"fastwds read {totals['rows']:,} rows, the benchmark has {args['rows']:,}")
    digests = manifest_shard_digests(manifest, out_dir)
    return {"samples": totals["samples"], "bytes": args["payload_bytes"], "outputs": digests}


def read_media(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # missing or a folder: a script without checks would skip it (or crash)
        return None


def sft_peer(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    """The peer: the JSON rows parsed, each row's media files read and written as they are
    (named by their file extension), the row as json; no checks."""
    import webdataset

    with clock:
        samples, _ = sft_samples(args["input"], args["limit"])
        writer = webdataset.ShardWriter(str(out_dir / "shard-%06d.tar"), maxcount=args["maxcount"], verbose=0)
        for sample in samples:
            member = {"__key__": f"sample{writer.total:09d}"}
            for number, path in enumerate(sample.media):
                data = read_media(path)
                if data is not None:
                    extension = os.path.splitext(path)[1].lstrip(".").lower() or "bin"
                    member[extension if len(sample.media) == 1 else f"{number}.{extension}"] = data
            value = sample.value if isinstance(sample.value, (dict, list, str, int, float)) else None
            member["json"] = json.dumps(value).encode()
            writer.write(member)
        writer.close()
        make_durable(out_dir)
    return {"samples": writer.total, "bytes": args["payload_bytes"], "outputs": None}


def sft_floor(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    """The floor: the JSON bytes of the rows and every media file they name, read and written
    to one file back to back. Which files to read is found before the clock starts: only the
    reading and writing are timed."""
    samples, json_bytes = sft_samples(args["input"], args["limit"])
    paths = [m for s in samples for m in s.media]
    with clock:
        with open(out_dir / "bytes.bin", "wb") as out:
            with open(args["input"], "rb") as f:
                write_in_pieces(out, f.read(json_bytes))
            for path in paths:
                data = read_media(path)
                if data is not None:
                    write_in_pieces(out, data)
        make_durable(out_dir)
    return {"samples": len(samples), "bytes": args["payload_bytes"], "outputs": None}


def sft_images(args: dict[str, Any]) -> list[bytes]:
    """Every media file's bytes, for the one-core decode reference."""
    samples, _ = sft_samples(args["input"], args["limit"])
    return [data for s in samples for m in s.media if (data := read_media(m))]


def npz_peer(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    """The peer: each volume loaded with numpy, cast to float16 and saved as .npy bytes, with
    a small json; no checks for NaN, infinities or float16 overflow."""
    import webdataset

    with clock:
        defaults = get_source("npz").convert_options()
        writer = webdataset.ShardWriter(str(out_dir / "shard-%06d.tar"), maxcount=defaults.max_samples_per_shard,
                                        maxsize=defaults.max_shard_bytes, verbose=0)
        for relative in npz_volumes(args["input"], args["limit"]):
            with np.load(Path(args["input"], relative)) as archive:
                volume = archive[archive.files[0]]
            buffer = io.BytesIO()
            np.save(buffer, volume.astype(np.float16))
            document = {"id": volume_key(relative), "file": relative, "shape": list(volume.shape)}
            writer.write({"__key__": volume_key(relative), "npy": buffer.getvalue(),
                          "json": json.dumps(document).encode()})
        writer.close()
        make_durable(out_dir)
    return {"samples": writer.total, "bytes": args["payload_bytes"], "outputs": None}


def inflate_and_cast(path: str) -> bytes:
    with np.load(path) as archive:
        return archive[archive.files[0]].astype(np.float16).tobytes()


def npz_floor(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    """The floor: every volume inflated and cast to float16 by one process per core (np.load +
    astype, no checks, no statistics), its bytes written in order to one file."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    paths = [str(Path(args["input"], relative)) for relative in npz_volumes(args["input"], args["limit"])]
    with clock:
        with ProcessPoolExecutor(available_cores(), mp_context=multiprocessing.get_context("spawn")) as pool, \
                open(out_dir / "volumes.bin", "wb") as out:
            for data in pool.map(inflate_and_cast, paths):
                write_in_pieces(out, data)
        make_durable(out_dir)
    return {"samples": len(paths), "bytes": args["payload_bytes"], "outputs": None}
