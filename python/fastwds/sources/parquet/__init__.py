"""Multimodal instruct parquet (LLaVA style): ``id``, ``image`` {bytes, path} or an ``images``
list, ``conversations`` [{role, content}] or [{from, value}], ``data_source``.

Planning (``plan.py``) reads only parquet metadata and the id column; a task reads its rows one row
group at a time (``read.py``); validation and encoding are the conversation rules of
``fastwds.sources.chat``.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastwds.arguments import add_flag, positional_or_flag
from fastwds.convert.options import ConvertOptions
from fastwds.convert.plan import Plan, Task
from fastwds.sources.base import Source, SourceJob
from fastwds.sources.chat import ChatConverter
from fastwds.sources.parquet.plan import ParquetColumns, plan_parquet
from fastwds.sources.parquet.read import read_task

__all__ = ["SOURCE", "ParquetColumns", "plan_parquet"]


class ParquetSource(Source):
    name = "parquet"
    options_type = ParquetColumns
    help = "multimodal instruct parquet (LLaVA style)"
    description = ("Convert LLaVA-style parquet into validated shards: a folder (or s3:// prefix) whose folders "
                   "holding parquet files are subsets, or one .parquet file.")
    usage = "INPUT OUTPUT_DIR"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("input_dir", nargs="?", metavar="INPUT",
                            help="a folder (or s3:// prefix) of parquet files, subfolders being subsets, or one .parquet")
        parser.add_argument("output_dir", nargs="?", metavar="OUTPUT_DIR", help="folder or s3:// prefix for the shards")
        parser.add_argument("--input_dir", "--input-dir", dest="input_dir_flag", help=argparse.SUPPRESS)
        parser.add_argument("--output_dir", "--output-dir", dest="output_dir_flag", help=argparse.SUPPRESS)
        columns = parser.add_argument_group("columns")
        defaults = ParquetColumns()
        for name in ("id", "image", "images", "conversations", "data_source"):
            add_flag(columns, f"--{name.replace('_', '-')}-column", f"--{name}_column", dest=f"{name}_column",
                     default=getattr(defaults, name), metavar="NAME", help=f"column holding {name} (default {name!r})")

    def configure(self, args: argparse.Namespace) -> SourceJob:
        columns = ParquetColumns(args.id_column, args.image_column, args.images_column,
                                 args.conversations_column, args.data_source_column)
        return SourceJob(positional_or_flag(args, "input_dir", "INPUT"), positional_or_flag(args, "output_dir"), columns)

    def plan(self, inputs: Any, options: ConvertOptions) -> Plan:
        return plan_parquet(inputs, options.source_options, options.max_samples_per_shard, options.max_shard_bytes,
                            options.limit)

    def read_task(self, root: str, task: Task, options: ConvertOptions):
        return read_task(root, task, options)

    def make_converter(self, task: Task, options: ConvertOptions, executor: ThreadPoolExecutor) -> ChatConverter:
        return ChatConverter(task, options, executor)


SOURCE = ParquetSource()
