"""Validating and encoding SFT rows: the conversation rules with SFT's additions (media read from
files, images or videos, system turns) and the JSON Energon sample loaders expect:
``{"media", "name", "texts", "id", "source"}``, where ``name`` lists exactly the media members
written with it (checked before writing)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastwds import _core
from fastwds.convert.options import ConvertOptions
from fastwds.convert.plan import Task
from fastwds.errors import FastwdsError
from fastwds.reasons import Problem
from fastwds.sources.base import RowBatch
from fastwds.sources.chat import (
    ChatConverter,
    CheckedSample,
    LoadedRows,
    check_sample,
    image_layout,
    image_member_names,
)
from fastwds.sources.sft.rows import MEDIA_KINDS
from fastwds.video import inspect_video


class SftConverter(ChatConverter):
    """ChatConverter with SFT rules: media read from files (problems arrive from the reader),
    images or videos, ``<image>``/``<video>`` tokens, system turns, and the Energon JSON."""

    def __init__(self, task: Task, options: ConvertOptions, executor: ThreadPoolExecutor) -> None:
        super().__init__(task, options, executor)
        self.media = options.source_options.media
        self.other_media = MEDIA_KINDS[1 - MEDIA_KINDS.index(self.media)]

    def inspect(self, flat: list[Any]) -> list[Any]:
        readable = [i for i, item in enumerate(flat) if isinstance(item, bytes)]
        checks = list(flat)  # read problems pass through as they are
        if self.media == "video":
            found = [inspect_video(flat[i]) for i in readable]
        else:
            found = super().inspect([flat[i] for i in readable])
        for i, check in zip(readable, found):
            checks[i] = check
        return checks

    def simple_documents(self, batch: RowBatch, loaded: LoadedRows) -> list[bytes | None]:
        """The Energon JSON of the image rows needing no judgment, from Rust, as for parquet
        (``ChatColumns``): here from the rows' Python values (``_core.sft_documents``). Rows with
        videos, re-encoded images or anything else to judge go through ``check_row``."""
        if self.media != "image" or loaded.reencoded is not None:
            return [None] * len(batch)
        return _core.sft_documents(batch.ids, batch.conversations, *image_layout(batch, loaded), batch.file,
                                   batch.first_row)

    def check_row(self, batch: RowBatch, index: int, media_checks: list) -> CheckedSample:
        return check_sample(batch.conversations[index], media_checks, kind=self.media,
                            other_kinds=(self.other_media,), sft_system=True)

    def members(self, batch: RowBatch, index: int, media: list, checks: list,
                checked: CheckedSample, reencoded: list | None = None) -> dict[str, bytes]:
        # Only media that passed their checks are written (an invalid row kept with
        # --on-invalid keep may have others): ``name`` lists exactly these. Videos are never
        # re-encoded (``load`` leaves None for them).
        if reencoded is None:
            reencoded = [None] * len(media)
        good = [new if new is not None else (data, check)
                for data, check, new in zip(media, checks, reencoded) if not isinstance(check, Problem)]
        datas, infos = [data for data, _ in good], [check for _, check in good]
        names = image_member_names([info.extension for info in infos])
        document = {
            "media": self.media if names else "text",
            "name": names,
            "texts": checked.conversations if checked.conversations is not None else batch.conversations[index],
            "id": batch.ids[index],
            "source": {"file": batch.file, "row": batch.first_row + index},
        }
        if checked.problem is not None:
            document["invalid"] = {"reason": checked.problem.reason, "detail": checked.problem.detail}
        members = dict(zip(names, datas))
        members["json"] = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        check_names_agree(batch.ids[index], names, members)
        return members


def check_names_agree(sample_id: str, names: list[str], members: dict[str, bytes]) -> None:
    """The JSON's ``name`` list must be exactly the sample's media members, each non-empty:
    a loader reading ``name`` then finds every medium, and no medium goes unnamed."""
    media_members = set(members) - {"json"}
    if len(set(names)) != len(names) or set(names) != media_members or not all(members[n] for n in names):
        raise FastwdsError(f"internal error: sample {sample_id!r}: name list {names} does not match its "
                           f"media members {sorted(media_members)}; refusing to write it")
