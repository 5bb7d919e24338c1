"""``fastwds verify PATH``: read every shard once and report what would break or surprise a reader.

Each shard is walked at the block level (``shards.TarScanner``), grouped into samples the way
readers group them, and checked: tar structure to the last block, contiguous samples, repeated
extensions, keys unique across the dataset, portable names (``checks.py``), JSON ``name`` /
``images`` lists and ``<image>`` tokens against the members, image headers (every pixel with
``--full``), then the manifest and reader indexes beside the shards (``sidecars.py``). With
``--check-precision``, every float16 volume written by ``convert npz`` is compared with its NPZ
source again (``PrecisionChecks``).

Exit status: 1 when an error was found (or a warning, with ``--strict``), else 0.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

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
from fastwds.decode import DECODERS, decode_value
from fastwds.manifest import MANIFEST_NAME
from fastwds.media import ImageInfo, decode_problem, inspect_images
from fastwds.tar.names import split_name
from fastwds.tar.scanner import TarMember, TarScanner, group_samples
from fastwds.tar.shards import expand_shards, open_shard
from fastwds.sidecars import ScannedSample, ShardScan, Sidecars
from fastwds.volume import VolumeReadError, compare_float16, open_npz_volume, rounding_bound

DESCRIPTION = ("Check every shard of a dataset (from fastwds or any other producer): tar structure, sample "
               "grouping, unique keys, portable names, JSON name lists and <image> tokens against the members, "
               "images, and manifest.json / wids / DALI / Energon indexes when present. Exits 1 on any error.")

# Issues listed per code; the counts stay exact. Keeps a broken 10-million-sample dataset's
# report readable.
LIST_LIMIT = 50
# Images are checked in batches of about this many bytes (one Rust call, one thread-pool map).
IMAGE_BATCH_BYTES = 64 << 20
# Recorded and recomputed volume statistics agree to this relative tolerance (the converter works
# in float32 where the check works in float64).
STATS_TOLERANCE = 1e-6


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
    precision: dict | None = None  # the --check-precision summary
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
        extra = {"precision": self.precision} if self.precision is not None else {}
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
            **extra,
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


def wants_volume_data(name: str) -> bool:
    """With --check-precision: also ``.npy`` members, compressed or not (one volume at a time)."""
    split = split_name(name)
    return wants_data(name) or (split is not None and "npy" in split[1].lower().split("."))


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class PrecisionChecks:
    """``--check-precision``: each float16 volume that ``convert npz`` wrote (a sample whose JSON
    has ``volume.member``) against its NPZ source, found at the JSON's ``file`` under
    ``manifest.json``'s ``source.root`` or ``--source-root``. The source is read in chunks
    (``fastwds.volume``), so a volume costs its float16 array and its member bytes."""

    def __init__(self, report: Report, dataset_root: Path, source_root: str | None) -> None:
        self.report = report
        self.array: str | None = None  # the npz array `convert npz --array` named
        self.recorded: dict[str, tuple[int, int]] = {}  # NPZ file -> (size, mtime_ns) when converted
        self.root, self.no_root = self._find_root(dataset_root, source_root)
        self.volumes = 0  # compared with their source
        self.not_compared = 0  # no source root to look in
        self.values = 0
        self.squared_error = 0.0
        self.clipped = 0
        self.worst: tuple[float, str, str] | None = None  # (max abs error, shard, key)

    def _find_root(self, dataset_root: Path, source_root: str | None) -> tuple[Path | None, str]:
        """The folder NPZ files are relative to, or None and why there is none."""
        manifest = None
        try:
            manifest = json.loads((dataset_root / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass  # missing: said below; unreadable: Sidecars reports manifest_invalid
        source = manifest.get("source") if isinstance(manifest, dict) else None
        kind = source.get("kind") if isinstance(source, dict) else None
        if kind == "npz":
            options = manifest.get("options") or {}
            self.array = (options.get("source_options") or {}).get("array")
            self.recorded = {f["path"]: (f["size"], f["mtime_ns"]) for f in source.get("files", [])
                             if isinstance(f, dict) and {"path", "size", "mtime_ns"} <= f.keys()}
        if source_root is not None:
            return Path(source_root), ""
        if manifest is None:
            return None, f"no readable {MANIFEST_NAME} beside the shards"
        if kind != "npz":
            return None, f"{MANIFEST_NAME} source.kind is {kind!r}, not 'npz'"
        if not isinstance(source.get("root"), str):
            return None, f"{MANIFEST_NAME} has no source.root"
        return Path(source["root"]), ""

    def check(self, shard: str, key: str, members: dict[str, TarMember], document: object) -> None:
        volume = document.get("volume") if isinstance(document, dict) else None
        if not isinstance(volume, dict) or "member" not in volume:
            return  # not a converted volume
        if self.root is None:
            self.not_compared += 1
            return
        file = document.get("file")
        if not isinstance(file, str) or not file:
            self.report.add("source_missing", f"key {key}: the JSON names no NPZ 'file'", shard, key)
            return
        ext = str(volume["member"])
        member = members.get(ext)
        name = member.name if member is not None else f"{key}.{ext}"
        half = self._decode(shard, key, name, ext, member)
        if half is None:
            return
        source = self.root / file
        if not source.is_file():
            self.report.add("source_missing", f"{name}: NPZ source {source} not found"
                            + ("" if source.parent.is_dir() else " (nor its folder; --source-root DIR "
                               "names the folder the data moved to)"), shard, key, name)
            return
        clipped = bool(volume.get("clipped"))
        try:
            with open_npz_volume(source, self.array) as npz:
                if npz.shape != half.shape:
                    self.report.add("shape_mismatch", f"{name}: shape {list(half.shape)} but NPZ source {source} "
                                    f"holds {list(npz.shape)}{self._changed(file, source)}", shard, key, name)
                    return
                flat = half.ravel(order="F" if npz.fortran_order else "C")  # the source's element order
                found = compare_float16(flat, npz.chunks(), clipped)
                shape, fortran_order = npz.shape, npz.fortran_order
        except (VolumeReadError, OSError) as error:
            self.report.add("source_unreadable", f"{name}: NPZ source {source}: {error}", shard, key, name)
            return
        self.volumes += 1
        self.values += found.compared
        self.squared_error += found.squared_error
        self.clipped += found.clipped
        if found.max_abs_error is not None and (self.worst is None or found.max_abs_error > self.worst[0]):
            self.worst = (found.max_abs_error, shard, key)
        if found.wrong:
            index, expected, got = found.first_wrong
            position = [int(i) for i in np.unravel_index(index, shape, order="F" if fortran_order else "C")]
            allowed = ("" if not math.isfinite(expected) else
                       f", allowed error {float(rounding_bound(np.float64(expected))):.3g}")
            self.report.add("precision_exceeded", f"{name}: {found.wrong:,} value(s) are not the float16 rounding of "
                            f"NPZ source {source}{' (or its clipped value)' if clipped else ''}; first at "
                            f"{position}: source {expected!r}, float16 {got!r}{allowed}{self._changed(file, source)}",
                            shard, key, name)
        differences = []
        for field_name, recomputed in (("max_abs_error", found.max_abs_error), ("rmse", found.rmse)):
            recorded = volume.get(field_name)
            if not _same_stat(recorded, _finite_or_none(recomputed)):
                differences.append(f"{field_name} {recorded!r} recorded, {recomputed!r} recomputed")
        for field_name, recomputed in (("compared", found.compared), ("clipped", found.clipped)):
            if field_name in volume and volume[field_name] != recomputed:
                differences.append(f"{field_name} {volume[field_name]!r} recorded, {recomputed} recomputed")
        if differences:
            self.report.add("precision_stats_mismatch", f"{name}: the JSON's volume statistics differ from those "
                            f"recomputed against NPZ source {source}: {'; '.join(differences)}"
                            f"{self._changed(file, source)}", shard, key, name)

    def _decode(self, shard: str, key: str, name: str, ext: str, member: TarMember | None) -> np.ndarray | None:
        """The sample's volume as the readers decode it, or None (reported)."""
        if member is None:
            self.report.add("volume_unreadable", f"key {key}: the JSON's volume.member is {ext!r} but the sample "
                            "has no such member", shard, key, name)
            return None
        try:
            half = decode_value(ext, member.data or b"", DECODERS)
        except Exception as error:  # numpy's and zstandard's errors alike: the member does not decode
            self.report.add("volume_unreadable", f"{name}: does not decode: {type(error).__name__}: {error}",
                            shard, key, name)
            return None
        if not isinstance(half, np.ndarray) or half.dtype != np.float16:
            what = f"dtype {half.dtype}" if isinstance(half, np.ndarray) else f"a {type(half).__name__}"
            self.report.add("volume_unreadable", f"{name}: {what}, not a float16 array", shard, key, name)
            return None
        return half

    def _changed(self, file: str, source: Path) -> str:
        """A hint when the NPZ file is not the one converted (by size and modification time)."""
        recorded = self.recorded.get(file)
        if recorded is None:
            return ""
        stat = source.stat()
        if (stat.st_size, stat.st_mtime_ns) == tuple(recorded):
            return ""
        return f" (the NPZ changed since conversion: {MANIFEST_NAME} recorded size {recorded[0]}, now {stat.st_size})" \
            if stat.st_size != recorded[0] else f" (the NPZ was modified after conversion, per {MANIFEST_NAME})"

    def finish(self) -> None:
        if self.not_compared:
            self.report.add("source_missing", f"{self.not_compared:,} float16 volume(s) not compared: {self.no_root}; "
                            "--source-root DIR names the folder `convert npz` read")

    def summary(self) -> dict:
        rmse = math.sqrt(self.squared_error / self.values) if self.values else None
        summary = {
            "volumes": self.volumes,
            "values": self.values,
            "max_abs_error": _finite_or_none(self.worst[0]) if self.worst else None,
            "max_abs_error_shard": self.worst[1] if self.worst else None,
            "max_abs_error_key": self.worst[2] if self.worst else None,
            "rmse": _finite_or_none(rmse),
            "clipped_values": self.clipped,
            "not_compared": self.not_compared,
            "source_root": str(self.root) if self.root is not None else None,
        }
        if not self.volumes and not self.not_compared:
            summary["note"] = "no float16 volumes in these shards: nothing to compare"
        return summary


