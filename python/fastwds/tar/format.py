"""Tar header fields as every reader decodes them: numbers (octal or GNU base-256), checksums,
PAX records, the ustar name with its prefix, and the safety rule for member paths."""

from __future__ import annotations

# The reader's errors are defined in fastwds.errors (the public error surface) and re-exported here.
from fastwds.errors import ShardFormatError, UnsafeMemberError  # noqa: F401

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
# Types that carry no data blocks whatever their size field says (tarfile does the same).
NO_DATA_TYPES = frozenset("123456")
REGULAR_TYPES = frozenset(("0", "\0", "7"))
# Headers that describe the next member: PAX, PAX global, GNU long name, GNU long link.
EXTENSION_TYPES = frozenset("xgLK")
# POSIX ustar magic; GNU tar's "ustar  \0" uses the prefix field for other things.
USTAR_MAGIC = b"ustar\0"


def padded(size: int) -> int:
    """Bytes a member's data occupies: its size rounded up to whole blocks."""
    return -(-size // BLOCK) * BLOCK


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


def decode_name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def ustar_prefix(header: bytes) -> str:
    """The POSIX ustar prefix field ('' for GNU headers, which use those bytes otherwise)."""
    return decode_name(header[345:500]) if header[257:263] == USTAR_MAGIC else ""


def ustar_name(header: bytes) -> str:
    """The member name from the header alone: prefix + '/' + name when there is a prefix."""
    name, prefix = decode_name(header[:100]), ustar_prefix(header)
    return f"{prefix}/{name}" if prefix else name


def check_member_path(name: str, source: str) -> None:
    """Refuse names a reader that writes members out would write outside its folder with."""
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise UnsafeMemberError(f"{source}: member {name!r} points outside the archive (absolute path or "
                                "'..'); refusing to read this shard")


def is_unsafe_path(name: str) -> bool:
    try:
        check_member_path(name, "")
    except UnsafeMemberError:
        return True
    return False
