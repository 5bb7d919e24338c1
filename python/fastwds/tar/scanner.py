"""Read shards made by any producer at the level of tar blocks, the way readers see them.

``TarScanner`` walks a tar file header by header and yields every member with its offsets (the
first header block, extension headers included, and the data), its size and type, and what it
took to name it (PAX ``path``, GNU ``L`` long name, ustar prefix). It does not trust the archive:
a bad checksum, a member cut short, missing end-of-archive blocks or data after them become
``TarDefect`` records instead of exceptions, so ``verify`` can report them and ``inspect`` can
still show what precedes them.

``group_samples`` groups members into samples exactly as webdataset, wids and Energon do
(consecutive members with the same key, by ``fastwds.tar.names``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from fastwds.tar.format import (
    BLOCK,
    NO_DATA_TYPES,
    REGULAR_TYPES,
    checksum_ok,
    decode_name,
    padded,
    parse_number,
    parse_pax,
    ustar_prefix,
)
from fastwds.tar.names import is_metadata, split_name


@dataclass(frozen=True)
class TarMember:
    name: str  # the name readers that honour PAX / GNU long names see
    header_offset: int  # first header block of the member, extension headers included
    data_offset: int
    size: int
    typeflag: str
    ustar_name: str  # the 100-byte name field alone: what wids reads
    extensions: tuple[str, ...]  # "pax", "pax_global", "gnu_longname", "ustar_prefix"
    pax: dict[str, str] = field(default_factory=dict)
    data: bytes | None = None

    @property
    def end(self) -> int:
        """Offset after the member's padded data: where the next header starts."""
        return self.data_offset + padded(self.size)

    @property
    def is_regular(self) -> bool:
        return self.typeflag in REGULAR_TYPES


@dataclass(frozen=True)
class TarDefect:
    code: str  # tar_bad_checksum, tar_bad_header, tar_truncated, tar_missing_end, tar_data_after_end
    offset: int
    detail: str


