"""``fastwds verify PATH``: arguments, the printed report and the exit status (1 when an error was
found, or a warning with ``--strict``)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from fastwds.arguments import positive
from fastwds.errors import UsageError
from fastwds.reasons import ERROR, WARNING
from fastwds.verify import verify
from fastwds.verify.report import Report

DESCRIPTION = ("Check every shard of a dataset (from fastwds or any other producer): tar structure, sample "
               "grouping, unique keys, portable names, JSON name lists and <image> tokens against the members, "
               "images, and manifest.json / wids / DALI / Energon indexes when present. Exits 1 on any error.")

# Issues listed per code; the counts stay exact. Keeps a broken 10-million-sample dataset's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH",
                        help="a shard, a folder of shards, or a pattern like 'out/shard-{000000..000009}.tar'; "
                             "the same in a bucket (s3://bucket/prefix/)")
    parser.add_argument("--full", action="store_true", help="decode every image (default: headers and end markers)")
    parser.add_argument("--strict", action="store_true", help="treat warnings (portability) as errors")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--threads", type=positive(int), default=None, metavar="N",
                        help="image decoding threads with --full (default: up to 8, one per core)")
    parser.add_argument("--check-precision", action="store_true",
                        help="compare every float16 volume (convert npz) with its NPZ source again: shape, "
                             "float16 rounding, and the max abs error / RMSE recorded in its JSON")
    parser.add_argument("--source-root", metavar="DIR", default=None,
                        help="with --check-precision: the folder the NPZ files are in now (default: "
                             "manifest.json's source.root)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.source_root is not None and not args.check_precision:
        raise UsageError("--source-root needs --check-precision")
    report = verify(args.path, full=args.full, threads=args.threads, check_precision=args.check_precision,
                    source_root=args.source_root)
    elapsed = time.perf_counter() - started
    if args.json:
        json.dump({**report.to_json(args.strict), "elapsed_seconds": round(elapsed, 3)}, sys.stdout, indent=2,
                  ensure_ascii=False)
        print()
    else:
        print_report(report, elapsed, args.strict)
    return 1 if report.failed(args.strict) else 0


def print_report(report: Report, elapsed: float, strict: bool) -> None:
    print(f"fastwds verify: {report.shards:,} shards, {report.samples:,} samples, "
          f"{report.bytes / 1e6:,.1f} MB in {elapsed:.1f} s")
    for issue in sorted(report.issues, key=lambda i: (i.severity != ERROR, i.shard or "", i.code)):
        more = f" (and {issue.count - 1:,} more like it in this shard)" if issue.count > 1 else ""
        where = f"{issue.shard}: " if issue.shard else ""
        print(f"  {issue.severity:<7} {issue.code:<24} {where}{issue.message}{more}")
    for code in sorted({i.code for i in report.issues}):
        shown = sum(i.count for i in report.issues if i.code == code)
        if report.counts[code] > shown:
            print(f"  ... {report.counts[code] - shown:,} more {code} not listed")
    if report.precision is not None:
        print("  precision: " + precision_line(report.precision))
    print("  checked: " + "; ".join(report.checked))
    errors, warnings = report.total(ERROR), report.total(WARNING)
    verdict = "FAILED" if report.failed(strict) else "OK"
    print(f"{verdict}: {errors:,} error(s), {warnings:,} warning(s)" + (" (--strict: warnings fail)" if strict else ""))


def precision_line(summary: dict) -> str:
    if summary.get("note"):
        return summary["note"]
    line = f"{summary['volumes']:,} float16 volume(s) compared with their NPZ sources"
    if summary["source_root"]:
        line += f" under {summary['source_root']}"
    if summary["values"]:
        line += (f" ({summary['values']:,} values): worst max abs error {summary['max_abs_error']:.6g} "
                 f"({summary['max_abs_error_shard']} key {summary['max_abs_error_key']}), "
                 f"overall RMSE {summary['rmse']:.6g}")
    if summary["clipped_values"]:
        line += f", {summary['clipped_values']:,} clipped value(s) as expected"
    if summary["not_compared"]:
        line += f"; {summary['not_compared']:,} not compared (no source root)"
    return line
