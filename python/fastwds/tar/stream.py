"""Members and samples of a tar shard, read front to back from a stream: the fast path behind
``fastwds.WebDataset``.

One ``read`` per header and one per member's data (a buffered file passes large reads straight
through), so a 100 MB volume costs one copy. Reads shards from any producer: plain ustar, the
ustar prefix, PAX extended headers (webdataset's writer) and GNU long names. Directories, links and
devices carry no sample data and are skipped, never followed. Member names that are absolute or
contain ``..`` are refused: a reader that wrote members out under their names would write
outside its folder. Keys and skipped members follow ``fastwds.tar.names``, as in ``verify``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from fastwds.tar.format import (
    BLOCK,
    EXTENSION_TYPES,
    NO_DATA_TYPES,
    REGULAR_TYPES,
    ZERO_BLOCK,
    ShardFormatError,
    check_member_path,
    checksum_ok,
    parse_number,
    parse_pax,
    ustar_name,
)
from fastwds.tar.names import is_metadata, split_name


def iter_members(stream: BinaryIO, source: str,
                 read_value: Callable[[str, int, BinaryIO], Any] | None = None) -> Iterator[tuple[str, Any]]:
    """``(name, data)`` of every regular file member of the tar in ``stream``. ``read_value(name,
    size, stream)``, if given, reads a member's ``size`` bytes itself and returns what to yield
    (e.g. an array read straight into its own memory), or ``NotImplemented`` to get bytes."""
    read = stream.read
    offset = 0
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        header = read(BLOCK)
        if len(header) < BLOCK:
            if not header:
                if offset == 0:  # tarfile and webdataset yield nothing here, silently
                    raise ShardFormatError(f"{source}: empty file (0 bytes), not a tar archive")
                return  # no end-of-archive blocks: tolerated, as tarfile and webdataset do
            raise ShardFormatError(f"{source}: cut short inside the header at byte {offset}")
        if header == ZERO_BLOCK:
            return
        if not checksum_ok(header):
            raise ShardFormatError(f"{source}: bad tar header checksum at byte {offset} (not a tar file, or damaged)")
        typeflag = chr(header[156])
        try:
            size = 0 if typeflag in NO_DATA_TYPES else parse_number(header[124:136])
            if "size" in pax:
                size = int(pax["size"])
        except ValueError:
            raise ShardFormatError(f"{source}: bad size in the tar header at byte {offset}") from None
        padding = -size % BLOCK
        at = offset
        offset += BLOCK + size + padding
        if typeflag in EXTENSION_TYPES:
            data = _read_exactly(read, size, source, at)
            if typeflag == "x":
                try:
                    pax = parse_pax(data)
                except (ValueError, UnicodeDecodeError):
                    raise ShardFormatError(f"{source}: bad PAX header at byte {at}") from None
            elif typeflag == "L":
                long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            # "g" (global PAX defaults) and "K" (GNU long link name): nothing a reader uses.
        else:
            name = pax.get("path") or long_name or ustar_name(header)
            pax, long_name = {}, None
            if typeflag in REGULAR_TYPES:
                check_member_path(name, source)
                data = NotImplemented if read_value is None else read_value(name, size, stream)
                if data is NotImplemented:
                    data = _read_exactly(read, size, source, at)
                yield name, data
            else:  # directories, links, devices: no sample data, never followed
                _read_exactly(read, size, source, at)
        if padding and len(read(padding)) < padding:
            raise ShardFormatError(f"{source}: cut short after the member at byte {at}")


def _read_exactly(read: Callable[[int], bytes], size: int, source: str, offset: int) -> bytes:
    data = read(size)
    if len(data) < size:
        raise ShardFormatError(f"{source}: member at byte {offset} is cut short ({len(data)} of {size} bytes)")
    return data


def iter_samples(members: Iterator[tuple[str, Any]], url: str) -> Iterator[dict]:
    """Consecutive members with the same key form a sample: ``{"__key__", "__url__", ext: data}``.
    Metadata members (``__x__``) and names without a key.extension split are left out, as
    webdataset and Energon leave them out."""
    sample: dict | None = None
    folded: set[str] = set()
    for name, data in members:
        parts = split_name(name) if not is_metadata(name) else None
        if parts is None:
            continue
        key, ext = parts
        if sample is None or sample["__key__"] != key:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": url}
            folded = set()
        # As verify: "JPG" and "jpg" are one member to webdataset, which lowercases.
        if ext.lower() in folded:
            raise ShardFormatError(f"{url}: sample {key!r} has member {ext.lower()!r} twice")
        folded.add(ext.lower())
        sample[ext] = data
    if sample is not None:
        yield sample
