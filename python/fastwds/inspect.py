"""``fastwds inspect PATH [KEY]``: show the samples of shards from any producer.

For a shard, a folder of shards or a brace pattern: every sample's key, its members with their
sizes, image format and size (from the header: fast), the JSON pretty-printed (long strings and
lists shortened unless ``--full-json``), and a MISMATCH line when the JSON's ``name`` / ``images``
list or its ``<image>`` tokens disagree with the members. ``KEY`` shows one sample (the first
shard holding it); ``--save-images DIR`` writes the images shown to ``DIR/<shard>/<key>.<ext>``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from fastwds.arguments import add_flag, positive
from fastwds.errors import InvalidInputError
from fastwds.media import ImageInfo, inspect_images
from fastwds.tar.names import split_name
from fastwds.tar.scanner import Sample, TarScanner, group_samples
from fastwds.tar.shards import SHARD_SUFFIXES, ShardSet, expand_shards
from fastwds.verify.rules import (
    is_image_extension,
    is_json_extension,
    json_findings,
    parse_json_member,
    sample_structure_findings,
)

DESCRIPTION = ("Show the samples of a shard, a folder of shards or a brace pattern (from any producer): members "
               "and sizes, image format and size, the JSON, and MISMATCH when the JSON's name/images list or "
               "<image> tokens disagree with the members.")
DEFAULT_FOLDER_SAMPLES = 3
MAX_STRING = 300
MAX_ITEMS = 20
TEXT_EXTENSIONS = frozenset(("txt", "text", "cls", "caption", "md", "csv", "tsv", "id", "url"))
MISMATCH_CODES = frozenset(("name_mismatch", "image_token_mismatch"))


def shorten(value: Any) -> Any:
    """Long strings and lists cut to a readable size, saying how much was left out."""
    if isinstance(value, str) and len(value) > MAX_STRING:
        return f"{value[:MAX_STRING]}... [{len(value) - MAX_STRING:,} more chars]"
    if isinstance(value, list):
        head = [shorten(item) for item in value[:MAX_ITEMS]]
        return head + ([f"... [{len(value) - MAX_ITEMS:,} more items]"] if len(value) > MAX_ITEMS else [])
    if isinstance(value, dict):
        return {k: shorten(v) for k, v in value.items()}
    return value


def pretty_json(value: Any, indent: str = "") -> str:
    """Indented JSON, but a list or object that fits on one short line stays on one line
    (shapes, small lists of numbers, {role, content} turns with short text)."""
    compact = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, (dict, list)) or (len(compact) + len(indent) <= 100 and "\n" not in compact):
        return compact
    inner = indent + "  "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {pretty_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}" if items else "{}"
    items = [f"{inner}{pretty_json(v, inner)}" for v in value]
    return "[\n" + ",\n".join(items) + f"\n{indent}]" if items else "[]"


def shard_stem(path: Path) -> str:
    name = path.name
    for suffix in SHARD_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def safe_target(folder: Path, shard: Path, member_key: str, ext: str) -> Path | None:
    """``folder/<shard stem>/<key>.<ext>``, or None when the key would escape the folder
    (absolute paths, ``..``, NUL bytes: shards from elsewhere are untrusted)."""
    relative = f"{member_key}.{ext}"
    parts = relative.split("/")
    if "\0" in relative or relative.startswith("/") or "\\" in relative or any(p in ("", ".", "..") for p in parts):
        return None
    base = (folder / shard_stem(shard)).resolve()
    target = (base / relative).resolve()
    return target if target.is_relative_to(base) else None


def npy_summary(data: bytes) -> str:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)  # never unpickle: shards may be untrusted
    except Exception as error:  # a damaged or pickled .npy is shown, not fatal
        return f"not a readable .npy ({error})"
    return f"npy {array.dtype} {tuple(array.shape)}"


class Inspector:
    def __init__(self, out: TextIO, full_json: bool, save_dir: Path | None, as_json: bool = False) -> None:
        self.out = out
        self.full_json = full_json
        self.save_dir = save_dir
        self.as_json = as_json
        self.saved = 0
        self.refused = 0

    def record(self, shard: str, sample: Sample) -> dict[str, Any]:
        """The sample as one JSON object (``--json``): members with their sizes and image headers,
        the parsed JSON member, and the problems the text view flags."""
        extensions = sample.extensions()
        images = [(ext, m) for ext, m in sample.members if is_image_extension(ext) and m.data is not None]
        infos = dict(zip([m.name for _, m in images], inspect_images([m.data for _, m in images])))
        members, document, problems = [], None, [f.message for f in sample_structure_findings(sample.key, extensions)]
        for ext, member in sample.members:
            info = infos.get(member.name)
            entry: dict[str, Any] = {"name": member.name, "size": member.size}
            if isinstance(info, ImageInfo):
                entry["image"] = {"format": info.format, "width": info.width, "height": info.height}
            elif info is not None:
                problems.append(f"{member.name}: {info.reason}: {info.detail}")
            members.append(entry)
            if member.data is not None and is_json_extension(ext):
                try:
                    document = parse_json_member(member.data)
                except ValueError as error:
                    problems.append(f"{member.name} is not valid JSON: {error}")
                    continue
                problems += [f.message for f in json_findings(sample.key, member.name, document, extensions)]
        return {"shard": shard, "key": sample.key, "index": sample.index, "offset": sample.offset,
                "members": members, "json": document, "problems": problems}

    def show(self, shard: Path, sample: Sample, shard_name: str = "") -> None:
        if self.as_json:
            self.out.write(json.dumps(self.record(shard_name or shard.name, sample), ensure_ascii=False) + "\n")
            return
        write = self.out.write
        extensions = sample.extensions()
        write(f"  sample {sample.index}  key {sample.key!r}  (byte {sample.offset:,}, {len(sample.members)} members)\n")
        image_members = [(ext, m) for ext, m in sample.members if is_image_extension(ext) and m.data is not None]
        infos = dict(zip([m.name for _, m in image_members], inspect_images([m.data for _, m in image_members])))
        notes: list[str] = [f"PROBLEM: {f.message}" for f in sample_structure_findings(sample.key, extensions)]
        width = max(len(m.name) for _, m in sample.members)
        for ext, member in sample.members:
            detail = ""
            info = infos.get(member.name)
            if isinstance(info, ImageInfo):
                detail = f"{info.format} {info.width}x{info.height}"
                self.save(shard, sample.key, ext, member.data)
            elif info is not None:
                detail = f"not a valid image: {info.reason}"
                notes.append(f"PROBLEM: {member.name}: {info.reason}: {info.detail}")
            elif member.data is not None and ext.rsplit(".", 1)[-1].lower() == "npy":
                detail = npy_summary(member.data)
            write(f"    {member.name:<{width}}  {member.size:>12,} B  {detail}".rstrip() + "\n")
            if member.data is None:
                continue
            if is_json_extension(ext):
                notes += self.show_json(sample.key, member.name, member.data, extensions)
            elif ext.lower() in TEXT_EXTENSIONS:
                text = member.data.decode("utf-8", "replace")
                write(f"      {json.dumps(text if self.full_json else shorten(text), ensure_ascii=False)}\n")
        for note in notes:
            write(f"    {note}\n")

    def show_json(self, key: str, name: str, data: bytes, extensions: list[str]) -> list[str]:
        try:
            document = parse_json_member(data)
        except ValueError as error:
            preview = data[:MAX_STRING].decode("utf-8", "replace")
            self.out.write(f"      {preview!r}\n")
            return [f"PROBLEM: {name} is not valid JSON: {error}"]
        shown = document if self.full_json else shorten(document)
        text = pretty_json(shown)
        self.out.write("".join(f"      {line}\n" for line in text.splitlines()))
        return [f"{'MISMATCH' if f.code in MISMATCH_CODES else 'PROBLEM'}: {f.message}"
                for f in json_findings(key, name, document, extensions)]

    def save(self, shard: Path, key: str, ext: str, data: bytes | None) -> None:
        if self.save_dir is None or data is None:
            return
        target = safe_target(self.save_dir, shard, key, ext)
        if target is None:
            self.refused += 1
            print(f"fastwds inspect: not saving {key}.{ext} from {shard.name}: unsafe path", file=sys.stderr)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.saved += 1


def inspect(spec: str, key: str | None = None, limit: int | None = None, full_json: bool = False,
            save_dir: str | os.PathLike | None = None, out: TextIO = sys.stdout, as_json: bool = False) -> int:
    """Print samples of the shards under ``spec``; returns how many were shown. ``key`` picks
    one sample (InvalidInputError when no shard has it)."""
    shard_set = expand_shards(spec)
    try:
        return _inspect(shard_set, spec, key, limit, full_json, save_dir, out, as_json)
    finally:
        shard_set.close()


def _inspect(shard_set: ShardSet, spec: str, key: str | None, limit: int | None, full_json: bool,
             save_dir: str | os.PathLike | None, out: TextIO, as_json: bool = False) -> int:
    if limit is None and key is None and shard_set.whole_folder:
        limit = DEFAULT_FOLDER_SAMPLES
    inspector = Inspector(out, full_json, Path(save_dir) if save_dir is not None else None, as_json)
    if key is not None:
        def wanted(name: str) -> bool:
            split = split_name(name)
            return split is not None and split[0] == key
    else:
        wanted = True  # type: ignore[assignment]
    shown = 0
    for path in shard_set.paths:
        if (limit is not None and shown >= limit) or (key is not None and shown):
            break
        header = f"shard {shard_set.relative(path)} ({shard_set.size(path):,} bytes)\n"
        with shard_set.open(path) as (stream, compressed):
            scanner = TarScanner(stream, want_data=wanted, seekable=not compressed and path not in shard_set.urls)
            for sample in group_samples(iter(scanner)):
                if key is not None and sample.key != key:
                    continue
                if not as_json:
                    out.write(header)
                header = ""
                inspector.show(path, sample, shard_set.relative(path))
                shown += 1
                if key is not None or (limit is not None and shown >= limit):
                    break
        for defect in scanner.defects:  # only defects before where we stopped reading
            message = f"{defect.code} at byte {defect.offset}: {defect.detail} (fastwds verify checks the whole dataset)"
            if as_json:
                out.write(json.dumps({"shard": shard_set.relative(path), "problem": message}) + "\n")
            else:
                out.write(f"{header}  PROBLEM: {message}\n")
            header = ""
    if key is not None and not shown:
        raise InvalidInputError(f"key {key!r} not found in {len(shard_set.paths)} shard(s) of {spec}")
    scope = f"{shown} sample(s) from {len(shard_set.paths)} shard(s)"
    if inspector.save_dir is not None:
        scope += f"; saved {inspector.saved} image(s) to {inspector.save_dir}"
        if inspector.refused:
            scope += f", refused {inspector.refused} unsafe name(s)"
    print(f"shown {scope}", file=sys.stderr if as_json else out)
    return shown


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="a shard, a folder of shards, or a pattern like "
                                                     "'out/shard-{000000..000009}.tar'; the same in a bucket "
                                                     "(s3://bucket/prefix/)")
    parser.add_argument("key", metavar="KEY", nargs="?", help="show only the sample with this key")
    parser.add_argument("-n", "--num-samples", type=positive(int), default=None, dest="limit", metavar="N",
                        help=f"show at most N samples (default: {DEFAULT_FOLDER_SAMPLES} for a folder, "
                             "every sample for a shard or pattern)")
    parser.add_argument("--num_samples", type=positive(int), dest="limit", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    add_flag(parser, "--save-images", "--save_images", metavar="DIR", default=None, dest="save_images",
                        help="write the images shown to DIR/<shard>/<key>.<ext>")
    parser.add_argument("--full-json", action="store_true", help="print JSON without shortening long values")
    parser.add_argument("--json", action="store_true",
                        help="print each sample as one JSON object per line on stdout (members, sizes, image "
                             "headers, the JSON member, problems)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    inspect(args.path, args.key, args.limit, args.full_json, args.save_images, as_json=args.json)
    return 0
