"""Planning a parquet conversion: every folder under the input root holding parquet files is a
subset with its own shards; files at the top form a subset named after the root. Planning reads
only metadata (row groups, sizes) and the id column (duplicate ids across the whole dataset)."""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from fastwds.convert.plan import KeyHashes, Plan, RowGroup, SourceFile, Task, cut_tasks
from fastwds import storage
from fastwds.errors import InvalidInputError
from fastwds.paths import safe_name
from fastwds.storage import FileEntry


@dataclass(frozen=True)
class ParquetColumns:
    id: str = "id"
    image: str = "image"
    images: str = "images"
    conversations: str = "conversations"
    data_source: str = "data_source"

    @property
    def single_image(self) -> str | None:
        """The one-image column, unless ``--images-column`` names that column (a list of images)."""
        return self.image if self.image != self.images else None

    def given(self) -> dict[str, str]:
        """The columns named on the command line (not the defaults), by flag."""
        defaults = ParquetColumns()
        return {f"--{name.replace('_', '-')}-column": getattr(self, name) for name in ("image", "images", "data_source")
                if getattr(self, name) != getattr(defaults, name)}


def is_parquet(name: str) -> bool:
    return name.lower().endswith(".parquet")  # HF and Spark write .parquet; some tools .PARQUET


def subset_name(relative_dir: str, root_name: str) -> str:
    """A file-name-safe subset name: the folder path with '/' as '__'; the root's own files are
    named after the root folder."""
    raw = relative_dir.replace("/", "__") if relative_dir not in ("", ".") else root_name
    return safe_name(raw)


def discover_subsets(root: str) -> tuple[str, dict[str, list[FileEntry]]]:
    """``(folder, {subset: [parquet files in it, sorted]})``, subsets sorted by name. ``root`` is
    a folder (or s3:// prefix) whose folders holding parquet files are subsets, or one parquet
    file (a subset named after it)."""
    if is_parquet(root) and storage.is_file(root):
        folder, name = root.rsplit("/", 1) if storage.is_url(root) else os.path.split(os.path.abspath(root))
        return folder, {safe_name(name[:-len(".parquet")]): [storage.stat_file(root)]}
    if not storage.is_dir(root):
        what = "file or folder" if not storage.is_url(root) else "prefix"
        raise InvalidInputError(f"{root}: no such {what}; give a folder of parquet files (subfolders are subsets) "
                                "or one .parquet file")
    root_name = storage.parse_url(root).key.rstrip("/").rsplit("/", 1)[-1] if storage.is_url(root) else \
        Path(root).resolve().name
    found: dict[str, tuple[str, list[FileEntry]]] = {}
    for entry in storage.list_files(root):
        if not is_parquet(entry.relative):
            continue
        relative_dir = entry.relative.rsplit("/", 1)[0] if "/" in entry.relative else ""
        name = subset_name(relative_dir, root_name or "data")
        if name in found and found[name][0] != relative_dir:
            raise InvalidInputError(f"folders {found[name][0]!r} and {relative_dir!r} both become subset "
                                    f"{name!r}; rename one of them")
        found.setdefault(name, (relative_dir, []))[1].append(entry)
    if not found:
        raise InvalidInputError(f"{root}: no .parquet files found (searched all subfolders)")
    return root, {name: files for name, (_, files) in sorted(found.items())}


def check_schema(path: Path, schema: pq.ParquetSchema, columns: ParquetColumns) -> list[str]:
    """The file's column names, once its columns are checked."""
    arrow = schema.to_arrow_schema()
    names = arrow.names
    for required in (columns.id, columns.conversations):
        if required not in names:
            raise InvalidInputError(f"{path}: no column {required!r} (columns: {', '.join(names)}); "
                                    f"name it with --{'id' if required == columns.id else 'conversations'}-column")
    if columns.single_image not in names and columns.images not in names:
        # Images under another name would be lost without a word: the rows become text-only.
        for field in arrow:
            if field.name not in (columns.id, columns.conversations, columns.data_source) and \
                    not pa.types.is_null(field.type) and (holds_images(field.type, False) or
                                                          holds_images(field.type, True)):
                raise InvalidInputError(
                    f"{path}: column {field.name!r} holds images, but fastwds reads them from {columns.image!r} (one "
                    f"per row) or {columns.images!r} (a list), which this file does not have; name it with "
                    f"--image-column {field.name} or --images-column {field.name}")
    for name, is_list in ((columns.single_image, False), (columns.images, True)):
        if name in names and not holds_images(arrow.field(name).type, is_list):
            raise InvalidInputError(
                f"{path}: column {name!r} holds {arrow.field(name).type}, not encoded images; fastwds reads images "
                f"stored in the parquet ({'a list of ' if is_list else ''}binary, or {{bytes, path}} structs as HF "
                "datasets writes them). For images stored as files, list them in SFT JSON and use "
                "`fastwds convert sft`, or rename the column with --image-column/--images-column")
    return names


