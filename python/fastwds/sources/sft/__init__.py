"""SFT JSON / JSONL (LLaVA and Megatron-Energon style): a list of samples
``{id?, image|images|video|videos, messages|conversations}`` whose media are file paths, relative
to the JSON file's folder or to ``--media-root``.

``rows.py`` reads JSON files as rows with their byte ranges; ``plan.py`` cuts them into tasks;
``media.py`` reads a task's rows and media files (many in flight); ``convert.py`` validates and
writes the JSON Energon sample loaders expect. By default the run ends with Energon's
``.nv-meta/`` (``fastwds.energon``), so Energon loads the shards without ``energon prepare``.
"""

from __future__ import annotations

import argparse
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastwds import portable_key
from fastwds import storage
from fastwds.arguments import add_flag, parse_size
from fastwds.convert.options import ConvertOptions
from fastwds.convert.output import Output, open_output
from fastwds.convert.plan import Plan, Task
from fastwds.energon import (
    DEFAULT_SAMPLE_TYPE,
    ENERGON_VERSION,
    META_DIR,
    ShardIndex,
    foreign_energon_meta,
    parse_split_ratio,
    write_energon_meta,
)
from fastwds.errors import InvalidInputError, UsageError
from fastwds.sources.base import Finish, Source, SourceJob
from fastwds.sources.sft.convert import SftConverter, check_names_agree
from fastwds.sources.sft.media import read_task
from fastwds.sources.sft.plan import plan_sft
from fastwds.sources.sft.rows import MEDIA_KINDS, SftOptions

__all__ = ["SOURCE", "SftOptions", "check_names_agree", "plan_sft"]

log = logging.getLogger("fastwds")


def absolute(location: str) -> str:
    """Locations are options a resumed run must repeat: absolute, so the spelling cannot differ."""
    storage.check_location(location)  # 's3://' without a bucket must not become the folder 's3:'
    return location.rstrip("/") if storage.is_url(location) else os.path.abspath(location)


def split_ratio_argument(text: str) -> str:
    try:
        parse_split_ratio(text)
    except InvalidInputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text.replace(" ", "")


class SftSource(Source):
    name = "sft"
    options_type = SftOptions
    help = "SFT JSON/JSONL with image or video files (LLaVA / Megatron-Energon style)"
    description = ("Convert SFT JSON or JSONL files (samples with messages/conversations and image or video paths) "
                   "into validated shards, with Megatron-Energon metadata by default.")
    usage = "DATA [DATA ...] OUTPUT_DIR"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("paths", nargs="+", metavar="DATA... OUTPUT_DIR",
                            help="JSON/JSONL files or globs, then the folder for the shards")
        parser.add_argument("--media", choices=MEDIA_KINDS, default="image",
                            help="image (keys image/images, <image> tokens; default) or video (video/videos, <video>)")
        add_flag(parser, "--media-root", "--media_root", dest="media_root", default=None, metavar="DIR",
                 help="folder (or s3:// prefix) media paths are relative to (default: each JSON file's folder)")
        parser.add_argument("--allow-media-outside-root", action="store_true",
                            help="read media paths that resolve (symlinks followed) outside the media root "
                                 "(--media-root, else the folder of the input files); refused by default")
        parser.add_argument("--max-media-size", type=parse_size, default=SftOptions().max_media_bytes, metavar="SIZE",
                            help="reject media files larger than this, unread (default 1GiB)")
        parser.add_argument("--energon", action=argparse.BooleanOptionalAction, default=True,
                            help=f"write .nv-meta/ and .tar.idx files so Megatron-Energon {ENERGON_VERSION} loads the "
                                 "shards without `energon prepare` (default: on)")
        add_flag(parser, "--split-ratio", "--split_ratio", dest="split_ratio", type=split_ratio_argument, metavar="T,V,T",
                            help="train,val,test shares of the shards in .nv-meta/split.yaml, cut like "
                                 "`energon prepare --split-ratio` (default: all train)", default=None)
        parser.add_argument("--energon-sample-type", dest="sample_type", default=DEFAULT_SAMPLE_TYPE,
                            help="MODULE:CLASS of the Energon sample type in dataset.yaml, with fields messages, "
                                 f"image, video, system (default {DEFAULT_SAMPLE_TYPE})")

    def configure(self, args: argparse.Namespace) -> SourceJob:
        if len(args.paths) < 2:
            raise UsageError("OUTPUT_DIR is required: give the DATA file(s), then OUTPUT_DIR")
        *data, output_dir = args.paths
        if os.path.isfile(output_dir):
            raise InvalidInputError(f"{output_dir}: is a file; the last argument must be the output folder")
        if args.media_root is not None and not storage.is_dir(args.media_root):
            raise InvalidInputError(f"--media-root {args.media_root}: no such folder")
        if not args.energon and args.split_ratio is not None:
            raise InvalidInputError("--split-ratio describes Energon splits; it needs --energon")
        sft = SftOptions(media=args.media,
                         media_root=absolute(args.media_root) if args.media_root is not None else None,
                         energon=args.energon, split_ratio=args.split_ratio or "1,0,0", sample_type=args.sample_type,
                         media_outside_root=args.allow_media_outside_root, max_media_bytes=args.max_media_size)
        if sft.energon and foreign_energon_meta(open_output(output_dir)):  # refuse now, not after converting
            raise InvalidInputError(f"{os.path.join(output_dir, META_DIR)} was not written by fastwds; move it away, "
                                    "or convert with --no-energon")
        return SourceJob(data, output_dir, sft, {"energon_index": sft.energon})

    def summary(self, manifest: dict[str, Any]) -> list[tuple[str, str]]:
        energon = manifest.get("energon")
        if energon is None:
            return []
        splits = ", ".join(f"{part} {count}" for part, count in energon["splits"].items())
        return [("energon", f"{energon['meta_dir']}/ (Energon {energon['energon_version']}; shards: {splits})")]

    def plan(self, inputs: Any, options: ConvertOptions) -> Plan:
        return plan_sft(inputs, options.source_options, options.max_samples_per_shard, options.max_shard_bytes,
                        options.limit)

    def read_task(self, root: str, task: Task, options: ConvertOptions):
        return read_task(root, task, options)

    def make_converter(self, task: Task, options: ConvertOptions, executor: ThreadPoolExecutor) -> SftConverter:
        return SftConverter(task, options, executor)

    def finish(self, output: Output, plan: Plan, options: ConvertOptions, records: list[dict],
               staging: Path) -> Finish:
        """Energon's ``.nv-meta/``, with the invalid samples kept by --on-invalid keep excluded."""
        sft: SftOptions = options.source_options
        shards = [shard for record in records for shard in record["shards"]]
        if not sft.energon:
            return Finish()
        if not shards:
            log.warning("no samples were written: no Energon .nv-meta/ (see rejects.jsonl)")
            return Finish()
        if foreign_energon_meta(output):
            raise InvalidInputError(f"{output.location}/{META_DIR} was not written by fastwds; move it away, or "
                                    "convert with --no-energon")
        kept_invalid = {portable_key(r["id"]) for record in records for r in record["rejects"] if r["action"] == "kept"}
        indexes = [ShardIndex.from_json(index) for record in records for index in record["energon"]]
        energon = write_energon_meta(None, shards, split_ratio=parse_split_ratio(sft.split_ratio),
                                     sample_type=sft.sample_type, excluded_keys=kept_invalid, target=staging,
                                     indexes=indexes)
        files = energon.pop("files")
        return Finish(sections={"energon": energon}, files=files)


SOURCE = SftSource()
