"""Planning a parquet conversion: every folder under the input root holding parquet files is a
subset with its own shards; files at the top form a subset named after the root. Planning reads
only metadata (row groups, sizes) and the id column (duplicate ids across the whole dataset)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from fastwds.convert.plan import Plan, RowGroup, SourceFile, Task, cut_tasks, find_repeated_keys
from fastwds.errors import InvalidInputError
from fastwds.paths import safe_name


@dataclass(frozen=True)
class ParquetColumns:
    id: str = "id"
    image: str = "image"
    images: str = "images"
    conversations: str = "conversations"
    data_source: str = "data_source"


def subset_name(relative_dir: str, root: Path) -> str:
    """A file-name-safe subset name: the folder path with '/' as '__'; the root's own files are
    named after the root folder."""
    raw = relative_dir.replace(os.sep, "__") if relative_dir not in ("", ".") else root.resolve().name
    return safe_name(raw)


def discover_subsets(root: Path) -> dict[str, list[str]]:
    """``{subset: [parquet files relative to root, sorted]}``, subsets sorted by name."""
    if not root.is_dir():
        raise InvalidInputError(f"{root}: input directory not found")
    found: dict[str, tuple[str, list[str]]] = {}
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        files = sorted(f for f in filenames if f.endswith(".parquet") and not f.startswith("."))
        if not files:
            continue
        relative = os.path.relpath(directory, root)
        name = subset_name(relative, root)
        if name in found:
            raise InvalidInputError(f"folders {found[name][0]!r} and {relative!r} both become subset "
                                    f"{name!r}; rename one of them")
        found[name] = (relative, [os.path.normpath(os.path.join(relative, f)) for f in files])
    if not found:
        raise InvalidInputError(f"{root}: no .parquet files found (searched all subfolders)")
    return {name: files for name, (_, files) in sorted(found.items())}


def check_schema(path: Path, schema: pq.ParquetSchema, columns: ParquetColumns) -> None:
    arrow = schema.to_arrow_schema()
    names = arrow.names
    for required in (columns.id, columns.conversations):
        if required not in names:
            raise InvalidInputError(f"{path}: no column {required!r} (columns: {', '.join(names)}); "
                                    f"name it with --{'id' if required == columns.id else 'conversations'}-column")
    for name, is_list in ((columns.image, False), (columns.images, True)):
        if name in names and not holds_images(arrow.field(name).type, is_list):
            raise InvalidInputError(
                f"{path}: column {name!r} holds {arrow.field(name).type}, not encoded images; fastwds reads images "
                f"stored in the parquet ({'a list of ' if is_list else ''}binary, or {{bytes, path}} structs as HF "
                "datasets writes them). For images stored as files, list them in SFT JSON and use "
                "`fastwds convert sft`, or rename the column with --image-column/--images-column")


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
    """Tasks for every subset, from parquet metadata; duplicate ids across the whole dataset are
    found from the id column alone and attached to the tasks that hold them."""
    root = Path(root)
    files: list[SourceFile] = []
    tasks: list[Task] = []
    id_series: list[pl.Series] = []
    remaining = limit
    for subset, paths in discover_subsets(root).items():
        groups: list[RowGroup] = []
        for relative in paths:
            path = root / relative
            try:
                metadata = pq.read_metadata(path)
            except Exception as error:  # pyarrow raises ArrowInvalid/OSError for damaged files
                raise InvalidInputError(f"{path}: not a readable parquet file: {error}") from error
            check_schema(path, metadata.schema, columns)
            stat = path.stat()
            files.append(SourceFile(relative, stat.st_size, stat.st_mtime_ns, metadata.num_rows))
            first = 0
            for i in range(metadata.num_row_groups):
                group = metadata.row_group(i)
                rows = group.num_rows if remaining is None else min(group.num_rows, remaining)
                if rows:
                    groups.append(RowGroup(relative, first, rows, group.total_byte_size * rows // max(group.num_rows, 1)))
                    if remaining is not None:
                        remaining -= rows
                first += group.num_rows
            taken = sum(g.rows for g in groups if g.file == relative)
            if taken:
                ids = pl.scan_parquet(path).select(pl.col(columns.id).cast(pl.String)).head(taken)
                id_series.append(collect(ids, path, f"column {columns.id!r}").to_series())
        tasks.extend(cut_tasks(subset, groups, max_rows, max_bytes))
    return Plan("parquet", str(root.resolve()), tuple(files), attach_rejections(tasks, id_series))


def attach_rejections(tasks: list[Task], id_series: list[pl.Series]) -> tuple[Task, ...]:
    """Give each task the rows of it that repeat an earlier key (ids in task order)."""
    if not id_series:
        return tuple(tasks)
    repeated = find_repeated_keys(pl.concat(id_series))
    if not repeated:
        return tuple(tasks)
    located, start = [], 0
    bounds = []
    for task in tasks:
        bounds.append((start, task))
        start += task.num_rows
    for task_start, task in bounds:
        rows = tuple((p - task_start, reason, detail) for p, (reason, detail, _) in sorted(repeated.items())
                     if task_start <= p < task_start + task.num_rows)
        located.append(Task(task.subset, task.number, task.slices, rows) if rows else task)
    return tuple(located)


def collect(frame: pl.LazyFrame, path: Path, what: str) -> pl.DataFrame:
    """Run a polars read; a damaged file becomes an error naming the file and what was read."""
    try:
        return frame.collect()
    except pl.exceptions.PolarsError as error:
        raise InvalidInputError(f"{path}: {what} cannot be read: {error}") from error