def holds_images(column: pa.DataType, is_list: bool) -> bool:
    """Binary values, or HF's ``{bytes, path}`` image structs (a list of either for ``images``)."""
    if is_list:
        if not (pa.types.is_list(column) or pa.types.is_large_list(column)):
            return False
        column = column.value_type
    if pa.types.is_struct(column):
        index = column.get_field_index("bytes")
        return index >= 0 and holds_images(column.field(index).type, False)
    return pa.types.is_binary(column) or pa.types.is_large_binary(column) or pa.types.is_null(column)


def plan_parquet(root: str | os.PathLike, columns: ParquetColumns, max_rows: int, max_bytes: int,
                 limit: int | None = None) -> Plan:
    """Tasks for every subset, from parquet footers; duplicate ids across the whole dataset are
    found from the id column alone (ranged reads of that column's chunks on an object store) and
    attached to the tasks that hold them."""
    storage.check_location(root)  # 's3://' without a bucket must not become the folder 's3:'
    root, subsets = discover_subsets(os.fspath(root).rstrip("/") if storage.is_url(root) else os.fspath(root))
    files: list[SourceFile] = []
    tasks: list[Task] = []
    # Each file's id-column read (path, row groups) and the key hashes of those ids: the plan holds
    # 8 bytes per id, and reads again only the files whose rows may repeat a key.
    id_reads: list[tuple[str, list[tuple[int, int]]]] = []
    id_hashes = KeyHashes()
    seen_columns: set[str] = set()
    remaining = limit
    for subset, entries in subsets.items():
        groups: list[RowGroup] = []
        for entry in entries:
            relative, path = entry.relative, storage.join(root, entry.relative)
            with open_parquet(path) as parquet:
                metadata = parquet.metadata
                seen_columns.update(check_schema(path, metadata.schema, columns))
                first, taken = 0, []
                for i in range(metadata.num_row_groups):
                    group = metadata.row_group(i)
                    rows = group.num_rows if remaining is None else min(group.num_rows, remaining)
                    if rows:
                        groups.append(RowGroup(relative, first, rows,
                                               group.total_byte_size * rows // max(group.num_rows, 1)))
                        taken.append((i, rows))
                        if remaining is not None:
                            remaining -= rows
                    first += group.num_rows
                if taken:
                    id_hashes.add(read_id_column(path, parquet, taken, columns.id), path)
                    id_reads.append((path, taken))
            files.append(SourceFile(relative, entry.size, entry.mtime_ns, metadata.num_rows, entry.etag))
        tasks.extend(cut_tasks(subset, groups, max_rows, max_bytes))
    for flag, name in columns.given().items():  # a typo would silently read nothing
        if name not in seen_columns:
            raise InvalidInputError(f"{flag} {name}: no input file has a column {name!r} (columns: "
                                    f"{', '.join(sorted(seen_columns))})")
    input_root = root if storage.is_url(root) else str(Path(root).resolve())

    def read_again(index: int) -> pl.Series:
        path, taken = id_reads[index]
        with open_parquet(path) as parquet:
            return read_id_column(path, parquet, taken, columns.id)

    repeated = id_hashes.find_repeated(read_again)
    return Plan("parquet", input_root, tuple(files), attach_rejections(tasks, repeated))


@contextlib.contextmanager
def open_parquet(path: str) -> Iterator[pq.ParquetFile]:
    """A parquet file (local or in a bucket) to read from inside the block; anything that fails
    in it but a fastwds error says the file is not readable parquet (pyarrow raises ArrowInvalid
    or OSError for damaged files)."""
    try:
        with storage.readable(path) as source:
            yield pq.ParquetFile(source)
    except InvalidInputError:
        raise
    except Exception as error:
        raise InvalidInputError(f"{path}: not a readable parquet file: {first_line(error)}") from error


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def read_id_column(path: str, parquet: pq.ParquetFile, groups: list[tuple[int, int]], column: str) -> pl.Series:
    """The id column of the first rows of these row groups, as strings (only that column's
    chunks are read)."""
    try:
        pieces = [parquet.read_row_group(i, columns=[column]).column(0).slice(0, rows) for i, rows in groups]
        ids = pa.chunked_array([p for piece in pieces for p in piece.chunks], type=pieces[0].type)
        return pl.from_arrow(ids).cast(pl.String)
    except (pa.ArrowException, OSError) as error:
        raise InvalidInputError(f"{path}: column {column!r} cannot be read: {first_line(error)}") from error


def attach_rejections(tasks: list[Task], repeated: dict[int, tuple[str, str, int]]) -> tuple[Task, ...]:
    """Give each task the rows of it that repeat an earlier key (positions in task order)."""
    if not repeated:
        return tuple(tasks)
    by_task: list[list[tuple[int, str, str]]] = [[] for _ in tasks]
    task_starts = list(itertools.accumulate((task.num_rows for task in tasks), initial=0))
    for position, (reason, detail, _) in sorted(repeated.items()):
        index = bisect.bisect_right(task_starts, position) - 1
        by_task[index].append((position - task_starts[index], reason, detail))
    located = [Task(task.subset, task.number, task.slices, tuple(rows)) if rows else task
               for task, rows in zip(tasks, by_task)]
    return tuple(located)
