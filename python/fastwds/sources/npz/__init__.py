"""NPZ volumes (CT-RATE style) plus CSV tables keyed by ``VolumeName``: float16 WebDataset samples.

``plan.py`` finds the volumes and joins the CSVs' key columns; ``convert.py`` reads each volume in
chunks into float16 and writes ``KEY.npy`` (or ``KEY.npy.zst``), ``KEY.json`` and
``KEY.labels.npy``. The run ends with ``volumes.jsonl`` (one line of statistics per volume) and the
CSV rows without volumes added to ``rejects.jsonl``. The seed script's flag names
(``--data_folder``, ``--reports_file``, ``--meta_file``, ``--labels_file``, ``--output_dir``,
``--samples_per_shard``, ``--num_workers``, ``--test_mode``) work as well as the dashed ones.
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastwds import storage
from fastwds.arguments import add_flag, positional_or_flag, positive
from fastwds.convert.options import ConvertOptions
from fastwds.convert.output import Output
from fastwds.convert.plan import Plan, Task
from fastwds.sources.base import Finish, Source, SourceJob
from fastwds.sources.npz.convert import LABELS_MEMBER, VolumeConverter, read_task, summarize
from fastwds.sources.npz.plan import ON_OVERFLOW, NpzOptions, NpzPlan, find_volumes, plan_npz, volume_key

__all__ = ["SOURCE", "NpzInputs", "NpzOptions", "find_volumes", "plan_npz", "volume_key"]

TEST_MODE_VOLUMES = 100
VOLUMES_FILE = "volumes.jsonl"

DESCRIPTION = """Convert NPZ volumes plus CSV tables (reports, metadata, labels) keyed by VolumeName
into float16 WebDataset shards. Volumes are found as DATA/*.npz, DATA/PATIENT/*.npz or
DATA/PATIENT/ACCESSION/*.npz. Each sample: KEY.npy (float16 volume, or KEY.npy.zst with
--compress zstd), KEY.json (report, metadata, labels, float16 precision statistics) and
KEY.labels.npy (float32 label vector, column order in manifest.json stats.labels)."""


@dataclass(frozen=True)
class NpzInputs:
    data_folder: str
    strict: bool = False  # fail at plan time on volumes without CSV rows and CSV rows without volumes


def _absolute(path: str | None) -> str | None:
    """CSV paths are options a resumed run must repeat: absolute, so the spelling cannot differ."""
    if not path:
        return None
    return path if storage.is_url(path) else os.path.abspath(path)


class NpzSource(Source):
    name = "npz"
    options_type = NpzOptions
    help = "NPZ volumes + CSV reports/metadata/labels -> float16 shards"
    description = DESCRIPTION
    usage = "DATA_FOLDER OUTPUT_DIR"
    has_images = False
    # 100 float16 CT-RATE volumes (1x240x480x480) are ~11 GB: the byte cap must not cut them first.
    defaults = {"max_samples_per_shard": 100, "max_shard_bytes": 16 * 10**9}
    # One volume per batch and queues one deep, two volumes converted at once: memory stays at a
    # few volumes per worker (see sources/npz/convert.py) and one task keeps two cores busy.
    execution = {"batch_rows": 1, "queue_batches": 1, "task_threads": 2}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("data_folder", nargs="?", metavar="DATA_FOLDER", help="folder (or s3:// prefix) of .npz volumes")
        parser.add_argument("output_dir", nargs="?", metavar="OUTPUT_DIR", help="folder or s3:// prefix for the shards")
        parser.add_argument("--data_folder", "--data-folder", dest="data_folder_flag", help=argparse.SUPPRESS)
        parser.add_argument("--output_dir", "--output-dir", dest="output_dir_flag", help=argparse.SUPPRESS)
        tables = parser.add_argument_group("CSV tables (joined on the key column)")
        add_flag(tables, "--reports", "--reports_file", "--reports-file", metavar="CSV",
                 help="reports CSV (text columns go to the sample JSON under 'report')")
        add_flag(tables, "--meta", "--meta_file", "--meta-file", "--metadata", metavar="CSV",
                 help="metadata CSV (JSON 'metadata')")
        add_flag(tables, "--labels", "--labels_file", "--labels-file", metavar="CSV",
                 help="multi-label CSV: every column but the key is a numeric label")
        add_flag(tables, "--key-column", "--key_column", default="VolumeName", dest="key_column", metavar="NAME",
                 help="the CSVs' key column (default VolumeName); 'x.nii.gz' matches x.npz")
        volumes = parser.add_argument_group("volumes")
        volumes.add_argument("--array", default=None, metavar="NAME",
                             help="name of the array inside each .npz (default: the only one)")
        add_flag(volumes, "--samples-per-shard", "--samples_per_shard", type=positive(int), dest="max_samples_per_shard",
                 metavar="N", help="volumes per shard: the same as --max-samples-per-shard (default 100)")
        add_flag(volumes, "--on-overflow", "--on_overflow", choices=ON_OVERFLOW, default="skip", dest="on_overflow",
                 help="volumes with NaN, inf or values beyond float16's +-65504: skip (default; listed in "
                      "rejects.jsonl), clip (NaN -> 0, others -> +-65504, counted per volume) or fail")
        volumes.add_argument("--compress", choices=("zstd",), default=None,
                             help="store volumes as KEY.npy.zst (fastwds.WebDataset and HF datasets decompress it)")
        add_flag(volumes, "--zstd-level", "--zstd_level", type=positive(int), default=3, dest="zstd_level",
                 metavar="N", help="zstd level (default 3)")
        volumes.add_argument("--strict", action="store_true",
                             help="fail when anything would go to rejects.jsonl: volumes without CSV rows and CSV "
                                  "rows without volumes (checked before converting), then any rejected volume")
        add_flag(volumes, "--test-mode", "--test_mode", action="store_true", dest="test_mode",
                 help=f"convert the first {TEST_MODE_VOLUMES} volumes only")

    def configure(self, args: argparse.Namespace) -> SourceJob:
        npz = NpzOptions(reports=_absolute(args.reports), meta=_absolute(args.meta), labels=_absolute(args.labels),
                         key_column=args.key_column, array=args.array, on_overflow=args.on_overflow,
                         compress=args.compress, zstd_level=args.zstd_level)
        overrides: dict[str, Any] = {}
        if args.test_mode:
            overrides["limit"] = min(args.limit, TEST_MODE_VOLUMES) if args.limit is not None else TEST_MODE_VOLUMES
        if args.strict:
            overrides["on_invalid"] = "fail"
        inputs = NpzInputs(positional_or_flag(args, "data_folder"), args.strict)
        return SourceJob(inputs, positional_or_flag(args, "output_dir"), npz, overrides)

    def plan(self, inputs: Any, options: ConvertOptions) -> Plan:
        if not isinstance(inputs, NpzInputs):
            inputs = NpzInputs(os.fspath(inputs))
        return plan_npz(inputs.data_folder, options.source_options, options.max_samples_per_shard,
                        options.max_shard_bytes, options.limit, strict=inputs.strict)

    def read_task(self, root: str, task: Task, options: ConvertOptions):
        return read_task(root, task, options)

    def make_converter(self, task: Task, options: ConvertOptions, executor: ThreadPoolExecutor) -> VolumeConverter:
        return VolumeConverter(task, options, executor)

    def finish(self, output: Output, plan: Plan, options: ConvertOptions, records: list[dict],
               staging: Path) -> Finish:
        """What only the whole run knows: CSV rows without volumes (rejects), sizes and float16
        precision over all volumes, the label columns, and ``volumes.jsonl``."""
        assert isinstance(plan, NpzPlan)
        npz: NpzOptions = options.source_options
        stats = summarize(records)
        rejects = [{"subset": "csv", "file": path, "row": row, "id": name, "reason": reason, "detail": detail,
                    "action": "ignored"} for path, row, name, reason, detail in plan.csv_rejects]
        by_reason: dict[str, int] = {}
        for _, _, _, reason, _ in plan.csv_rejects:
            by_reason[reason] = by_reason.get(reason, 0) + 1
        stats["csv"] = {"tables": {section: path for section, path in npz.tables()},
                        "key_column": npz.key_column, "rows_ignored": len(plan.csv_rejects),
                        "rows_ignored_by_reason": dict(sorted(by_reason.items()))}
        if plan.label_columns:
            stats["labels"] = {"member": LABELS_MEMBER, "dtype": "float32", "columns": list(plan.label_columns)}
        lines = [json.dumps(v, ensure_ascii=False) + "\n" for record in records for v in record["stats"]["volumes"]]
        (staging / VOLUMES_FILE).write_text("".join(lines), encoding="utf-8")
        stats["volumes_file"] = VOLUMES_FILE
        return Finish(stats=stats, rejects=rejects, files=[VOLUMES_FILE])

    def summary(self, manifest: dict[str, Any]) -> list[tuple[str, str]]:
        stats = manifest["stats"]
        sizes, precision, csv = stats["bytes"], stats["precision"], stats["csv"]
        rows = [("input (npz)", f"{sizes['input_written'] / 1e6:,.1f} MB of volumes written"),
                ("output (shards)", f"{sizes['output'] / 1e6:,.1f} MB" + size_change(sizes["compression_ratio"]))]
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
        return rows


def size_change(ratio: float | None) -> str:
    """`` (2.10x smaller, 52% saved)``, or `` (2.94x larger)`` when the shards outgrow the input
    (small volumes, whose tar headers and JSON weigh more than float16 saves)."""
    if not ratio:
        return ""
    if ratio >= 1:
        return f" ({ratio:.2f}x smaller, {1 - 1 / ratio:.0%} saved)"
    return f" ({1 / ratio:.2f}x larger)"


SOURCE = NpzSource()
