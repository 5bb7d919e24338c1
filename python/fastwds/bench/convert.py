"""``fastwds bench convert``: a LLaVA-style parquet dataset turned into shards by fastwds (at each
``--workers`` count, and with ``--modes`` full image verification or JPEG re-encoding), by
``webdataset.ShardWriter`` fed by pyarrow (the peer), and merely read by pyarrow with every column
buffer written to one file (the floor: reading and writing with no checks, no headers, no shards);
with ``--modes full``, also Pillow decoding every image on one core, the reference for full
verification.

Without INPUT the dataset is generated (``fastwds.synthetic``) once per invocation in a temporary
folder, removed afterwards; with INPUT the benchmark uses the first ``--limit`` rows of it. INPUT may
also be an SFT .json/.jsonl file or a folder of NPZ volumes: their runners are in
``fastwds.bench.convert_sources``, and the parquet targets are not applied to them.
Every runner reads the same rows in the same order (fastwds's: subsets by name, files by name)
and is measured by the same payload, the image bytes of those rows, so MB/s compare directly.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fastwds.arguments import positive
from fastwds.bench import convert_sources as sources
from fastwds.bench.harness import (
    Clock,
    Runner,
    Suite,
    make_durable,
    manifest_shard_digests,
    run_suite,
    write_in_pieces,
)
from fastwds.bench.plot import plot_scaling, require_matplotlib
from fastwds.convert.cli import default_workers
from fastwds.convert.run import convert
from fastwds.cores import available_cores
from fastwds.errors import InvalidInputError, UsageError
from fastwds.sources import get_source
from fastwds.sources.npz import find_volumes
from fastwds.sources.parquet.plan import ParquetColumns, discover_subsets
from fastwds.synthetic import generate

log = logging.getLogger(__name__)

HELP = ("convert a parquet dataset (yours, or a generated LLaVA-style one), an SFT JSON file or an NPZ "
        "folder with fastwds, webdataset.ShardWriter and a raw read + write")
MAXCOUNT = 10_000  # samples per shard, for fastwds and the peer alike
DEFAULT_ROWS = 12_000
DEFAULT_LIMIT = 12_000
DEFAULT_BROKEN_SHARE = 0.03
DEFAULT_MULTI_IMAGE_SHARE = 0.05
# --modes name -> the ConvertOptions that differ from the defaults, and how the runner is named.
MODES = {
    "default": ({}, "fastwds convert"),
    "full": ({"verify_images": "full"}, "fastwds convert --verify-images full"),
    "reencode": ({"reencode": "jpeg"}, "fastwds convert --reencode jpeg"),
    # Shrinking is where pillow-simd's vectorised resampling pays (see --pillow-python).
    "resize": ({"reencode": "jpeg", "max_side": 256}, "fastwds convert --reencode jpeg --max-side 256"),
}
# The modes whose cost is Pillow's: run again under --pillow-python.
IMAGE_MODES = ("full", "reencode", "resize")
PEER = "webdataset.ShardWriter fed by pyarrow"
FLOOR = "pyarrow read + write all column buffers"
DECODE = "Pillow full decode, 1 core"
# The other kinds of INPUT: their peer and floor, and what the payload is.
KIND_PEER = {"sft": "webdataset.ShardWriter fed by json", "npz": "webdataset.ShardWriter fed by numpy float16"}
KIND_FLOOR = {"sft": "read + write the JSON and media bytes",
              "npz": "inflate + cast to float16 on every core, write the bytes"}
PAYLOAD = {"parquet": "images", "sft": "media files", "npz": ".npz files"}
# Targets (x floor, x peer) per input kind (issue 15): printed with the results, never asserted.
TARGETS = {"parquet": (0.9, 3.0), "sft": (0.8, 3.0), "npz": (0.9, 1.8)}
TARGET_FULL_X_DECODE = 1.9  # issue 15


# ---- the input, as every runner reads it -------------------------------------------------------

def input_kind(path: Path) -> str:
    """The kind of dataset at ``path``: "parquet" (a folder with parquet files), "npz" (a folder
    with .npz volumes and no parquet) or "sft" (a .json or .jsonl file)."""
    if path.is_file() and path.suffix.lower() in sources.SFT_SUFFIXES:
        return "sft"
    if path.is_dir():
        if next(path.rglob("*.parquet"), None) is None:
            try:
                find_volumes(str(path))
                return "npz"
            except InvalidInputError:
                pass
        return "parquet"  # discover_subsets says so clearly if the folder holds no parquet
    raise InvalidInputError(f"{path}: bench convert reads a folder of parquet files, a folder of .npz "
                            "volumes or an SFT .json/.jsonl file")


def read_batches(root: str, limit: int | None, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The first ``limit`` rows (all when None) in the order fastwds converts them, one record
    batch per row group. The batch that reaches the limit is decoded to that length, not sliced
    from a whole row group: the floor writes the buffers it holds, and must not write more rows."""
    remaining = limit
    folder, subsets = discover_subsets(root)
    for entries in subsets.values():
        for relative in (entry.relative for entry in entries):
            with pq.ParquetFile(Path(folder, relative)) as parquet:
                present = [c for c in columns if c in parquet.schema_arrow.names] if columns else None
                for group in range(parquet.num_row_groups):
                    if remaining == 0:
                        return
                    rows = parquet.metadata.row_group(group).num_rows
                    wanted = rows if remaining is None else min(rows, remaining)
                    if wanted == 0:
                        continue
                    got = 0
                    for batch in parquet.iter_batches(batch_size=wanted, row_groups=[group], columns=present):
                        batch = batch.slice(0, wanted - got)
                        got += batch.num_rows
                        yield batch
                        if got == wanted:
                            break
                    if remaining is not None:
                        remaining -= got


