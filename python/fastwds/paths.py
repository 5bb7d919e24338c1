"""User path arguments: files, globs (``**`` too) and webdataset-style brace patterns."""

from __future__ import annotations

import glob
import hashlib
import os
import re
import unicodedata
from pathlib import Path

from fastwds.errors import InvalidInputError


def expand_braces(pattern: str) -> list[str]:
    """webdataset's brace patterns: ``{000..009}`` (zero padding kept), ``{a,b}``, nested."""
    depth, start = 0, 0
    for position, char in enumerate(pattern):
        if char == "{":
            if depth == 0:
                start = position
            depth += 1
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                head, body, tail = pattern[:start], pattern[start + 1:position], pattern[position + 1:]
                return [head + choice + rest for choice in _brace_choices(body) for rest in expand_braces(tail)]
    return [pattern]


def _brace_choices(body: str) -> list[str]:
    numeric = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if numeric:
        first, last = numeric.groups()
        width = len(first) if first.lstrip("-").startswith("0") or len(first) == len(last) else 0
        step = 1 if int(last) >= int(first) else -1
        return [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    parts, depth, start = [], 0, 0
    for position, char in enumerate(body):
        depth += char == "{"
        depth -= char == "}"
        if char == "," and depth == 0:
            parts.append(body[start:position])
            start = position + 1
    parts.append(body[start:])
    if len(parts) == 1:  # "{x}" is not a pattern: keep the braces, as braceexpand does
        return [f"{{{c}}}" for c in expand_braces(body)]
    return [choice for part in parts for choice in expand_braces(part)]


def matching_files(spec: str, missing: str = "no such file") -> list[Path]:
    """The files one argument names: a path, a glob, or a brace pattern ({000..009}, {a,b}),
    in order. Raises InvalidInputError naming the path or pattern that matched nothing."""
    files: list[Path] = []
    for candidate in expand_braces(spec):
        if glob.has_magic(candidate):
            matches = sorted(p for p in glob.glob(candidate, recursive=True) if os.path.isfile(p))
            if not matches:
                raise InvalidInputError(f"{candidate}: no file matches this pattern")
            files.extend(Path(m) for m in matches)
        elif os.path.isfile(candidate):
            files.append(Path(candidate))
        else:
            origin = f" (from pattern {spec})" if candidate != spec else ""
            raise InvalidInputError(f"{candidate}: {missing}{origin}")
    return files


def safe_name(raw: str, fallback: str = "data") -> str:
    """A file-name-safe version of ``raw`` for shard names (subset and dataset names): runs of other
    characters become '_', leading and trailing dots and underscores go. A name with non-ASCII
    characters (中文, données) also gets 8 hex digits of its sha256 (of its NFC form, as macOS and
    Linux may spell it differently): folders named only in other scripts would otherwise all
    become ``fallback`` and collide. ASCII names keep their spelling."""
    if not raw.isascii():
        raw = unicodedata.normalize("NFC", raw)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", raw).strip("._") or fallback
    if raw.isascii():
        return name
    return f"{name}_{hashlib.sha256(raw.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
