"""SFT JSON / JSONL rows: reading a file as rows with the bytes each occupies (so a task later reads
only its own part of a large file), and what a row must hold to be a sample: ``{id?,
image|images|video|videos, messages|conversations}`` with media given as file paths."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastwds import storage
from fastwds.convert.plan import RowSlice
from fastwds.energon import DEFAULT_SAMPLE_TYPE
from fastwds.errors import InvalidInputError
from fastwds.reasons import Problem, printable

MEDIA_KINDS = ("image", "video")
MEDIA_KEYS = {"image": ("image", "images"), "video": ("video", "videos")}
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_BOM = b"\xef\xbb\xbf"



@dataclass(frozen=True)
class SftOptions:
    media: str = "image"  # "image" or "video": which keys hold the media and which token counts
    media_root: str | None = None  # media paths are relative to this, else to their JSON file
    energon: bool = True  # write .nv-meta/ for Megatron-Energon
    # Train,val,test shares of the shards, as `energon prepare --split-ratio` takes them. A string:
    # options are compared with their JSON form when resuming, where a tuple would come back a list.
    split_ratio: str = "1,0,0"
    sample_type: str = DEFAULT_SAMPLE_TYPE  # Energon sample type named in dataset.yaml
    # Media must resolve (symlinks followed) inside the media root: --media-root, else the folder
    # holding every input file. A path in the JSON cannot pull /etc/... into a shard.
    media_outside_root: bool = False
    max_media_bytes: int = 2**30  # a bigger file is rejected (media_too_large), never read


@dataclass(frozen=True)
class ByteSlice(RowSlice):
    """Rows ``[start, stop)`` of a JSON file and the bytes ``[byte_start, byte_stop)`` they occupy."""

    byte_start: int = 0
    byte_stop: int = 0


@dataclass
class SftRow:
    id: str | None  # as given (None when absent: a deterministic one is derived)
    turns: Any
    paths: list[str]


def parse_row(value: Any, media: str) -> SftRow | Problem:
    """The id, turns and media paths of one input row, or why it cannot be a sample."""
    if isinstance(value, Problem):
        return value
    if not isinstance(value, dict):
        return Problem("bad_sample", f"the row is a JSON {type(value).__name__}, not an object")
    other = MEDIA_KINDS[1 - MEDIA_KINDS.index(media)]
    for key in MEDIA_KEYS[other]:
        if value.get(key) not in (None, "", []):
            return Problem("media_kind_mismatch", f"the row has {key!r} but --media is {media}")
    present = [key for key in MEDIA_KEYS[media] if value.get(key) not in (None, "", [])]
    if len(present) > 1:
        return Problem("bad_sample", f"the row has both {present[0]!r} and {present[1]!r}")
    paths = []
    if present:
        given = value[present[0]]
        for item in given if isinstance(given, list) else [given]:
            if not isinstance(item, str) or not item:
                return Problem("bad_sample", f"{present[0]!r} holds {item!r}, not a file path")
            paths.append(item)
    if value.get("messages") not in (None, "", []) and value.get("conversations") not in (None, "", []):
        return Problem("bad_sample", "the row has both 'messages' and 'conversations'")
    turns = value.get("messages") if value.get("messages") is not None else value.get("conversations")
    if (problem := id_problem(value.get("id"))) is not None:
        return problem
    system = value.get("system")  # ShareGPT keeps the system prompt beside the turns
    if system not in (None, "") and isinstance(turns, list):
        if not isinstance(system, str):
            return Problem("bad_sample", f"'system' is a JSON {JSON_TYPES.get(type(system), 'number')}, not text")
        if turns and isinstance(turns[0], dict) and str(turns[0].get("role", turns[0].get("from"))).lower() == "system":
            return Problem("bad_sample", "the row has both a 'system' field and a system turn")
        turns = [{"role": "system", "content": system}, *turns]
    return SftRow(given_id(value), turns, paths)


# The fields of a row fastwds reads; any other is not in the samples (planning says which).
ROW_FIELDS = frozenset({"id", "system", "messages", "conversations", *MEDIA_KEYS["image"], *MEDIA_KEYS["video"]})


JSON_TYPES = {bool: "true/false", list: "array", dict: "object"}


def id_problem(sample_id: Any) -> Problem | None:
    """An id must be a string or a number: ``true``, ``[1, 2]`` or ``{...}`` would become Python's
    spelling of them (``"True"``, ``"[1, 2]"``) as the sample's id."""
    if type(sample_id) in JSON_TYPES:
        return Problem("bad_sample", f"the id is a JSON {JSON_TYPES[type(sample_id)]}, not a string or a number")
    if isinstance(sample_id, str) and printable(sample_id) != sample_id:
        return Problem("invalid_unicode", f"the id '{printable(sample_id)}' holds a lone surrogate: not Unicode")
    return None


def given_id(value: Any) -> str | None:
    sample_id = value.get("id") if isinstance(value, dict) else None
    return None if sample_id is None or sample_id == "" else str(sample_id)


def derived_id(file: str, row: int) -> str:
    """Id of a row without one: ``<file path without extension>-<row>``, '/' as '__'."""
    return f"{Path(file).with_suffix('').as_posix().replace('/', '__')}-{row}"


