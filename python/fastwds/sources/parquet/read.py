"""Reading a parquet task: its row slices, one row group at a time, as ``RowBatch``es."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fastwds import storage
from fastwds.arrow import binary_column, encoded_images, is_text, string_column
from fastwds.convert.options import ConvertOptions
from fastwds.convert.plan import Task
from fastwds.errors import InvalidInputError
from fastwds.sources.base import RowBatch
from fastwds.sources.chat import ChatColumns
from fastwds.reasons import Problem
from fastwds.sources.parquet.plan import ParquetColumns


def read_task(root: str, task: Task, options: ConvertOptions) -> Iterator[RowBatch]:
    """Stream the task's rows in batches of at most ``options.batch_rows`` rows, never holding more.

    pyarrow decodes the row groups; image bytes stay in Arrow memory and reach the Rust checks
    and writer as ``(BinaryColumn, index)`` references. (Converting them to Python ``bytes``, as
    polars' ``to_list`` does, costs more than reading them: a fresh 60-100 KB allocation and copy
    per image.)
    """
    columns: ParquetColumns = options.source_options
    for piece in task.slices:
        path = storage.join(root, piece.file)
        try:
            yield from _read_slice(path, piece.file, piece.start, piece.stop, columns, options.batch_rows)
        except (pa.ArrowException, OSError) as error:
            raise InvalidInputError(f"{path}: rows {piece.start}-{piece.stop - 1} cannot be read: {error}") from error


# Buffered reads of column chunks: measured 3x faster than pyarrow's default whole-chunk reads.
READ_BUFFER = 1 << 20


def _read_slice(path: str, file: str, start: int, stop: int, columns: ParquetColumns,
                batch_rows: int) -> Iterator[RowBatch]:
    """Rows ``[start, stop)`` of one file. One row group per ``iter_batches`` call: given many row
    groups at once, pyarrow reads far ahead (measured: ~285 MB held for a 3,000-row file, against
    ~27 MB one group at a time), so memory is about one row group plus the pipeline's batches."""
    with storage.readable(path) as source, pq.ParquetFile(source, buffer_size=READ_BUFFER) as parquet:
        names = parquet.schema_arrow.names
        wanted = [c for c in (columns.id, columns.conversations, columns.single_image, columns.images,
                              columns.data_source) if c in names]
        group_start = 0
        for group in range(parquet.num_row_groups):
            group_rows = parquet.metadata.row_group(group).num_rows
            if group_start < stop and group_start + group_rows > start:
                position = group_start
                for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=wanted):
                    lo, hi = max(start, position), min(stop, position + batch.num_rows)
                    if lo < hi:
                        yield to_batch(file, lo, batch.slice(lo - position, hi - lo), columns)
                    position += batch.num_rows
            group_start += group_rows
            if group_start >= stop:
                return


def to_batch(file: str, first_row: int, rows: pa.RecordBatch, columns: ParquetColumns) -> RowBatch:
    n = rows.num_rows
    names = rows.schema.names
    ids = [None if v is None else str(v) for v in rows.column(columns.id).to_pylist()]
    single: list = [None] * n
    if columns.single_image in names:
        column = rows.column(columns.single_image)
        values = binary_column(encoded_images(column))
        single = [None if null else (values, i) for i, null in enumerate(column.is_null().to_pylist())]
    several: list = [None] * n
    if columns.images in names:
        lists = rows.column(columns.images)
        values = binary_column(encoded_images(lists.values))
        offsets = lists.offsets.to_pylist()
        several = [None if null else [(values, j) for j in range(offsets[i], offsets[i + 1])]
                   for i, null in enumerate(lists.is_null().to_pylist())]
    both = Problem("bad_sample", f"the row has images in both {columns.image!r} and {columns.images!r}; fastwds "
                                 "reads one of them, so give them in one")
    # A row's images: the list when it holds any, else the single image, else none; never one of
    # two silently (an empty list, as merged HF exports have, counts as none).
    images = [[both] if many and one is not None else many or ([] if one is None else [one])
              for one, many in zip(single, several)]
    sources = rows.column(columns.data_source).to_pylist() if columns.data_source in names else [None] * n
    return RowBatch(file, first_row, ids, rows.column(columns.conversations).to_pylist(), images,
                    [{"data_source": s} for s in sources], chat_columns(rows, columns))


TURN_FIELDS = ("role", "from", "content", "value")


def chat_columns(rows: pa.RecordBatch, columns: ParquetColumns) -> ChatColumns | None:
    """The batch's columns for Rust's JSON of the rows needing no judgment, or None when they are
    not in the plain types it reads (string ids and data_source, a list of turns whose role/from/
    content/value fields are strings): then every row goes through the Python rules."""
    names = rows.schema.names
    ids, conversations = rows.column(columns.id), rows.column(columns.conversations)
    source = rows.column(columns.data_source) if columns.data_source in names else None
    if not is_text(ids.type) or (source is not None and not is_text(source.type)):
        return None
    if not (pa.types.is_list(conversations.type) or pa.types.is_large_list(conversations.type)) \
            or not pa.types.is_struct(conversations.type.value_type):
        return None
    turns = conversations.flatten()  # the turns of the non-null rows, slicing applied
    spelled = [turns.type.field(i).name for i in range(turns.type.num_fields)]
    present = [name for name in TURN_FIELDS if name in spelled]
    if turns.null_count or any(spelled.count(name) > 1 or not is_text(turns.type.field(name).type) for name in present):
        return None
    lengths = (length or 0 for length in pc.list_value_length(conversations).to_pylist())  # a null row: none
    return ChatColumns(string_column(ids), [0, *itertools.accumulate(lengths)],
                       {name: string_column(pc.struct_field(turns, name)) for name in present},
                       None if source is None else string_column(source))