def _same_stat(recorded: object, recomputed: float | None) -> bool:
    if recorded is None or recomputed is None:
        return recorded is None and recomputed is None
    if isinstance(recorded, bool) or not isinstance(recorded, (int, float)):
        return False
    return math.isclose(recorded, recomputed, rel_tol=STATS_TOLERANCE)


class DatasetVerifier:
    def __init__(self, spec: str, full: bool = False, threads: int | None = None, check_precision: bool = False,
                 source_root: str | None = None) -> None:
        self.shard_set = expand_shards(spec)
        self.report = Report()
        self.precision = PrecisionChecks(self.report, self.shard_set.root, source_root) if check_precision else None
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
        if self.precision is not None:
            self.precision.finish()
            self.report.precision = self.precision.summary()
        checks = ["tar structure", "sample grouping and keys", "member names", "JSON name/images and <image> tokens",
                  f"{images.checked} images ({'fully decoded' if self.full else 'headers and end markers'})"]
        if self.precision is not None:
            checks.append(f"{self.precision.volumes} float16 volumes against their NPZ sources")
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
                scanner = TarScanner(stream, want_data=wants_data if self.precision is None else wants_volume_data, hashers=list(hashers.values()),
                                     seekable=not compressed)
                for sample in group_samples(iter(scanner), on_skip=skipped):
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
        document = None  # the sample's .json, parsed
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
        if self.precision is not None:
            self.precision.check(shard, key, dict(sample.members), document)


def verify(spec: str | os.PathLike, full: bool = False, threads: int | None = None, check_precision: bool = False,
           source_root: str | os.PathLike | None = None) -> Report:
    """Check every shard under ``spec`` (a shard, a folder or a brace pattern); with
    ``check_precision``, also every float16 volume against its NPZ source."""
    return DatasetVerifier(os.fspath(spec), full, threads, check_precision,
                           os.fspath(source_root) if source_root is not None else None).run()


# -- command line ---------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH",
                        help="a shard, a folder of shards, or a pattern like 'out/shard-{000000..000009}.tar'")
    parser.add_argument("--full", action="store_true", help="decode every image (default: headers and end markers)")
    parser.add_argument("--strict", action="store_true", help="treat warnings (portability) as errors")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--threads", type=int, default=None, help="image decoding threads with --full")
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
        raise ValueError("--source-root needs --check-precision")
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
