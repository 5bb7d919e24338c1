"""``fastwds convert parquet``: arguments, summary table, exit codes. Flags accept the seed
script's spellings (``--input_dir``) as well as the dashed ones."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

from fastwds.convert.options import ON_INVALID, ConvertOptions
from fastwds.convert.run import convert
from fastwds.errors import InvalidInputError
from fastwds.sources.parquet import ParquetColumns, plan_parquet

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """``3GB``, ``500MiB``, ``1e9`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 3GB, 500MiB, 1000000)")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def default_workers() -> int:
    """One worker process per two cores: one task's pipeline already keeps about two cores busy
    (the reading thread, validation, the writer and its sha256 thread; in full verification two
    decoding threads). Measured on 2 cores (12k LLaVA rows, `fastwds bench convert`): one process
    did 1.3-1.6x the rows/s of two on the disk (two runs) and 1.45x on tmpfs, and finished full
    verification in 0.87x the time; a second process only adds its start-up (~0.5 s of imports)
    and contention for the same two cores."""
    return max(1, (os.cpu_count() or 1) // 2)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max_samples_per_shard", "--max-samples-per-shard", type=int, default=10_000,
                        dest="max_samples_per_shard", help="samples per shard (default 10000)")
    parser.add_argument("--max_shard_size", "--max-shard-size", type=parse_size, default=parse_size("3GB"),
                        dest="max_shard_size", help="hard cap on a shard file's size (default 3GB)")
    parser.add_argument("--num_workers", "--num-workers", type=int, default=default_workers(),
                        dest="num_workers", help="worker processes (default: one per two cores)")
    parser.add_argument("--resume", action="store_true",
                        help="finish an interrupted run; refuses if input or options changed")
    parser.add_argument("--overwrite", action="store_true", help="discard an earlier run in OUTPUT_DIR")
    invalid = parser.add_mutually_exclusive_group()
    invalid.add_argument("--on-invalid", "--on_invalid", choices=ON_INVALID, default="skip", dest="on_invalid",
                         help="invalid samples: skip (default, listed in rejects.jsonl), keep (written, "
                              "flagged in their JSON) or fail (stop at the first)")
    invalid.add_argument("--skip_invalid", "--skip-invalid", action="store_const", const="skip", dest="on_invalid")
    invalid.add_argument("--no-skip-invalid", "--no_skip_invalid", action="store_const", const="fail",
                         dest="on_invalid", help="same as --on-invalid fail")
    parser.add_argument("--dali-index", action="store_true", help="also write DALI .idx files")
    parser.add_argument("--limit", type=int, default=None, help="convert only the first N rows")
    parser.add_argument("--no-fsync", action="store_true",
                        help="skip fsync before renaming shards (faster; a power loss may lose recent shards)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    parser.add_argument("--log_level", "--log-level", default="INFO", dest="log_level",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper)


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of sources whose samples carry images."""
    parser.add_argument("--verify-images", "--verify_images", choices=("fast", "full"), default="fast",
                        help="fast: format, header and end marker (default); full: decode every image")
    parser.add_argument("--reencode", choices=("jpeg",), default=None,
                        help="re-encode images (default: original bytes pass through unchanged)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality with --reencode (default 90)")
    parser.add_argument("--max-side", "--max_side", type=int, default=None,
                        help="with --reencode: shrink so the longest side is at most this")


def add_parquet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input_dir", nargs="?", help="folder of parquet files (subfolders are subsets)")
    parser.add_argument("output_dir", nargs="?", help="folder for the shards")
    parser.add_argument("--input_dir", "--input-dir", dest="input_dir_flag", help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir_flag", help=argparse.SUPPRESS)
    defaults = ParquetColumns()
    for name in ("id", "image", "images", "conversations", "data_source"):
        flag = name.replace("_", "-")
        parser.add_argument(f"--{flag}-column", f"--{name}_column", dest=f"{name}_column",
                            default=getattr(defaults, name), help=f"column holding {name} (default {name!r})")
    add_common_arguments(parser)
    add_image_arguments(parser)


def options_from(args: argparse.Namespace, source_options: Any) -> ConvertOptions:
    """The options every source shares, from the common arguments."""
    if args.max_samples_per_shard < 1:
        raise InvalidInputError("--max-samples-per-shard must be at least 1")
    return ConvertOptions(
        max_samples_per_shard=args.max_samples_per_shard,
        max_shard_bytes=args.max_shard_size,
        on_invalid=args.on_invalid,
        # Sources without images (npz) do not have these arguments: the defaults apply.
        verify_images=getattr(args, "verify_images", "fast"),
        reencode=getattr(args, "reencode", None),
        quality=getattr(args, "quality", 90),
        max_side=getattr(args, "max_side", None),
        dali_index=args.dali_index,
        source_options=source_options,
        limit=args.limit,
        num_workers=max(1, args.num_workers),
        fsync=not args.no_fsync,
    )


def positional_or_flag(args: argparse.Namespace, name: str) -> str:
    value = getattr(args, f"{name}_flag") or getattr(args, name)
    if not value:
        raise InvalidInputError(f"{name.upper()} is required (positional, or --{name})")
    return value


def run_parquet(args: argparse.Namespace) -> int:
    input_dir = positional_or_flag(args, "input_dir")
    output_dir = positional_or_flag(args, "output_dir")
    columns = ParquetColumns(args.id_column, args.image_column, args.images_column,
                             args.conversations_column, args.data_source_column)
    options = options_from(args, columns)
    plan = plan_parquet(input_dir, columns, options.max_samples_per_shard, options.max_shard_bytes, options.limit)
    manifest = convert(plan, output_dir, options, command="convert parquet", resume=args.resume,
                       overwrite=args.overwrite, show_progress=not args.no_progress and not args.json)
    print_summary(manifest, output_dir, as_json=args.json)
    return 0


def print_summary(manifest: dict[str, Any], output_dir: str, as_json: bool) -> None:
    totals = manifest["totals"]
    if as_json:
        summary = {"output_dir": os.path.abspath(output_dir), **totals,
                   "invalid_by_reason": manifest["invalid_by_reason"],
                   "elapsed_seconds": manifest["elapsed_seconds"], "resumed": manifest["resumed"],
                   "shards": [s["name"] for s in manifest["shards"]]}
        if "stats" in manifest:  # a source's own totals (summarize hook), e.g. npz precision
            summary["stats"] = manifest["stats"]
        json.dump(summary, sys.stdout, indent=2)
        print()
        return
    seconds = max(manifest["elapsed_seconds"], 1e-9)
    rows = [("total rows", f"{totals['rows']:,}"), ("valid", f"{totals['rows'] - totals['invalid']:,}"),
            ("invalid", f"{totals['invalid']:,}")]
    rows += [(f"  {reason}", f"{count:,}") for reason, count in manifest["invalid_by_reason"].items()]
    if totals["invalid_kept"]:
        rows.append(("invalid kept (flagged)", f"{totals['invalid_kept']:,}"))
    rows += [("samples written", f"{totals['samples']:,}"), ("shards", f"{totals['shards']:,}"),
             ("bytes", f"{totals['bytes'] / 1e6:,.1f} MB"),
             ("time", f"{seconds:.1f} s ({totals['rows'] / seconds:,.0f} rows/s, "
                      f"{totals['bytes'] / seconds / 1e6:,.1f} MB/s)"),
             ("output", os.path.abspath(output_dir))]
    if totals["invalid"]:
        rows.append(("rejects", os.path.join(os.path.abspath(output_dir), "rejects.jsonl")))
    width = max(len(label) for label, _ in rows)
    print("fastwds convert: done" + (" (resumed)" if manifest["resumed"] else ""))
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    parquet = sources.add_parser("parquet", help="multimodal instruct parquet (LLaVA style)",
                                 description="Convert a folder of LLaVA-style parquet into validated shards.")
    add_parquet_arguments(parquet)
    parquet.set_defaults(run=run_parquet)
    from fastwds.convert.npz_cli import add_npz_parser  # imports this module: import on use

    add_npz_parser(sources)
    from fastwds.sources.sft_cli import register as add_sft_parser  # imports this module: import on use

    add_sft_parser(sources)
