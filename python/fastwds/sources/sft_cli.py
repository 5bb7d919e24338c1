"""``fastwds convert sft``: arguments and run. Shares the common conversion flags, option
building and summary with ``convert parquet``."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from fastwds.convert.cli import add_common_arguments, add_image_arguments, options_from, print_summary
from fastwds.convert.run import convert
from fastwds.energon import DEFAULT_SAMPLE_TYPE, ENERGON_VERSION, META_DIR, foreign_energon_meta, parse_split_ratio
from fastwds.errors import InvalidInputError
from fastwds.sources.sft import MEDIA_KINDS, SftOptions, plan_sft


def split_ratio_argument(text: str) -> str:
    try:
        parse_split_ratio(text)
    except InvalidInputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text.replace(" ", "")


def register(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "sft", help="SFT JSON/JSONL with image or video files (LLaVA / Megatron-Energon style)",
        description="Convert SFT JSON or JSONL files (samples with messages/conversations and image or "
                    "video paths) into validated shards, with Megatron-Energon metadata by default.")
    parser.add_argument("paths", nargs="+", metavar="DATA... OUTPUT_DIR",
                        help="JSON/JSONL files or globs, then the folder for the shards")
    parser.add_argument("--media", choices=MEDIA_KINDS, default="image",
                        help="image (keys image/images, <image> tokens; default) or video (video/videos, <video>)")
    parser.add_argument("--media-root", "--media_root", dest="media_root", default=None,
                        help="folder media paths are relative to (default: each JSON file's folder)")
    parser.add_argument("--energon", action=argparse.BooleanOptionalAction, default=True,
                        help=f"write .nv-meta/ and .tar.idx files so Megatron-Energon {ENERGON_VERSION} loads the "
                             "shards without `energon prepare` (default: on)")
    parser.add_argument("--split-ratio", "--split_ratio", dest="split_ratio", type=split_ratio_argument,
                        help="train,val,test shares of the shards in .nv-meta/split.yaml, cut like "
                             "`energon prepare --split-ratio` (default: all train)", default=None)
    parser.add_argument("--energon-sample-type", dest="sample_type", default=DEFAULT_SAMPLE_TYPE,
                        help="MODULE:CLASS of the Energon sample type in dataset.yaml, with fields messages, "
                             f"image, video, system (default {DEFAULT_SAMPLE_TYPE})")
    add_common_arguments(parser)
    add_image_arguments(parser)
    parser.set_defaults(run=run_sft)


def run_sft(args: argparse.Namespace) -> int:
    if len(args.paths) < 2:
        raise InvalidInputError("give at least one DATA file and then OUTPUT_DIR")
    *data, output_dir = args.paths
    if os.path.isfile(output_dir):
        raise InvalidInputError(f"{output_dir}: is a file; the last argument must be the output folder")
    if args.media_root is not None and not os.path.isdir(args.media_root):
        raise InvalidInputError(f"--media-root {args.media_root}: no such folder")
    if not args.energon and args.split_ratio is not None:
        raise InvalidInputError("--split-ratio describes Energon splits; it needs --energon")
    sft = SftOptions(media=args.media,
                     media_root=os.path.abspath(args.media_root) if args.media_root is not None else None,
                     energon=args.energon, split_ratio=args.split_ratio or "1,0,0",
                     sample_type=args.sample_type)
    if sft.energon and foreign_energon_meta(Path(output_dir)):  # refuse now, not after converting
        raise InvalidInputError(f"{os.path.join(output_dir, META_DIR)} was not written by fastwds; move it away, "
                                "or convert with --no-energon")
    options = replace(options_from(args, sft), energon_index=sft.energon)
    plan = plan_sft(data, sft, options.max_samples_per_shard, options.max_shard_bytes, options.limit)
    manifest = convert(plan, output_dir, options, command="convert sft", resume=args.resume,
                       overwrite=args.overwrite, show_progress=not args.no_progress and not args.json)
    print_summary(manifest, output_dir, as_json=args.json)
    if not args.json and "energon" in manifest:
        energon = manifest["energon"]
        splits = ", ".join(f"{part} {count}" for part, count in energon["splits"].items())
        print(f"  energon: {os.path.join(os.path.abspath(output_dir), energon['meta_dir'])} "
              f"(Energon {energon['energon_version']}; shards: {splits})")
    return 0