class TarScanner:
    """Iterate the members of one tar stream; see the module docstring.

    ``want_data(name)`` says which members' bytes to keep (others are skipped, or read and dropped
    when hashing). ``hashers`` see every byte of the file, so a verify pass reads each shard once.
    After iteration: ``defects``, ``end_of_data`` (where the end-of-archive blocks start, or where
    scanning stopped) and ``size`` (bytes read).
    """

    def __init__(self, stream: BinaryIO, want_data: Callable[[str], bool] | bool = True,
                 hashers: list | None = None, seekable: bool = True) -> None:
        self.stream = stream
        self.want_data = want_data if callable(want_data) else (lambda _name, keep=want_data: keep)
        self.hashers = hashers or []
        self.seekable = seekable and not self.hashers
        self.position = 0
        self.defects: list[TarDefect] = []
        self.end_of_data = 0
        self.size = 0
        self._size: int | None = None

    def _read(self, count: int) -> bytes:
        data = self.stream.read(count)
        for hasher in self.hashers:
            hasher.update(data)
        self.position += len(data)
        return data

    def _skip(self, count: int) -> int:
        """Skip ``count`` bytes; returns how many were really there."""
        if self.seekable:
            # Seeking past the end succeeds silently: clamp to the real size.
            end = min(self.position + count, self._file_size())
            skipped = end - self.position
            self.stream.seek(end)
            self.position = end
            return skipped
        skipped = 0
        while skipped < count:
            chunk = self._read(min(count - skipped, 1 << 20))
            if not chunk:
                break
            skipped += len(chunk)
        return skipped

    def _file_size(self) -> int:
        if self._size is None:
            here = self.stream.tell()
            self._size = self.stream.seek(0, os.SEEK_END)
            self.stream.seek(here)
        return self._size

    def _defect(self, code: str, offset: int, detail: str) -> None:
        self.defects.append(TarDefect(code, offset, detail))

    def __iter__(self) -> Iterator[TarMember]:
        global_pax: dict[str, str] = {}
        pending_pax: dict[str, str] = {}
        pending_longname: str | None = None
        pending_extensions: list[str] = []
        first_header: int | None = None
        while True:
            offset = self.position
            block = self._read(BLOCK)
            if not block:
                if pending_extensions:
                    self._defect("tar_truncated", offset, "the archive ends after an extension header, "
                                 "before the member it describes")
                else:
                    self._defect("tar_missing_end", offset, "no end-of-archive blocks: the file ends "
                                 "right after the last member (two zero blocks expected)")
                self.end_of_data = offset
                break
            if len(block) < BLOCK:
                if block.count(0) == len(block) and not pending_extensions:
                    self._defect("tar_missing_end", offset, f"the end-of-archive blocks are cut short "
                                 f"({len(block)} zero bytes instead of {2 * BLOCK})")
                else:
                    self._defect("tar_truncated", offset, f"the archive ends inside a header block "
                                 f"({len(block)} of {BLOCK} bytes)")
                self.end_of_data = offset
                break
            if block == bytes(BLOCK):
                self.end_of_data = offset
                self._check_end(offset)
                break
            if not checksum_ok(block, signed_sums=True):
                self._defect("tar_bad_checksum", offset, "header checksum does not match: the archive is "
                             "corrupt from here on (readers stop or fail at this point)")
                self.end_of_data = offset
                break
            try:
                size = parse_number(block[124:136])
            except ValueError:
                self._defect("tar_bad_header", offset, f"size field {block[124:136]!r} is not a number")
                self.end_of_data = offset
                break
            typeflag = chr(block[156])
            if first_header is None:
                first_header = offset
            if typeflag in "xgLK":
                data = self._read(padded(size))
                if len(data) < padded(size):
                    self._defect("tar_truncated", offset, f"extension header ({typeflag!r}) is cut short")
                    self.end_of_data = offset
                    break
                payload = data[:size]
                if typeflag in "xg":
                    try:
                        records = parse_pax(payload)
                    except ValueError as error:
                        self._defect("tar_bad_header", offset, f"PAX header: {error}")
                        self.end_of_data = offset
                        break
                    if typeflag == "x":
                        pending_pax.update(records)
                        pending_extensions.append("pax")
                    else:
                        global_pax.update(records)
                        pending_extensions.append("pax_global")
                        if first_header == offset:
                            # tarfile (so webdataset and Energon's .tar.idx) does not count a global
                            # header as part of the member after it.
                            first_header = None
                elif typeflag == "L":
                    pending_longname = decode_name(payload)
                    pending_extensions.append("gnu_longname")
                continue
            pax = {**global_pax, **pending_pax}
            ustar_name = decode_name(block[:100])
            name = ustar_name
            extensions = list(pending_extensions)
            prefix = ustar_prefix(block)
            if prefix:
                name = f"{prefix}/{ustar_name}"
                extensions.append("ustar_prefix")
            if pending_longname is not None:
                name = pending_longname
            if "path" in pax:
                name = pax["path"]
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    self._defect("tar_bad_header", offset, f"PAX size {pax['size']!r} is not a number")
                    self.end_of_data = offset
                    break
            data_size = 0 if typeflag in NO_DATA_TYPES else size
            data_offset = self.position
            content: bytes | None = None
            if self.want_data(name) and data_size:
                content = self._read(data_size)
                got = len(content)
                got += self._skip(padded(data_size) - data_size) if got == data_size else 0
            else:
                got = self._skip(padded(data_size))
            if got < padded(data_size):
                self._defect("tar_truncated", first_header, f"member {name!r} is cut short: {got} of "
                             f"{padded(data_size)} bytes (data plus padding) are present")
                self.end_of_data = first_header
                break
            yield TarMember(name, first_header, data_offset, data_size, typeflag, ustar_name,
                            tuple(extensions), pax, content)
            pending_pax, pending_longname, pending_extensions, first_header = {}, None, [], None
        self._drain()

    def _check_end(self, offset: int) -> None:
        """After the first zero block: a second one must follow, then only zeros to the end
        (GNU tar and tarfile pad the archive to a 10 KiB record)."""
        second = self._read(BLOCK)
        if len(second) < BLOCK and second.count(0) == len(second):
            self._defect("tar_missing_end", offset, "only one end-of-archive block (two expected)")
            return
        chunk_offset, chunk = offset + BLOCK, second
        while chunk:
            stripped = chunk.lstrip(b"\0")
            if stripped:
                where = chunk_offset + len(chunk) - len(stripped)
                # A valid header here is a member every reader misses: they stop at the marker.
                after = chunk[(where - chunk_offset) // BLOCK * BLOCK:][:BLOCK]
                lost = len(after) == BLOCK and checksum_ok(after, signed_sums=True)
                self._defect("tar_data_after_end", where,
                             "tar headers follow the end-of-archive blocks: readers stop before them, "
                             "so those members are lost" if lost else
                             "non-zero bytes follow the end-of-archive blocks")
                return
            chunk_offset, chunk = self.position, self._read(1 << 20)

    def _drain(self) -> None:
        """Read whatever is left so hashes cover the whole file and ``size`` is the file size."""
        if self.hashers:
            while self._read(1 << 20):
                pass
        self.size = self._file_size() if self.seekable else self.position


@dataclass
class Sample:
    key: str
    index: int  # position in the shard
    members: list[tuple[str, TarMember]]  # (extension, member) in archive order

    @property
    def offset(self) -> int:
        return self.members[0][1].header_offset

    def extensions(self) -> list[str]:
        return [ext for ext, _ in self.members]


def skip_reason(member: TarMember) -> str | None:
    """Why readers leave this member out of every sample, or None when they use it."""
    if not member.is_regular:
        return f"it is not a regular file (type {member.typeflag!r})"
    if is_metadata(member.name):
        return "webdataset and Energon skip '__name__' metadata members"
    if split_name(member.name) is None:
        return "its name does not split into key.extension"
    return None


def group_samples(members: Iterator[TarMember],
                 on_skip: Callable[[TarMember, str], None] | None = None) -> Iterator[Sample]:
    """Group members into samples as webdataset does: consecutive members with the same key.
    A key that comes back later starts a new sample (readers do the same; ``verify`` flags it)."""
    current: Sample | None = None
    index = 0
    for member in members:
        split = split_name(member.name) if member.is_regular and not is_metadata(member.name) else None
        if split is None:
            if on_skip is not None:
                on_skip(member, skip_reason(member) or "")
            continue
        key, ext = split
        if current is not None and current.key == key:
            current.members.append((ext, member))
            continue
        if current is not None:
            yield current
            index += 1
        current = Sample(key, index, [(ext, member)])
    if current is not None:
        yield current
