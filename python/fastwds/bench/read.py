"""``fastwds bench read``: the same volumes read as NPZ float32 files (``np.load``, the floor: what
the seed pipeline does) and as fastwds float16 shards (``fastwds.WebDataset`` raw and decoded,
in the process and through a DataLoader with workers), and through ``webdataset.WebDataset`` from
the same shards (the peer: raw iteration, and with its decoder).

Without ``--npz`` the volumes are generated (uniform in [-1, 1], ``--shape``), converted with
``fastwds convert npz`` into a temporary folder, and removed afterwards. With ``--npz DIR`` the
first ``--volumes`` volumes of that folder are converted and read.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fastwds.arguments import positive
from fastwds.bench.harness import Clock, Runner, Suite, run_suite
from fastwds.convert.run import convert
from fastwds.sources import get_source
from fastwds.sources.npz import NpzOptions, find_volumes

log = logging.getLogger(__name__)

HELP = "read the same volumes as NPZ float32 (np.load), as fastwds float16 shards and through webdataset"
SEED = 0
FLOOR = "NPZ float32 np.load"
PEER = "webdataset.WebDataset raw"


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a shape: {text!r} (example: 1,64,128,128)") from None
    if not shape or any(n < 1 for n in shape):
        raise argparse.ArgumentTypeError(f"not a shape: {text!r} (example: 1,64,128,128)")
    return shape


def parse_workers(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of worker counts: {text!r} (example: 0,2)") from None
    if any(n < 0 for n in counts):
        raise argparse.ArgumentTypeError("worker counts cannot be negative")
    return counts


def generate_volumes(folder: Path, count: int, shape: tuple[int, ...]) -> None:
    """``count`` float32 volumes of ``shape``, uniform in [-1, 1] like normalised CT, as npz."""
    rng = np.random.default_rng(SEED)
    folder.mkdir(parents=True)
    for number in range(count):
        volume = rng.uniform(-1, 1, shape).astype(np.float32)
        np.savez(folder / f"volume_{number:05d}.npz", volume)


def convert_volumes(npz_dir: Path, out_dir: Path, volumes: int, per_shard: int,
                    compress: Literal["zstd"] | None) -> dict:
    source = get_source("npz")
    options = source.convert_options(max_samples_per_shard=per_shard, max_shard_bytes=1 << 40,
                                     source_options=NpzOptions(compress=compress), limit=volumes, fsync=False)
    return convert(source.plan(npz_dir, options), out_dir, options, command="bench read", show_progress=False)


# ---- runners (each runs in its own process; see harness.py) ------------------------------------

def _check(count: int, args: dict[str, Any]) -> None:
    """A fast but wrong run must not win: every volume arrives, once."""
    if count != args["volumes"]:
        raise RuntimeError(f"read {count} volumes, the benchmark has {args['volumes']}")


def _check_volume(volume: Any, args: dict[str, Any]) -> None:
    if tuple(volume.shape) != tuple(args["shape"]):
        raise RuntimeError(f"a volume has shape {tuple(volume.shape)}, expected {tuple(args['shape'])}")


def _result(count: int, args: dict[str, Any], size_key: str) -> dict[str, Any]:
    _check(count, args)
    return {"samples": count, "bytes": args[size_key], "outputs": None}


def npz_load(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    count = 0
    with clock:
        for path in args["npz_files"]:
            with np.load(path) as archive:
                volume = archive[archive.files[0]]
            _check_volume(volume, args)
            count += 1
    return _result(count, args, "npz_bytes")


class _NpzFiles:
    """A map-style dataset of NPZ files: how the seed pipeline feeds a DataLoader."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        with np.load(self.paths[index]) as archive:
            return archive[archive.files[0]]


