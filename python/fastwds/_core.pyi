"""Type stub for the Rust extension ``fastwds._core`` (kept by hand; checked by mypy.stubtest)."""

import os
from collections.abc import Sequence
from typing import final

from typing_extensions import Self

__all__ = [
    "__version__",
    "MAX_KEY_LEN",
    "ShardSink",
    "ShardRecord",
    "BinaryColumn",
    "Inflater",
    "portable_key",
    "portable_keys",
    "inspect_images",
    "chat_documents",
    "sft_documents",
    "read_files",
    "_shard_record",
    "SampleError",
    "DuplicateKeyError",
    "ShardPatternError",
    "WriterClosedError",
    "ShardBusyError",
]

__version__: str
MAX_KEY_LEN: int

class SampleError(ValueError):
    sample_id: str | None

class DuplicateKeyError(SampleError): ...
class ShardPatternError(ValueError): ...
class WriterClosedError(ValueError): ...
class ShardBusyError(BlockingIOError): ...

# A member value: bytes, or a (BinaryColumn, index) reference into Arrow memory.
_Payload = bytes | tuple[BinaryColumn, int]

def portable_key(sample_id: str) -> str: ...
def portable_keys(sample_ids: list[str]) -> list[str]: ...
def inspect_images(images: Sequence[_Payload | None]) -> list[tuple[str, str, int, int]]: ...
def chat_documents(
    ids: BinaryColumn, turn_starts: Sequence[int], role: BinaryColumn | None, from_: BinaryColumn | None,
    content: BinaryColumn | None, value: BinaryColumn | None, data_source: BinaryColumn | None,
    image_starts: Sequence[int], images: Sequence[tuple[str, int, int] | None], file: str, first_row: int,
) -> list[bytes | None]: ...
def sft_documents(
    ids: Sequence[object], conversations: Sequence[object], image_starts: Sequence[int],
    images: Sequence[tuple[str, int, int] | None], file: str, first_row: int,
) -> list[bytes | None]: ...
def _shard_record(
    index: int, path: str, data_end: int, size: int, sha256: str, oversized: bool,
    samples: Sequence[tuple[str, int, Sequence[tuple[str, int, int]]]],
) -> ShardRecord: ...
def read_files(paths: Sequence[str | os.PathLike[str]], max_bytes: int) -> list[tuple[str, bytes | int | str | None]]: ...

@final
class BinaryColumn:
    def __new__(
        cls, data: object, offsets: object, validity: object | None, offset: int, length: int, large: bool
    ) -> Self: ...
    def __len__(self) -> int: ...
    def value_len(self, i: int) -> int: ...
    def get(self, i: int) -> bytes | None: ...

@final
class ShardRecord:
    @property
    def index(self) -> int: ...
    @property
    def path(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def num_samples(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def oversized(self) -> bool: ...
    @property
    def data_end(self) -> int: ...
    def samples(self) -> list[tuple[str, int, int, list[tuple[str, int, int]]]]: ...
    def keys(self) -> list[str]: ...
    def __reduce__(self) -> tuple[object, tuple[object, ...]]: ...

@final
class ShardSink:
    def __new__(
        cls,
        pattern: str,
        *,
        maxcount: int,
        maxsize: int,
        mtime: int = 0,
        fsync: bool = True,
        overwrite: bool = False,
        start_index: int = 0,
        energon_index: bool = False,
        dali_index: bool = False,
    ) -> Self: ...
    def write(self, sample_id: str, members: Sequence[tuple[str, bytes]]) -> str: ...
    def write_batch(
        self, sample_ids: Sequence[str], columns: Sequence[tuple[str, Sequence[_Payload | None]]]
    ) -> int: ...
    def finish_shard(self) -> None: ...
    @property
    def num_open(self) -> int: ...
    @property
    def num_finished(self) -> int: ...
    def close(self) -> list[ShardRecord]: ...
    def abort(self) -> None: ...

@final
class Inflater:
    def __new__(cls, crc: int, size: int) -> Self: ...
    def inflate(self, data: bytes | memoryview, out: bytearray | memoryview) -> tuple[int, int]: ...
    @property
    def finished(self) -> bool: ...
