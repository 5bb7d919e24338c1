"""The one sample shape every source yields, so the pipeline is written once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RowBatch:
    """Consecutive rows of one input file, as plain Python values."""

    file: str  # relative to the input root
    first_row: int  # row number of ids[0] within the file
    ids: list[str | None]
    conversations: list[Any]
    # Encoded images of each row, in order: bytes, (BinaryColumn, index) references into Arrow
    # memory, None, or an ImageProblem when the source could not read the image at all.
    images: list[list[Any]]
    extras: list[dict[str, Any]]  # other fields copied into the sample JSON as they are

    def __len__(self) -> int:
        return len(self.ids)