def npz_dataloader(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    loader = DataLoader(_NpzFiles(args["npz_files"]), batch_size=None, num_workers=args["workers"],
                        prefetch_factor=args["prefetch"])
    count = 0
    with clock:
        for volume in loader:
            _check_volume(volume, args)
            count += 1
    return _result(count, args, "npz_bytes")


def fastwds_iterate(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    import fastwds

    dataset = fastwds.WebDataset(args["manifest"], decode=args["decode"])
    volume_ext = args["volume_ext"]
    count = 0
    with clock:
        for sample in dataset:
            if args["decode"]:
                _check_volume(sample[volume_ext], args)
            elif not sample[volume_ext]:
                raise RuntimeError(f"{sample['__key__']}: empty volume member")
            count += 1
    return _result(count, args, "shard_bytes")


def fastwds_loader(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    import fastwds

    loader = fastwds.make_loader(args["manifest"], num_workers=args["workers"], prefetch_factor=args["prefetch"],
                                 decode=True)
    count = 0
    with clock:
        for sample in loader:
            _check_volume(sample[args["volume_ext"]], args)
            count += 1
    return _result(count, args, "shard_bytes")


def webdataset_iterate(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    import webdataset

    dataset = webdataset.WebDataset(args["shards"], shardshuffle=False, empty_check=False)
    if args["decode"]:
        dataset = dataset.decode()
    count = 0
    with clock, warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # it leaves closing shards to the GC
        for sample in dataset:
            if args["decode"]:
                _check_volume(sample["npy"], args)
            count += 1
    return _result(count, args, "shard_bytes")


def suite(args: dict[str, Any], workers: list[int], zstd_args: dict[str, Any] | None) -> Suite:
    runners = [Runner(FLOOR, f"{__name__}:npz_load", args)]
    runners += [Runner(f"NPZ float32 DataLoader w={w}", f"{__name__}:npz_dataloader", {**args, "workers": w},
                       requires=("torch",)) for w in workers if w > 0]
    runners += [Runner("fastwds float16 raw", f"{__name__}:fastwds_iterate", {**args, "decode": False}),
                Runner("fastwds float16 decoded", f"{__name__}:fastwds_iterate", {**args, "decode": True})]
    runners += [Runner(f"fastwds make_loader w={w} decoded", f"{__name__}:fastwds_loader", {**args, "workers": w},
                       requires=("torch",)) for w in workers if w > 0]
    if zstd_args is not None:
        runners.append(Runner("fastwds float16 .zst decoded", f"{__name__}:fastwds_iterate",
                              {**zstd_args, "decode": True}))
    runners += [Runner(PEER, f"{__name__}:webdataset_iterate", {**args, "decode": False}, requires=("webdataset",)),
                Runner("webdataset.WebDataset decoded", f"{__name__}:webdataset_iterate", {**args, "decode": True},
                       requires=("webdataset",))]
    shape = "x".join(map(str, args["shape"]))
    return Suite(
        name="read",
        description=f"{args['volumes']} volumes of {shape}: NPZ float32 ({args['npz_bytes'] / 1e6:,.1f} MB) vs "
                    f"fastwds float16 shards ({args['shard_bytes'] / 1e6:,.1f} MB, {args['per_shard']} per shard)",
        runners=runners,
        floor=FLOOR,
        peer=PEER,
        params={key: args[key] for key in ("volumes", "shape", "per_shard", "prefetch", "npz_bytes", "shard_bytes")}
        | {"workers": workers, "zstd_shard_bytes": zstd_args["shard_bytes"] if zstd_args else None},
        notes=[
            "x floor: speed-up over reading the NPZ float32 files with np.load (issue target: 3-8x); "
            "x peer: over webdataset.WebDataset iterating raw samples from the same shards (target >= 2x "
            "for 'fastwds float16 raw')",
            "MB/s: bytes of the files read (npz files or shards) per second",
            "the files sit in the page cache after the warm-up round, so this measures the cost of reading "
            "and decoding; on cold storage the shards' smaller size saves disk time on top",
            "'w=N': a torch DataLoader with N worker processes and prefetch_factor "
            f"{args['prefetch']}, samples one by one (batch_size=None); its time includes starting the "
            "workers and torch copying every tensor into shared memory to hand it to this process",
        ],
        findings=_findings,
    )


def _findings(summaries: dict[str, dict[str, Any] | None]) -> list[str]:
    def rate(name: str) -> float | None:
        summary = summaries.get(name)
        return summary["samples_per_s"] if summary else None

    lines = []
    for name, reference in (("fastwds float16 raw", PEER), ("fastwds float16 decoded", FLOOR),
                            ("fastwds float16 decoded", "webdataset.WebDataset decoded")):
        ours, theirs = rate(name), rate(reference)
        if ours and theirs:
            lines.append(f"{name} vs {reference}: {ours / theirs:.2f}x")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--volumes", type=positive(int), default=32, metavar="N",
                        help="volumes to read (default: %(default)s)")
    parser.add_argument("--shape", type=parse_shape, default=(1, 64, 128, 128),
                        help="shape of generated volumes (default: 1,64,128,128; CT-RATE is 1,240,480,480)")
    parser.add_argument("--npz", metavar="DIR", help="read your own NPZ volumes (the first --volumes of them)")
    parser.add_argument("--samples-per-shard", type=positive(int), default=4, metavar="N",
                        help="volumes per shard (default: %(default)s; workers split shards, so have several)")
    parser.add_argument("--workers", type=parse_workers, default=[0, 2], metavar="LIST",
                        help="DataLoader worker counts; 0 means iterating in the process (default: 0,2)")
    parser.add_argument("--prefetch", type=positive(int), default=2, metavar="N",
                        help="DataLoader prefetch_factor (default: %(default)s)")
    parser.add_argument("--zstd", action="store_true", help="also read shards written with --compress zstd")


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="fastwds-bench-read-", dir=args.dir) as tmp:
        npz_dir = Path(args.npz) if args.npz else Path(tmp, "npz")
        if not args.npz:
            log.info("generating %d volumes of %s", args.volumes, args.shape)
            generate_volumes(npz_dir, args.volumes, args.shape)
        npz_files = [str(npz_dir / entry.relative) for entry in find_volumes(str(npz_dir))[:args.volumes]]
        manifests = {}
        for compress in ("zstd",) if args.zstd else ():
            manifests[compress] = convert_volumes(npz_dir, Path(tmp, "zstd"), args.volumes, args.samples_per_shard,
                                                  compress)
        manifest = convert_volumes(npz_dir, Path(tmp, "shards"), args.volumes, args.samples_per_shard, None)
        if manifest["totals"]["samples"] != len(npz_files):
            raise RuntimeError(f"converted {manifest['totals']['samples']} of {len(npz_files)} volumes: "
                               f"{manifest['invalid_by_reason']}")
        with np.load(npz_files[0]) as archive:
            shape = list(archive[archive.files[0]].shape)
        common = {"volumes": len(npz_files), "shape": shape, "per_shard": args.samples_per_shard,
                  "prefetch": args.prefetch, "npz_files": npz_files,
                  "npz_bytes": sum(Path(p).stat().st_size for p in npz_files)}
        bench_args = {**common, **_shard_args(Path(tmp, "shards"), manifest, "npy")}
        zstd_args = ({**common, **_shard_args(Path(tmp, "zstd"), manifests["zstd"], "npy.zst")}
                     if args.zstd else None)
        try:
            return run_suite(suite(bench_args, args.workers, zstd_args), repeat=args.repeat,
                             json_path=args.report, as_json=args.json, workdir=args.dir)
        finally:
            if not args.npz:
                shutil.rmtree(npz_dir, ignore_errors=True)


def _shard_args(folder: Path, manifest: dict, volume_ext: str) -> dict[str, Any]:
    return {"manifest": str(folder / "manifest.json"), "volume_ext": volume_ext,
            "shards": [str(folder / s["name"]) for s in manifest["shards"]],
            "shard_bytes": sum(s["bytes"] for s in manifest["shards"])}