def image_arrays(batch: pa.RecordBatch, columns: ParquetColumns) -> list[pa.Array]:
    """The batch's image bytes as binary arrays (nulls where a row has none): the single-image
    column and the flattened image-list column, each a {bytes, path} struct or plain binary."""
    arrays = []
    names = batch.schema.names
    if columns.image in names:
        arrays.append(batch.column(columns.image))
    if columns.images in names:
        arrays.append(batch.column(columns.images).flatten())
    return [pc.struct_field(a, "bytes") if pa.types.is_struct(a.type) else a for a in arrays]


def payload_of(root: str, limit: int | None, columns: ParquetColumns) -> tuple[int, int]:
    """``(rows, image bytes)`` of the rows the benchmark converts."""
    rows = size = 0
    for batch in read_batches(root, limit, [columns.image, columns.images]):
        rows += batch.num_rows
        size += sum(pc.sum(pc.binary_length(array)).as_py() or 0 for array in image_arrays(batch, columns))
    return rows, size


# ---- runners (each runs in its own process; see harness.py) ------------------------------------

def fastwds_convert(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    """The library as ``fastwds convert parquet`` calls it: planning is part of the timed job."""
    if args.get("kind", "parquet") != "parquet":
        return sources.fastwds_convert(args, out_dir, clock, MODES[args["mode"]][0])
    source = get_source("parquet")
    options = source.convert_options(max_samples_per_shard=MAXCOUNT, source_options=ParquetColumns(),
                                     limit=args["limit"], num_workers=args["workers"], **MODES[args["mode"]][0])
    with engine_for(args) as engine:
        with clock:
            plan = source.plan(args["input"], options)
            manifest = convert(plan, out_dir, options, command="bench convert", show_progress=False, **engine)
    check_manifest(manifest, args)
    digests = manifest_shard_digests(manifest, out_dir)
    return {"samples": manifest["totals"]["samples"], "bytes": args["payload_bytes"], "outputs": digests}


@contextlib.contextmanager
def engine_for(args: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``convert``'s engine arguments for a runner. With ``--engine ray`` the runner starts a
    Ray instance on this machine with the CPUs the local engine's workers keep busy (about two
    each) and tasks of that size, so the two differ only by Ray's per-task costs; starting Ray is
    not timed."""
    if args.get("engine", "local") == "local":
        yield {}
        return
    import ray

    cpus = min(available_cores(), 2 * args["workers"])
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield {"engine": "ray", "engine_settings": {"task_cpus": cpus / args["workers"]}}
    finally:
        ray.shutdown()


def check_manifest(manifest: dict[str, Any], args: dict[str, Any]) -> None:
    """A fast but wrong run must not win: every row is accounted for and, on generated data,
    exactly the planted broken rows are rejected, for the planted reasons."""
    totals = manifest["totals"]
    if totals["rows"] != args["rows"]:
        raise RuntimeError(f"fastwds read {totals['rows']:,} rows, the benchmark has {args['rows']:,}")
    expected = args.get("expected_rejects")
    if expected is None:
        return
    wanted = args["rows"] - sum(expected.values())
    if totals["samples"] != wanted or manifest["invalid_by_reason"] != expected:
        raise RuntimeError(f"fastwds wrote {totals['samples']:,} samples, expected {wanted:,} "
                           f"({args['rows']:,} rows less the planted broken ones); rejected "
                           f"{manifest['invalid_by_reason']}, planted {expected}")


def webdataset_convert(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    """The peer, the way a conversion script uses it: rows from pyarrow, image bytes passed
    through (named jpg or png by their magic bytes), the conversation as json, no checks. It does
    not fsync, so the timed section does (fastwds fsyncs every shard)."""
    import webdataset

    columns = ParquetColumns()
    with clock:
        writer = webdataset.ShardWriter(str(out_dir / "shard-%06d.tar"), maxcount=MAXCOUNT, verbose=0)
        for batch in read_batches(args["input"], args["limit"]):
            for row in batch.to_pylist():
                sample = {"__key__": f"sample{writer.total:09d}"}
                single = row.get(columns.image)
                images = row.get(columns.images) or ([single] if single else [])
                for number, image in enumerate(images):
                    data = image["bytes"] if isinstance(image, dict) else image
                    extension = "png" if data and data.startswith(b"\x89PNG") else "jpg"
                    sample[extension if len(images) == 1 else f"{number}.{extension}"] = data or b""
                document = {"id": row.get(columns.id), "conversations": row.get(columns.conversations),
                            "data_source": row.get(columns.data_source)}
                sample["json"] = json.dumps(document).encode()
                writer.write(sample)
        writer.close()
        make_durable(out_dir)
    # webdataset stores the float time of writing as each member's mtime: not repeatable.
    return {"samples": writer.total, "bytes": args["payload_bytes"], "outputs": None}


def pyarrow_floor(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    """The floor: pyarrow reads every row group and every column, and the decoded buffers go to
    one file back to back; no headers, no keys, no checks."""
    rows = 0
    with clock:
        with open(out_dir / "columns.bin", "wb") as out:
            for batch in read_batches(args["input"], args["limit"]):
                for column in batch.columns:
                    for buffer in column.buffers():
                        if buffer is not None:
                            write_in_pieces(out, buffer)
                rows += batch.num_rows
        make_durable(out_dir)
    return {"samples": rows, "bytes": args["payload_bytes"], "outputs": None}


def pillow_decode(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    """The one-core decode rate: Pillow decodes every image of the rows, one after another in
    one thread. The bytes are read before the clock starts: only decoding is timed."""
    from PIL import Image

    columns = ParquetColumns()
    if args.get("kind") == "sft":
        images = sources.sft_images(args)
    else:
        images = [data for batch in read_batches(args["input"], args["limit"], [columns.image, columns.images])
                  for array in image_arrays(batch, columns) for data in array.to_pylist() if data]
    with clock:
        for data in images:
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.load()
            except Exception:  # the planted broken images: failing to decode them is the work too
                pass
    return {"samples": args["rows"], "bytes": args["payload_bytes"], "outputs": None}


# ---- the suite ---------------------------------------------------------------------------------

@dataclass
class BenchInput:
    """What the runners convert and how the table describes it."""

    kind: str
    path: str
    limit: int | None
    rows: int
    payload_bytes: int
    tasks: int
    description: str
    expected_rejects: dict[str, int] | None = None  # on generated data: planted reason -> rows
    params: dict[str, Any] = field(default_factory=dict)


def generated_input(folder: Path, rows: int, broken_share: float, multi_image_share: float,
                    seed: int) -> BenchInput:
    log.info("generating %s rows of LLaVA-style parquet in %s", f"{rows:,}", folder)
    dataset = generate(folder, rows=rows, broken_share=broken_share, multi_image_share=multi_image_share,
                       seed=seed)
    expected = dict(sorted(Counter(dataset.broken.values()).items()))
    found = describe(folder, None)
    if found.payload_bytes != dataset.image_bytes:  # both count the same images: a bug if not
        raise RuntimeError(f"payload {found.payload_bytes} != generated image bytes {dataset.image_bytes}")
    found.expected_rejects = expected
    found.description = (f"{rows:,} generated LLaVA-style rows ({len(dataset.broken):,} planted broken, "
                         f"~{multi_image_share:.0%} with two images; JPEG ~50-100 kB, some PNG; "
                         f"{found.payload_bytes / 1e6:,.1f} MB of images), shards of {MAXCOUNT:,} samples")
    found.params = {"generated": True, "rows": rows, "broken_share": broken_share,
                    "multi_image_share": multi_image_share, "seed": seed, "broken_rows": len(dataset.broken)}
    return found


def describe(path: Path, limit: int | None) -> BenchInput:
    kind = input_kind(path)
    if kind != "parquet":
        return describe_other(kind, path, limit)
    # Planning first: it names the file and the reason when the input cannot be converted.
    source = get_source("parquet")
    plan = source.plan(path, source.convert_options(max_samples_per_shard=MAXCOUNT, source_options=ParquetColumns(),
                                                    limit=limit))
    rows, payload = payload_of(str(path), limit, ParquetColumns())
    if rows == 0:
        raise InvalidInputError(f"{path}: no rows to convert")
    if rows != plan.total_rows:  # both count the rows the runners convert: a bug if they differ
        raise RuntimeError(f"{path}: {rows} rows read, {plan.total_rows} planned")
    tasks = len(plan.tasks)
    description = (f"the first {rows:,} rows of {path} ({payload / 1e6:,.1f} MB of images), "
                   f"shards of {MAXCOUNT:,} samples")
    return BenchInput(kind, str(path.resolve()), limit, rows, payload, tasks, description,
                      params={"generated": False, "input": str(path.resolve()), "limit": limit, "rows": rows})


def describe_other(kind: str, path: Path, limit: int | None) -> BenchInput:
    """An SFT file or an NPZ folder, planned as fastwds would (the plan names the file and the
    reason when it cannot be converted), with its rows and payload as the other runners read them."""
    if kind == "sft":
        plan = sources.plan_sft_input(str(path), limit, MAXCOUNT)
        rows, payload = sources.sft_payload(str(path), limit)
        unit, shards = "rows", f"shards of {MAXCOUNT:,} samples, Energon metadata"
    else:
        plan = sources.plan_npz_input(str(path), limit)
        rows, payload = sources.npz_payload(str(path), limit)
        unit, shards = "volumes", f"shards of {get_source('npz').convert_options().max_samples_per_shard:,} volumes, float16, no CSVs"
    if rows == 0:
        raise InvalidInputError(f"{path}: no {unit} to convert")
    if rows != plan.total_rows:  # both count the rows the runners convert: a bug if they differ
        raise RuntimeError(f"{path}: {rows} {unit} read, {plan.total_rows} planned")
    description = (f"the first {rows:,} {unit} of {path} ({payload / 1e6:,.1f} MB of {PAYLOAD[kind]}), {shards}")
    return BenchInput(kind, str(path.resolve()), limit, rows, payload, len(plan.tasks), description,
                      params={"generated": False, "kind": kind, "input": str(path.resolve()), "limit": limit,
                              "rows": rows})


def target_workers(workers: list[int] | None, mode: str = "default") -> int:
    """The worker count a mode runs with and the targets speak of: fastwds' default for the mode
    (what users get; one per core for the image modes) when ``workers`` is None or lists it,
    else the largest count listed."""
    default = default_workers(decoding=mode in IMAGE_MODES)
    return default if workers is None or default in workers else max(workers)


def default_mode_workers(workers: list[int] | None) -> list[int]:
    """The counts the default mode runs with: each one listed, or fastwds' default."""
    return workers or [default_workers()]


def build_suite(data: BenchInput, modes: list[str], workers: list[int] | None, engines: list[str] = ("local",),
                other_pillow: PillowBuild | None = None) -> Suite:
    common = {"kind": data.kind, "input": data.path, "limit": data.limit, "rows": data.rows,
              "payload_bytes": data.payload_bytes, "maxcount": MAXCOUNT}
    checks = {"expected_rejects": data.expected_rejects}
    chosen = target_workers(workers)
    runs = [("default", w) for w in default_mode_workers(workers)] if "default" in modes else []
    runs += [(mode, target_workers(workers, mode)) for mode in modes if mode != "default"]
    runners = [Runner(fastwds_name(mode, count), f"{__name__}:fastwds_convert",
                      {**common, **checks, "mode": mode, "workers": count}, deterministic=True)
               for mode, count in runs]
    if "ray" in engines:
        runners.append(Runner(ray_name(chosen), f"{__name__}:fastwds_convert",
                              {**common, **checks, "mode": "default", "workers": chosen, "engine": "ray"},
                              deterministic=True, requires=("ray",)))
    peer, floor = peer_and_floor(data.kind)
    if data.kind == "parquet":
        runners += [Runner(PEER, f"{__name__}:webdataset_convert", common, requires=("webdataset",)),
                    Runner(FLOOR, f"{__name__}:pyarrow_floor", common)]
    else:
        runners += [Runner(peer, f"{sources.__name__}:{data.kind}_peer", common, requires=("webdataset",)),
                    Runner(floor, f"{sources.__name__}:{data.kind}_floor", common)]
    if "full" in modes:
        runners.append(Runner(DECODE, f"{__name__}:pillow_decode", common))
    if other_pillow is not None:
        # The same image work under the other build, in the same interleaved rounds.
        twins = [runner for runner in runners if runner.name == DECODE or
                 runner.args.get("mode") in IMAGE_MODES and runner.args.get("engine") is None]
        runners += [replace(runner, name=f"{runner.name} [{other_pillow.name}]", python=other_pillow.python)
                    for runner in twins]
    return Suite(
        name="convert",
        description=data.description,
        runners=runners,
        floor=floor,
        peer=peer,
        params={**data.params, "modes": modes, "workers": default_mode_workers(workers), "maxcount": MAXCOUNT,
                "payload_bytes": data.payload_bytes, "shard_tasks": data.tasks},
        notes=notes(data),
        findings=lambda summaries: findings(summaries, modes, workers, data.kind, engines, other_pillow),
    )


@dataclass(frozen=True)
class PillowBuild:
    """Another interpreter's Pillow build (``--pillow-python``): its path and how it is named."""

    python: str
    name: str  # e.g. "pillow-simd 12.1.1.post0, libjpeg-turbo 2.1.5"


# Run under the other interpreter: which distribution provides PIL there (pillow-simd installs the
# same PIL package as Pillow), and its JPEG library. It must also have fastwds.
PILLOW_PROBE = """
import importlib.metadata as m, json, fastwds
from PIL import Image, features
installed = {d.metadata["Name"].lower() for d in m.distributions()}
names = [d for d in ("pillow-simd", "Pillow") if d.lower() in installed]
turbo = features.version("libjpeg_turbo")
print(json.dumps({"dist": names[0] if names else "PIL", "version": Image.__version__,
                  "jpeg": f"libjpeg-turbo {turbo}" if turbo else f"libjpeg {features.version('jpg')}"}))
"""


def pillow_build(python: str | None = None) -> PillowBuild:
    """The Pillow build of ``python`` (default: this interpreter); ``UsageError`` when that
    interpreter cannot run the benchmark's workers (no fastwds or no PIL there)."""
    command = [python or sys.executable, "-c", PILLOW_PROBE]
    try:
        completed = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    except OSError as error:
        raise UsageError(f"--pillow-python {python}: cannot run it: {error.strerror or error}") from None
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no error output"])[-1]
        raise UsageError(f"--pillow-python {python}: it cannot import fastwds and PIL ({last}); install "
                         "fastwds there first (see the README's pillow-simd section)")
    found = json.loads(completed.stdout.strip().splitlines()[-1])
    return PillowBuild(python or sys.executable, f"{found['dist']} {found['version']}, {found['jpeg']}")


def peer_and_floor(kind: str) -> tuple[str, str]:
    return (PEER, FLOOR) if kind == "parquet" else (KIND_PEER[kind], KIND_FLOOR[kind])


def fastwds_name(mode: str, workers: int) -> str:
    return f"{MODES[mode][1]}, {workers} worker{'s' if workers > 1 else ''}"


def ray_name(workers: int) -> str:
    return f"fastwds convert --engine ray (local Ray, {workers} task{'s' if workers > 1 else ''} at a time)"


def notes(data: BenchInput) -> list[str]:
    if data.kind != "parquet":
        return other_notes(data)
    checked = ("exactly the rows less the planted broken ones, rejected for the planted reasons"
               if data.expected_rejects is not None else "every row accounted for in the manifest")
    return [
        f"payload = the {data.payload_bytes / 1e6:,.1f} MB of images in those rows, the same for every "
        "runner, so MB/s ratios are time ratios; samples: fastwds counts the valid samples it wrote "
        "(rows less rejected), the others every row",
        "fastwds runs through the library (Source.plan + convert, default options but the worker "
        f"count): planning, validation, shards, manifest and fsync are timed; its {data.tasks} shard "
        f"task{'s' if data.tasks != 1 else ''} bound{'s' if data.tasks == 1 else ''} how many workers can "
        f"be busy; every run is checked: {checked}, shards byte-identical in every repetition",
        f"peer: webdataset.ShardWriter(maxcount={MAXCOUNT:,}) fed row by row from pyarrow, image bytes "
        "passed through (jpg/png by magic bytes), conversations as json, no validation; floor: pyarrow "
        "reads every row group and writes all column buffers to one file; both fsync their output "
        "inside the timed section, as fastwds does",
        "peak RSS of a run with worker processes is its largest single process (the runner or one "
        "worker), not their sum; webdataset imports torch, which is most of the peer's peak RSS",
    ]


def other_notes(data: BenchInput) -> list[str]:
    source = "plan_sft + convert, Energon metadata on as in `convert sft`" if data.kind == "sft" else \
        "plan_npz + convert, no CSVs, one volume per batch as in `convert npz`"
    peer = ("each row's media files read and written under their extension, the row as json"
            if data.kind == "sft" else "each volume np.load-ed, cast to float16 and np.save-d, with a small json")
    floor = ("the rows' JSON bytes and every media file they name (found before the clock starts) read and "
             "written to one file" if data.kind == "sft" else f"every volume np.load-ed and cast to float16 by "
             f"{available_cores()} processes (one per core), the bytes written to one file")
    return [
        f"payload = the {data.payload_bytes / 1e6:,.1f} MB of {PAYLOAD[data.kind]} of those "
        f"{'rows' if data.kind == 'sft' else 'volumes'}, the same for every runner, so MB/s ratios are time "
        "ratios; samples: fastwds counts the valid samples it wrote, the others every one",
        f"fastwds runs through the library ({source}): planning, validation, shards, manifest and fsync "
        f"are timed; {data.tasks} shard task{'s' if data.tasks != 1 else ''}; shards byte-identical in "
        "every repetition",
        f"peer: webdataset.ShardWriter, {peer}, no validation; floor: {floor}; both fsync their output "
        "inside the timed section, as fastwds does",
        "peak RSS of a run with worker processes is its largest single process (the runner or one "
        "worker), not their sum; webdataset imports torch, which is most of the peer's peak RSS",
    ]


def findings(summaries: dict[str, dict[str, Any] | None], modes: list[str], workers: list[int] | None,
             kind: str = "parquet", engines: list[str] = ("local",), other_pillow: PillowBuild | None = None) -> list[str]:
    """The scaling line and the targets, from the medians (printed, never asserted)."""
    lines = []

    def verdict(value: float, what: str, target: float) -> str:
        return f"{value:.2f}x {what} (target >= {target}x: {'met' if value >= target else 'NOT met'})"

    counts = default_mode_workers(workers)
    if "default" in modes and len(counts) > 1:
        rates = {w: summaries.get(fastwds_name("default", w)) for w in counts}
        parts = [f"{w} worker{'s' if w > 1 else ''} " + ("FAILED" if s is None else f"{s['samples_per_s']:,.0f}/s")
                 for w, s in rates.items()]
        first, last = rates[counts[0]], rates[counts[-1]]
        gain = f" ({last['samples_per_s'] / first['samples_per_s']:.2f}x)" if first and last else ""
        lines.append(f"scaling: {', '.join(parts)}{gain}")
    elif "default" in modes:
        lines.append("scaling: one worker count measured (--workers 1,2 compares)")
    if "default" in modes:
        name = fastwds_name("default", target_workers(workers))
        summary = summaries.get(name)
        if summary is None:
            lines.append(f"targets: no ratios, {name} failed")
        else:
            x_floor, x_peer = TARGETS[kind]
            parts = [verdict(summary[key], reference, target) if summary[key] is not None
                     else f"no ratio to {reference} (it failed)"
                     for key, reference, target in (("x_floor", "the floor", x_floor), ("x_peer", "the peer", x_peer))]
            lines.append(f"targets: {name} is {' and '.join(parts)}")
    if "ray" in engines:
        local, on_ray = summaries.get(fastwds_name("default", target_workers(workers))), \
            summaries.get(ray_name(target_workers(workers)))
        if local is None or on_ray is None:
            lines.append("ray: no ratio, a run failed")
        else:
            lines.append(f"ray: {on_ray['samples_per_s'] / local['samples_per_s']:.2f}x the local engine at the same "
                         "CPU count (the rest is Ray's per-task overhead: scheduling, a worker process per task, "
                         "progress through an actor)")
    if "full" in modes:
        name = fastwds_name("full", target_workers(workers, "full"))
        full, decode = summaries.get(name), summaries.get(DECODE)
        if full is None or decode is None:
            lines.append(f"full verify: no ratio to the one-core decode rate, {name if full is None else DECODE} failed")
        else:
            # MB/s, not samples/s: both handle every image, but fastwds counts only valid samples.
            ratio = full["mb_per_s"] / decode["mb_per_s"]
            reference = f"the one-core Pillow decode rate of {decode['mb_per_s']:,.1f} MB/s"
            lines.append(f"full verify: {name} at {full['mb_per_s']:,.1f} MB/s is "
                         f"{verdict(ratio, reference, TARGET_FULL_X_DECODE)}; the target is for 2 cores, "
                         f"this machine has {available_cores()}")
    if other_pillow is not None:
        lines.append(pillow_line(summaries, modes, workers, other_pillow))
    return lines


def pillow_line(summaries: dict[str, dict[str, Any] | None], modes: list[str], workers: list[int] | None,
                other: PillowBuild) -> str:
    """How the other Pillow build's runs compare with this interpreter's, run by run."""
    names = [fastwds_name(mode, target_workers(workers, mode)) for mode in modes if mode in IMAGE_MODES]
    names += [DECODE] if "full" in modes else []
    parts = []
    for name in names:
        mine, theirs = summaries.get(name), summaries.get(f"{name} [{other.name}]")
        ratio = "FAILED" if mine is None or theirs is None else f"{theirs['mb_per_s'] / mine['mb_per_s']:.2f}x"
        parts.append(f"{name}: {ratio}")
    return f"{other.name} against {pillow_build().name}: " + "; ".join(parts)


# ---- command line ------------------------------------------------------------------------------

def comma_list(parse_item: Any, choices: tuple[str, ...] | None = None) -> Any:
    """An argparse ``type=`` for ``a,b,c``: items parsed, checked, duplicates dropped, order kept."""
    def parse(text: str) -> list[Any]:
        items = []
        for raw in filter(None, (part.strip() for part in text.split(","))):
            item = parse_item(raw)
            if choices is not None and item not in choices:
                raise argparse.ArgumentTypeError(f"{raw!r} is not one of {', '.join(choices)}")
            if item not in items:
                items.append(item)
        if not items:
            raise argparse.ArgumentTypeError("give at least one value")
        return items
    return parse


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", metavar="INPUT",
                        help="a folder of parquet files, an SFT .json/.jsonl file or a folder of .npz "
                        "volumes to sample (default: generate a parquet dataset)")
    parser.add_argument("--limit", type=positive(int), metavar="N",
                        help=f"with INPUT: use its first N rows or volumes (default: {DEFAULT_LIMIT:,})")
    parser.add_argument("--rows", type=positive(int), metavar="N",
                        help=f"without INPUT: rows to generate (default: {DEFAULT_ROWS:,})")
    parser.add_argument("--broken-share", type=share, metavar="F",
                        help=f"without INPUT: share of broken rows (default: {DEFAULT_BROKEN_SHARE})")
    parser.add_argument("--multi-image-share", type=share, metavar="F",
                        help=f"without INPUT: share of rows with two images (default: {DEFAULT_MULTI_IMAGE_SHARE})")
    parser.add_argument("--seed", type=int, metavar="N", help="without INPUT: generator seed (default: 0)")
    parser.add_argument("--workers", type=comma_list(positive(int)), default=None,
                        metavar="N,N,...", help="fastwds worker counts; each one is a runner of the "
                        "default mode; the targets and the other modes use fastwds' default count for "
                        "the mode when it is listed, else the largest (default: fastwds' defaults, one "
                        "per two cores, one per core for full, reencode and resize)")
    parser.add_argument("--modes", type=comma_list(str, tuple(MODES)), default=["default"],
                        metavar="MODE,...", help="fastwds modes: default, full (--verify-images full, "
                        "also runs the one-core Pillow decode reference), reencode (--reencode jpeg), resize "
                        "(--reencode jpeg --max-side 256) (default: default)")
    parser.add_argument("--pillow-python", metavar="PYTHON",
                        help="also run the image modes (full, reencode, resize) and the decode reference under "
                        "this interpreter, e.g. a venv with pillow-simd and fastwds, and print the ratios "
                        "of the two Pillow builds")
    parser.add_argument("--engine", type=comma_list(str, ("local", "ray")), default=["local"], dest="engines",
                        metavar="ENGINE,...", help="local (default) and/or ray: ray adds a run on a Ray instance "
                        "started on this machine with the same CPUs, for the per-task overhead as a ratio")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also draw samples/s against workers (needs matplotlib)")


