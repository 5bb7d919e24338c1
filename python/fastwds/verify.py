"""``fastwds verify PATH``: read every shard once and report what would break or surprise a reader.

Each shard is walked at the block level (``shards.TarScanner``), grouped into samples the way
readers group them, and checked: tar structure to the last block, contiguous samples, repeated
extensions, keys unique across the dataset, portable names (``checks.py``), JSON ``name`` /
``images`` lists and ``<image>`` tokens against the members, image headers (every pixel with
``--full``), then the manifest and reader indexes beside the shards (``sidecars.py``).

Exit status: 1 when an error was found (or a warning, with ``--strict``), else 0.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
import hashlib
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastwds.checks import (
    CODES,
    ERROR,
    WARNING,
    Finding,
    image_format_finding,
    is_image_extension,
    is_json_extension,
    json_findings,
    member_findings,
    parse_json_member,
    sample_structure_findings,
    severity,
)
from fastwds.media import ImageInfo, decode_problem, inspect_images
from fastwds.shards import TarScanner, expand_shards, iter_samples, open_shard, split_name
from fastwds.sidecars import ScannedSample, ShardScan, Sidecars

DESCRIPTION = ("Check every shard of a dataset (from fastwds or any other producer): tar structure, sample "
               "grouping, unique keys, portable names, JSON name lists and <image> tokens against the members, "
               "images, and manifest.json / wids / DALI / Energon indexes when present. Exits 1 on any error.")

# Issues listed per code; the counts stay exact. Keeps a broken 10-million-sample dataset's
# report readable.
LIST_LIMIT = 50
# Images are checked in batches of about this many bytes (one Rust call, one thread-pool map).
IMAGE_BATCH_BYTES = 64 << 20


@dataclass
class Issue:
    severity: str
    code: str
    message: str
    shard: str | None = None
    key: str | None = None
    member: str | None = None
    count: int = 1  # warnings are folded per shard and code: how many occurrences this stands for


@dataclass
class Report:
    issues: list[Issue] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # code -> occurrences
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    checked: list[str] = field(default_factory=list)
    _folded: dict[tuple[str | None, str], Issue] = field(default_factory=dict, repr=False)
    _listed: Counter = field(default_factory=Counter, repr=False)

    def add(self, code: str, message: str, shard: str | None = None, key: str | None = None,
            member: str | None = None) -> None:
        self.counts[code] += 1
        if severity(code) == WARNING:
            # Portability warnings usually hit every member of a producer's shards: one line per shard.
            folded = self._folded.get((shard, code))
            if folded is not None:
                folded.count += 1
                return
            issue = Issue(WARNING, code, message, shard, key, member)
            self._folded[(shard, code)] = issue
        else:
            issue = Issue(ERROR, code, message, shard, key, member)
        self._listed[code] += 1
        if self._listed[code] <= LIST_LIMIT:
            self.issues.append(issue)

    def add_finding(self, finding: Finding, shard: str, key: str | None = None) -> None:
        self.add(finding.code, finding.message, shard=shard, key=key, member=finding.member)

    def total(self, level: str) -> int:
        return sum(n for code, n in self.counts.items() if severity(code) == level)

    def failed(self, strict: bool = False) -> bool:
        return bool(self.total(ERROR) or (strict and self.total(WARNING)))

    def to_json(self, strict: bool = False) -> dict:
        return {
            "ok": not self.failed(strict),
            "strict": strict,
            "shards": self.shards,
            "samples": self.samples,
            "bytes": self.bytes,
            "errors": self.total(ERROR),
            "warnings": self.total(WARNING),
            "counts": {code: {"severity": severity(code), "count": n, "meaning": CODES[code][1]}
                       for code, n in sorted(self.counts.items())},
            "checked": self.checked,
            "issues": [asdict(issue) for issue in self.issues],
        }


class ImageChecks:
    """Queues a shard's images and checks them in batches: headers in one Rust call, full
    decodes in threads (Pillow releases the GIL)."""

    def __init__(self, report: Report, full: bool, executor: ThreadPoolExecutor | None) -> None:
        self.report = report
        self.full = full
        self.executor = executor
        self.pending: list[tuple[str, str, str, str, bytes]] = []  # shard, key, member, ext, data
        self.pending_bytes = 0
        self.checked = 0

    def add(self, shard: str, key: str, member: str, ext: str, data: bytes) -> None:
        self.pending.append((shard, key, member, ext, data))
        self.pending_bytes += len(data)
        if self.pending_bytes >= IMAGE_BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        results = inspect_images([data for *_, data in batch])
        decodable = [i for i, result in enumerate(results) if isinstance(result, ImageInfo)]
        decoded = {}
        if self.full and decodable:
            problems = (self.executor.map if self.executor else map)(lambda i: decode_problem(batch[i][4]), decodable)
            decoded = dict(zip(decodable, problems))
        for i, ((shard, key, member, ext, _), result) in enumerate(zip(batch, results)):
            self.checked += 1
            if not isinstance(result, ImageInfo):
                self.report.add("image_invalid", f"{member}: {result.reason}: {result.detail}", shard, key, member)
                continue
            mismatch = image_format_finding(member, ext, result.format)
            if mismatch is not None:
                self.report.add_finding(mismatch, shard, key)
            problem = decoded.get(i)
            if problem is not None:
                self.report.add("image_decode_failed", f"{member}: {problem.detail}", shard, key, member)


def wants_data(name: str) -> bool:
    split = split_name(name)
    return split is not None and (is_json_extension(split[1]) or is_image_extension(split[1]))


class DatasetVerifier:
    def __init__(self, spec: str, full: bool = False, threads: int | None = None) -> None:
        self.shard_set = expand_shards(spec)
        self.report = Report()
        self.full = full
        self.threads = threads or min(8, os.cpu_count() or 1)
        self.sidecars = Sidecars(self.shard_set.root, self.report.add)
        # Keys of every shard so far, as 16-byte digests (a dataset can have tens of millions of
        # keys): digest -> shard number.
        self.keys: dict[bytes, int] = {}
        self.shard_names: list[str] = []

    def run(self) -> Report:
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="fastwds-verify") if self.full else nullcontext()
        with pool as executor:
            images = ImageChecks(self.report, self.full, executor)
            for path in self.shard_set.paths:
                self.check_shard(path, images)
                images.flush()
        self.sidecars.finish(self.shard_set.whole_folder)
        checks = ["tar structure", "sample grouping and keys", "member names", "JSON name/images and <image> tokens",
                  f"{images.checked} images ({'fully decoded' if self.full else 'headers and end markers'})"]
        self.report.checked = checks + self.sidecars.summary()
        return self.report

    def check_shard(self, path: Path, images: ImageChecks) -> None:
        name = self.shard_set.relative(path)
        number = len(self.shard_names)
        self.shard_names.append(name)
        report = self.report
        report.shards += 1
        scan = ShardScan(path, name)
        hashers = {}
        if self.sidecars.wants_sha256(path):
            hashers["sha256"] = hashlib.sha256()
        if self.sidecars.wants_md5(path):
            hashers["md5"] = hashlib.md5(usedforsecurity=False)

        def skipped(member, reason):
            report.add("member_ignored", f"{member.name!r}: {reason}", shard=name, member=member.name)

        try:
            with open_shard(path) as (stream, compressed):
                scan.compressed = compressed
                if compressed:
                    report.add("compressed_shard", "gzip-compressed shard", shard=name)
                    hashers = {}  # the scanner sees decompressed bytes: file hashes would be wrong
                scanner = TarScanner(stream, want_data=wants_data, hashers=list(hashers.values()),
                                     seekable=not compressed)
                for sample in iter_samples(iter(scanner), on_skip=skipped):
                    self.check_sample(sample, number, name, images)
                    scan.samples.append(ScannedSample(sample.key, sample.offset, [
                        (ext, m.data_offset, m.size, m.name) for ext, m in sample.members]))
        except (OSError, EOFError) as error:  # a damaged gzip stream raises these
            report.add("shard_unreadable", f"cannot read: {error}", shard=name)
            return
        for defect in scanner.defects:
            report.add(defect.code, f"at byte {defect.offset}: {defect.detail}", shard=name)
        scan.intact = not scanner.defects
        scan.end_of_data = scanner.end_of_data
        scan.size = scanner.size if not scan.compressed else path.stat().st_size
        scan.sha256 = hashers["sha256"].hexdigest() if "sha256" in hashers else None
        scan.md5 = hashers["md5"].hexdigest() if "md5" in hashers else None
        report.samples += len(scan.samples)
        report.bytes += scan.size
        if not scan.samples and scan.intact:
            report.add("empty_shard", "the shard holds no samples", shard=name)
        self.sidecars.check_shard(scan)

    def check_sample(self, sample, number: int, shard: str, images: ImageChecks) -> None:
        report = self.report
        key = sample.key
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).digest()
        earlier = self.keys.get(digest)
        if earlier is None:
            self.keys[digest] = number
        elif earlier == number:  # iter_samples merged consecutive members, so this one came back later
            report.add("sample_not_contiguous", f"key {key}: members at byte {sample.offset} come after other "
                       "samples; readers see two samples with this key", shard, key)
        else:
            report.add("duplicate_key", f"key {key} is also in {self.shard_names[earlier]}", shard, key)
        extensions = sample.extensions()
        for finding in sample_structure_findings(key, extensions):
            report.add_finding(finding, shard, key)
        for ext, member in sample.members:
            for finding in member_findings(member, key, ext):
                report.add_finding(finding, shard, key)
            if member.data is None and member.size:
                continue
            data = member.data or b""
            if is_json_extension(ext):
                try:
                    document = parse_json_member(data)
                except ValueError as error:
                    report.add("json_invalid", f"{member.name}: {error}", shard, key, member.name)
                    continue
                for finding in json_findings(key, member.name, document, extensions):
                    report.add_finding(finding, shard, key)
            elif is_image_extension(ext):
                images.add(shard, key, member.name, ext, data)


def verify(spec: str | os.PathLike, full: bool = False, threads: int | None = None) -> Report:
    """Check every shard under ``spec`` (a shard, a folder or a brace pattern)."""
    return DatasetVerifier(os.fspath(spec), full, threads).run()


# -- command line ---------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH",
                        help="a shard, a folder of shards, or a pattern like 'out/shard-{000000..000009}.tar'")
    parser.add_argument("--full", action="store_true", help="decode every image (default: headers and end markers)")
    parser.add_argument("--strict", action="store_true", help="treat warnings (portability) as errors")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--threads", type=int, default=None, help="image decoding threads with --full")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    report = verify(args.path, full=args.full, threads=args.threads)
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
    print("  checked: " + "; ".join(report.checked))
    errors, warnings = report.total(ERROR), report.total(WARNING)
    verdict = "FAILED" if report.failed(strict) else "OK"
    print(f"{verdict}: {errors:,} error(s), {warnings:,} warning(s)" + (" (--strict: warnings fail)" if strict else ""))