def is_json_array(path: str) -> bool:
    """A file is a JSON array when it starts with '['; otherwise it is JSON Lines."""
    head = storage.read_range(path, 0, 4096).removeprefix(_BOM).lstrip()
    return head.startswith(b"[")


def iter_rows(path: str) -> Iterator[tuple[int, int, Any]]:
    """``(byte_start, byte_stop, value)`` per row; ``value`` is a ``Problem`` for a JSONL line
    that does not parse. A JSON array that does not parse is an error for the whole file. A file
    in an object store is read from a local copy (planning reads every byte of it anyway)."""
    local = Path(storage.local_copy(path))
    if is_json_array(path):
        yield from _iter_array(local, path)
        return
    if path.lower().endswith(".json"):
        _refuse_wrapped_samples(local, path)
    yield from _iter_lines(local)


def _refuse_wrapped_samples(local: Path, path: str) -> None:
    """A ``.json`` file holding one object that is not itself a sample (``{"data": [...]}``) would
    otherwise become a rejected row per line: say what it is instead."""
    try:
        value = json.loads(local.read_bytes())
    except ValueError:  # several values: JSON Lines with a .json name
        return
    if isinstance(value, dict) and not {"messages", "conversations"} & value.keys():
        raise InvalidInputError(f"{path}: a JSON object with keys {sorted(value)[:5]}, not a list of samples; "
                                "give a JSON array or JSON Lines")


def _iter_lines(path: Path) -> Iterator[tuple[int, int, Any]]:
    with open(path, "rb") as file:
        offset = 0
        for number, line in enumerate(file, 1):
            start, offset = offset, offset + len(line)
            if number == 1 and line.startswith(_BOM):
                line, start = line[len(_BOM):], start + len(_BOM)
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as error:
                value = Problem("bad_json", f"line {number}: {error}")
            yield start, offset, value


def _iter_array(local: Path, path: str) -> Iterator[tuple[int, int, Any]]:
    raw = local.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{path}: not UTF-8 text ({error})") from None
    # Offsets in the text are characters; tasks seek by bytes. Convert incrementally (cheap when ASCII).
    bom = len(raw) - len(raw.removeprefix(_BOM))
    ascii_only = raw.isascii()
    del raw
    last_char, last_byte = 0, bom

    def to_byte(char: int) -> int:
        nonlocal last_char, last_byte
        if ascii_only:
            return char + bom
        last_byte += len(text[last_char:char].encode("utf-8"))
        last_char = char
        return last_byte

    position = _WHITESPACE.match(text, 1 + _WHITESPACE.match(text).end()).end()  # past the '['
    if text[position:position + 1] != "]":
        try:
            for start, end, value in _array_elements(text, position, closed=True):
                yield to_byte(start), to_byte(end), value
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: "
                                    f"{error.msg}") from None
        except ValueError as error:  # between the rows
            raise InvalidInputError(f"{path}: invalid JSON at {error}") from None
        position = _WHITESPACE.match(text, end).end()  # at the ']'
    if text[position + 1:].strip():
        raise InvalidInputError(f"{path}: unexpected text after the closing ']'")


def _array_elements(text: str, position: int, closed: bool) -> Iterator[tuple[int, int, Any]]:
    """A JSON array's elements from ``position`` (the first one's): ``(start, end, value)`` each,
    in characters. ``closed``: they end at a ']' (a whole array; the text after it is the caller's
    to check); else at the end of the text (the run of elements a task's slice holds). Raises
    json.JSONDecodeError for an element that does not parse, ValueError naming the line for
    anything else than a ',' between two elements."""
    decoder = json.JSONDecoder()
    last = "]" if closed else ""
    while True:
        value, end = decoder.raw_decode(text, position)
        yield position, end, value
        position = _WHITESPACE.match(text, end).end()
        separator = text[position:position + 1]
        if separator == last:
            return
        if separator != ",":
            raise ValueError(f"line {text.count(chr(10), 0, position) + 1}: expected ',' or ']' between rows")
        position = _WHITESPACE.match(text, position + 1).end()


def slice_rows(path: str, data: bytes, piece: ByteSlice, array_file: bool) -> Iterator[Any]:
    """The rows in a slice's bytes, parsed one by one as they are taken: a task's first media
    reads start once its first rows are parsed, not all of them (parsing 6,000 rows first kept the
    other core idle ~0.07 s per task). Unparseable JSONL lines become None (rejected at plan time
    as bad_json). Raises InvalidInputError when the bytes hold other rows than planned."""
    expected, count = piece.stop - piece.start, 0
    changed = InvalidInputError(f"{path}: changed since the plan (rows {piece.start}-{piece.stop} moved)")
    try:
        for value in (_array_values(data) if array_file else _line_values(data)):
            count += 1
            if count > expected:
                raise changed
            yield value
    except ValueError:  # not JSON where a row was planned (UnicodeDecodeError and JSONDecodeError too)
        raise changed from None
    if count != expected:
        raise changed


def _line_values(data: bytes) -> Iterator[Any]:
    for line in data.split(b"\n"):
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError:
                yield None


def _array_values(data: bytes) -> Iterator[Any]:
    """The elements of a run of a JSON array's elements (``a, b, c``), one by one."""
    text = data.decode("utf-8")
    position = _WHITESPACE.match(text).end()
    if position < len(text):
        for _, _, value in _array_elements(text, position, closed=False):
            yield value