def run(args: argparse.Namespace) -> int:
    if args.plot:
        require_matplotlib()  # before anything runs: a missing install costs no benchmark time
    if args.pillow_python is not None:
        if not any(mode in IMAGE_MODES for mode in args.modes):
            raise UsageError("--pillow-python compares the image modes: add --modes full, reencode or resize")
        args.other_pillow = pillow_build(args.pillow_python)  # checked before any benchmark time is spent
    if args.input is not None:
        given = [flag for flag, value in (("--rows", args.rows), ("--broken-share", args.broken_share),
                                          ("--multi-image-share", args.multi_image_share),
                                          ("--seed", args.seed)) if value is not None]
        if given:
            raise InvalidInputError(f"{', '.join(given)}: only without INPUT (use --limit to sample INPUT)")
        if input_kind(Path(args.input)) == "npz" and args.modes != ["default"]:
            raise InvalidInputError(f"--modes {','.join(args.modes)}: NPZ input has no images to verify or "
                                    "re-encode; only the default mode applies")
        return run_on(describe(Path(args.input), args.limit or DEFAULT_LIMIT), args)
    if args.limit is not None:
        raise InvalidInputError("--limit samples INPUT; without INPUT, --rows sets the size")
    # Generated once for the whole invocation, removed afterwards (the runs only read it).
    with tempfile.TemporaryDirectory(prefix="fastwds-bench-convert-", dir=args.dir) as tmp:
        data = generated_input(
            Path(tmp, "data"), args.rows or DEFAULT_ROWS,
            DEFAULT_BROKEN_SHARE if args.broken_share is None else args.broken_share,
            DEFAULT_MULTI_IMAGE_SHARE if args.multi_image_share is None else args.multi_image_share,
            args.seed or 0)
        return run_on(data, args)


def run_on(data: BenchInput, args: argparse.Namespace) -> int:
    workers = sorted(args.workers) if args.workers else None
    suite = build_suite(data, args.modes, workers, args.engines, getattr(args, "other_pillow", None))
    on_report = (lambda report: draw(args.plot, report)) if args.plot else None
    return run_suite(suite, repeat=args.repeat, json_path=args.report, as_json=args.json, workdir=args.dir, on_report=on_report)


def draw(path: str, report: dict[str, Any]) -> None:
    points = sorted((r["args"]["workers"], r["summary"]["samples_per_s"]) for r in report["runners"]
                    if r["args"].get("mode") == "default" and r["summary"] is not None)
    if not points:
        print(f"no plot: no {MODES['default'][1]} run succeeded")
        return
    roles = {report["floor"]: "floor", report["peer"]: "peer"}
    references = {f"{roles[r['name']]}: {r['name']}": r["summary"]["samples_per_s"] for r in report["runners"]
                  if r["name"] in roles and r["summary"] is not None}
    plot_scaling(path, f"fastwds bench convert: {report['params']['rows']:,} rows", points, references)
    print(f"plot: {path}")
