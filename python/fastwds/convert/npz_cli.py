"""``fastwds convert npz``: arguments and run. Accepts the seed script's flag names
(``--data_folder``, ``--reports_file``, ``--meta_file``, ``--labels_file``, ``--output_dir``,
``--samples_per_shard``, ``--num_workers``, ``--test_mode``) as well as the dashed ones."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from fastwds.convert.cli import add_common_arguments, options_from, parse_size, positional_or_flag, print_summary
from fastwds.convert.run import convert
from fastwds.sources.npz import ON_OVERFLOW, NpzOptions, plan_npz

TEST_MODE_VOLUMES = 100
DEFAULT_SAMPLES_PER_SHARD = 100
# 100 float16 CT-RATE volumes (1x240x480x480) are ~11 GB: the byte cap must not cut them first.
DEFAULT_MAX_SHARD_SIZE = "16GB"

DESCRIPTION = """Convert NPZ volumes plus CSV tables (reports, metadata, labels) keyed by VolumeName
into float16 WebDataset shards. Volumes are found as DATA/*.npz, DATA/PATIENT/*.npz or
DATA/PATIENT/ACCESSION/*.npz. Each sample: KEY.npy (float16 volume, or KEY.npy.zst with
--compress zstd), KEY.json (report, metadata, labels, float16 precision statistics) and
KEY.labels.npy (float32 label vector, column order in manifest.json stats.labels)."""


def add_npz_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_folder", nargs="?", help="folder of .npz volumes")
    parser.add_argument("output_dir", nargs="?", help="folder for the shards")
    parser.add_argument("--data_folder", "--data-folder", dest="data_folder_flag", help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir_flag", help=argparse.SUPPRESS)
    parser.add_argument("--reports", "--reports_file", "--reports-file", metavar="CSV",
                        help="reports CSV (text columns go to the sample JSON under 'report')")
    parser.add_argument("--meta", "--meta_file", "--meta-file", "--metadata", metavar="CSV",
                        help="metadata CSV (JSON 'metadata')")
    parser.add_argument("--labels", "--labels_file", "--labels-file", metavar="CSV",
                        help="multi-label CSV: every column but the key is a numeric label")
    parser.add_argument("--key-column", "--key_column", default="VolumeName",
                        help="the CSVs' key column (default VolumeName); 'x.nii.gz' matches x.npz")
    parser.add_argument("--array", default=None,
                        help="name of the array inside each .npz (default: the only one)")
    parser.add_argument("--samples_per_shard", "--samples-per-shard", type=int, dest="max_samples_per_shard", metavar="N",
                        help=f"volumes per shard (default {DEFAULT_SAMPLES_PER_SHARD})")
    parser.add_argument("--on-overflow", "--on_overflow", choices=ON_OVERFLOW, default="skip",
                        help="volumes with NaN, inf or values beyond float16's +-65504: skip (default; listed "
                             "in rejects.jsonl), clip (NaN -> 0, others -> +-65504, counted per volume) or fail")
    parser.add_argument("--compress", choices=("zstd",), default=None,
                        help="store volumes as KEY.npy.zst (fastwds.WebDataset and HF datasets decompress it)")
    parser.add_argument("--zstd-level", "--zstd_level", type=int, default=3, help="zstd level (default 3)")
    parser.add_argument("--strict", action="store_true",
                        help="fail when anything would go to rejects.jsonl: volumes without CSV rows and CSV "
                             "rows without volumes (checked before converting), then any rejected volume")
    parser.add_argument("--test_mode", "--test-mode", action="store_true",
                        help=f"convert the first {TEST_MODE_VOLUMES} volumes only")
    add_common_arguments(parser)
    parser.set_defaults(max_samples_per_shard=DEFAULT_SAMPLES_PER_SHARD,
                        max_shard_size=parse_size(DEFAULT_MAX_SHARD_SIZE))
    for action in parser._actions:  # the shared help states the parquet defaults
        if action.dest == "max_samples_per_shard":
            action.help = f"volumes per shard (default {DEFAULT_SAMPLES_PER_SHARD})"
        elif action.dest == "max_shard_size":
            action.help = f"hard cap on a shard file's size (default {DEFAULT_MAX_SHARD_SIZE})"


def _absolute(path: str | None) -> str | None:
    """CSV paths are options a resumed run must repeat: absolute, so the spelling cannot differ."""
    return os.path.abspath(path) if path else None


def run_npz(args: argparse.Namespace) -> int:
    data_folder = positional_or_flag(args, "data_folder")
    output_dir = positional_or_flag(args, "output_dir")
    npz = NpzOptions(reports=_absolute(args.reports), meta=_absolute(args.meta), labels=_absolute(args.labels),
                     key_column=args.key_column, array=args.array, on_overflow=args.on_overflow,
                     compress=args.compress, zstd_level=args.zstd_level)
    options = options_from(args, npz)
    limit = options.limit
    if args.test_mode:
        limit = min(limit, TEST_MODE_VOLUMES) if limit is not None else TEST_MODE_VOLUMES
    # One volume per batch and queues one deep: memory stays at a few volumes per worker
    # (see fastwds.sources.npz). The image thread pool has nothing to do here.
    options = replace(options, limit=limit, batch_rows=1, queue_batches=1, image_threads=1,
                      on_invalid="fail" if args.strict else options.on_invalid)
    plan = plan_npz(data_folder, npz, options.max_samples_per_shard, options.max_shard_bytes, limit,
                    strict=args.strict)
    manifest = convert(plan, output_dir, options, command="convert npz", resume=args.resume,
                       overwrite=args.overwrite, show_progress=not args.no_progress and not args.json)
    print_summary(manifest, output_dir, as_json=args.json)
    if not args.json:
        print_npz_summary(manifest)
    return 0


def print_npz_summary(manifest: dict) -> None:
    stats = manifest["stats"]
    sizes, precision, csv = stats["bytes"], stats["precision"], stats["csv"]
    rows = [("input (npz)", f"{sizes['input_written'] / 1e6:,.1f} MB of volumes written"),
            ("output (shards)", f"{sizes['output'] / 1e6:,.1f} MB"
             + (f" ({sizes['compression_ratio']:.2f}x smaller, {sizes['space_saved_fraction']:.0%} saved)"
                if sizes["compression_ratio"] else ""))]
    if precision["max_abs_error"] is not None:
        rows.append(("float16 error", f"max {precision['max_abs_error']:.3g} "
                                      f"({precision['max_abs_error_volume']}), RMSE {precision['rmse']:.3g}"))
    problems = [f"{precision[n]:,} {n}" for n in ("nan", "posinf", "neginf", "overflow", "clipped") if precision[n]]
    if problems:
        rows.append(("non-finite/overflow", ", ".join(problems)))
    if csv["rows_ignored"]:
        rows.append(("CSV rows ignored", ", ".join(f"{n:,} {r}" for r, n in csv["rows_ignored_by_reason"].items())
                     + " (in rejects.jsonl)"))
    rows.append(("per volume", stats["volumes_file"]))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def add_npz_parser(sources: argparse._SubParsersAction) -> None:
    npz = sources.add_parser("npz", help="NPZ volumes + CSV reports/metadata/labels -> float16 shards",
                             description=DESCRIPTION)
    add_npz_arguments(npz)
    npz.set_defaults(run=run_npz)
