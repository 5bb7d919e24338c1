"""``fastwds verify PATH``: read every shard once and report what would break or surprise a reader.

Each shard is walked at the block level (``shards.TarScanner``), grouped into samples the way
readers group them, and checked: tar structure to the last block, contiguous samples, repeated
extensions, keys unique across the dataset, portable names (``verify/rules.py``), JSON ``name`` /
``images`` lists and ``<image>`` tokens against the members, image headers (every pixel with
``--full``), then the manifest and reader indexes beside the shards (``verify/sidecars.py``). With
``--check-precision``, every float16 volume written by ``convert npz`` is compared with its NPZ
source again (``verify/precision.py``).

Exit status: 1 when an error was found (or a warning, with ``--strict``), else 0.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

from fastwds.cores import available_cores
from fastwds.tar.names import split_name
from fastwds.tar.scanner import TarScanner, group_samples
from fastwds.tar.shards import expand_shards
from fastwds.verify.hf_columns import HfColumns
from fastwds.verify.images import ImageChecks
from fastwds.verify.precision import PrecisionChecks
from fastwds.verify.report import Report
from fastwds.verify.rules import (
    is_image_extension,
    is_json_extension,
    json_findings,
    member_findings,
    parse_json_member,
    sample_structure_findings,
    unsafe_path_finding,
)
from fastwds.verify.sidecars import ScannedSample, ShardScan, Sidecars


def wants_data(name: str) -> bool:
    split = split_name(name)
    return split is not None and (is_json_extension(split[1]) or is_image_extension(split[1]))


def wants_volume_data(name: str) -> bool:
    """With --check-precision: also ``.npy`` members, compressed or not (one volume at a time)."""
    split = split_name(name)
    return wants_data(name) or (split is not None and "npy" in split[1].lower().split("."))


class DatasetVerifier:
    def __init__(self, spec: str, full: bool = False, threads: int | None = None, check_precision: bool = False,
                 source_root: str | None = None) -> None:
        self.shard_set = expand_shards(spec)
        self.report = Report()
        self.precision = PrecisionChecks(self.report, self.shard_set.root, source_root) if check_precision else None
        self.full = full
        self.threads = threads or min(8, available_cores())
        self.sidecars = Sidecars(self.shard_set.root, self.report.add)
        self.hf_columns = HfColumns(self.report, self.shard_set.root)
        # Keys of every shard so far, as 16-byte digests (a dataset can have tens of millions of
        # keys): digest -> shard number.
        self.keys: dict[bytes, int] = {}
        self.shard_names: list[str] = []

    def run(self) -> Report:
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="fastwds-verify") if self.full else nullcontext()
        with pool as decoder:
            images = ImageChecks(self.report, decoder)
            for path in self.shard_set.paths:
                self.check_shard(path, images)
                images.flush()
            images.finish()
        self.sidecars.finish(self.shard_set.whole_folder)
        self.hf_columns.finish()
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
            if (unsafe := unsafe_path_finding(member.name)) is not None:
                report.add_finding(unsafe, name)

        try:
            with self.shard_set.open(path) as (stream, compressed):
                scan.compressed = compressed
                if compressed:
                    report.add("compressed_shard", "gzip-compressed shard", shard=name)
                    hashers = {}  # the scanner sees decompressed bytes: file hashes would be wrong
                scanner = TarScanner(stream, want_data=wants_data if self.precision is None else wants_volume_data, hashers=list(hashers.values()),
                                     seekable=not compressed and path not in self.shard_set.urls)
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
        scan.size = scanner.size if not scan.compressed else self.shard_set.size(path)
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
        self.hf_columns.add(number, key, sample.extensions())
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
    verifier = DatasetVerifier(os.fspath(spec), full, threads, check_precision,
                               os.fspath(source_root) if source_root is not None else None)
    try:
        return verifier.run()
    finally:
        verifier.shard_set.close()
