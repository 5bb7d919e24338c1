"""Members and samples of a tar shard, read front to back from a stream: the fast path behind
``fastwds.WebDataset``.

One ``read`` per header and one per member's data (a buffered file passes large reads straight
through), so a 100 MB volume costs one copy. Reads shards from any producer: plain ustar, the
ustar prefix, PAX extended headers (webdataset's writer) and GNU long names. Directories, links and
devices carry no sample data and are skipped, never followed. Member names that are absolute or
contain ``..`` are refused: a reader that wrote members out under their names would write
outside its folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from fastwds.errors import FastwdsError

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
REGULAR = (b"0", b"\0", b"7")
EXTENSIONS = (b"x", b"g", b"L", b"K")  # headers that describe the next member
NO_DATA = frozenset(b"123456")  # links, devices, directories, FIFOs: the size field means nothing
USTAR_POSIX = b"ustar\x0000"  # GNU tar's "ustar  \0" uses the prefix field for other things


class ShardFormatError(FastwdsError, ValueError):
    """A shard is not a tar archive fastwds can read (bad header, cut short, duplicate member)."""


class UnsafeMemberError(ShardFormatError):
    """A member's path is absolute or climbs out of the archive with ``..``."""


def parse_number(field: bytes) -> int:
    """A numeric header field: octal text ending at the first NUL (as tarfile reads it), or GNU
    base-256 for values octal cannot hold."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip(b" ")
    return int(text, 8) if text else 0


def checksum_ok(header: bytes, signed_sums: bool = False) -> bool:
    """The header's checksum, computed with its own field as eight spaces. ``signed_sums`` also
    accepts sums of signed chars, which some old producers wrote (tarfile and GNU tar accept them)."""
    try:
        stored = parse_number(header[148:156])
    except ValueError:  # not even a number: not a tar header
        return False
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    if stored == unsigned:
        return True
    high = sum(1 for b in header[:148] + header[156:] if b >= 128) if signed_sums else 0
    return signed_sums and stored == unsigned - 256 * high


def parse_pax(data: bytes) -> dict[str, str]:
    """PAX records ``"<length> <key>=<value>\\n"``; raises ValueError when malformed."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data) and data[position] != 0:
        space = data.index(b" ", position)
        length = int(data[position:space])
        record = data[space + 1:position + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise ValueError(f"malformed PAX record at byte {position}")
        key, value = record[:-1].split(b"=", 1)
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


def check_member_path(name: str, source: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise UnsafeMemberError(f"{source}: member {name!r} points outside the archive (absolute path or "
                                "'..'); refusing to read this shard")


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
            if not header:  # no end-of-archive blocks: tolerated, as tarfile and webdataset do
                return
            raise ShardFormatError(f"{source}: cut short inside the header at byte {offset}")
        if header == ZERO_BLOCK:
            return
        if not checksum_ok(header):
            raise ShardFormatError(f"{source}: bad tar header checksum at byte {offset} (not a tar file, or damaged)")
        typeflag = header[156:157]
        try:
            size = 0 if header[156] in NO_DATA else parse_number(header[124:136])
            if "size" in pax:
                size = int(pax["size"])
        except ValueError:
            raise ShardFormatError(f"{source}: bad size in the tar header at byte {offset}") from None
        padding = -size % BLOCK
        at = offset
        offset += BLOCK + size + padding
        if typeflag in EXTENSIONS:
            data = _read_exactly(read, size, source, at)
            if typeflag == b"x":
                try:
                    pax = parse_pax(data)
                except (ValueError, UnicodeDecodeError):
                    raise ShardFormatError(f"{source}: bad PAX header at byte {at}") from None
            elif typeflag == b"L":
                long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            # "g" (global PAX defaults) and "K" (GNU long link name): nothing a reader uses.
        else:
            name = pax.get("path") or long_name or _ustar_name(header)
            pax, long_name = {}, None
            if typeflag in REGULAR:
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


def _ustar_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:265] == USTAR_POSIX and header[345] != 0:
        name = header[345:500].split(b"\0", 1)[0] + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def split_name(name: str) -> tuple[str, str] | None:
    """``dir/key.ext.more`` -> ``("dir/key", "ext.more")``: the key ends at the first dot of the
    basename, as in every WebDataset reader. None for names without one (readers skip them)."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot <= slash + 1:
        return None
    return name[:dot], name[dot + 1:].lower()


def iter_samples(members: Iterator[tuple[str, Any]], url: str) -> Iterator[dict]:
    """Consecutive members with the same key form a sample: ``{"__key__", "__url__", ext: data}``."""
    sample: dict | None = None
    for name, data in members:
        parts = split_name(name)
        if parts is None:
            continue
        key, ext = parts
        if sample is None or sample["__key__"] != key:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": url}
        elif ext in sample:
            raise ShardFormatError(f"{url}: sample {key!r} has member {ext!r} twice")
        sample[ext] = data
    if sample is not None:
        yield sample
