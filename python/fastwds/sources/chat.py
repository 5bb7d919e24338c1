"""Conversation + images samples (the parquet and SFT sources): the rules a sample must meet and
``ChatConverter``, which validates and encodes a batch of rows.

Rules: conversations in either spelling (``{role, content}`` or LLaVA's ``{from, value}``), known
roles, non-empty turns, and one ``<image>`` (or ``<video>``) token per medium. The sample JSON
keeps the original id, conversations normalised to ``{role, content}``, the source's extra
fields, and per image its member name, format, width and height.
"""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastwds import _core
from fastwds.convert.options import ConvertOptions
from fastwds.convert.pipeline import PreparedBatch, RejectLog
from fastwds.convert.plan import Task
from fastwds.media import ImageData, ImageInfo, decode_problem, inspect_images, payload_bytes, reencode_jpeg
from fastwds.reasons import Problem, printable
from fastwds.sources.base import RowBatch
from fastwds.tokens import MEDIA_TOKENS

TOKEN_MISMATCH = {"image": "image_token_mismatch", "video": "video_token_mismatch"}

# LLaVA's {from, value} spelling and the role names it uses.
ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def normalize_conversations(turns: Any, allow_empty_system: bool = False) -> list[dict[str, str]] | Problem:
    """``[{role, content}]`` from either spelling, or the first problem found. An empty system
    prompt is kept when allowed: some chat templates add a default one when none is given, so
    dropping it would change what the model sees."""
    if isinstance(turns, str) and turns.lstrip().startswith("["):
        # HF exports often store the turns as a JSON string: read it as the list it holds.
        try:
            turns = json.loads(turns)
        except ValueError as error:
            return Problem("bad_turn", f"conversations is a string that is not valid JSON ({error})")
    if not turns:
        return Problem("no_conversation", "conversations is missing or empty")
    if not isinstance(turns, list):
        return Problem("bad_turn", f"conversations is a {type(turns).__name__}, not a list of turns")
    normalized = []
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return Problem("bad_turn", f"turn {number} is {type(turn).__name__}, not a mapping")
        raw_role = turn.get("role") if turn.get("role") is not None else turn.get("from")
        content = turn.get("content") if turn.get("content") is not None else turn.get("value")
        role = ROLE_ALIASES.get(str(raw_role).strip().lower()) if raw_role is not None else None
        if role is None:
            return Problem("bad_role", f"turn {number} has role {raw_role!r}")
        if isinstance(content, list):  # HF chat templates' [{"type": "image"}, {"type": "text", ...}]
            return Problem("bad_turn", f"turn {number} ({role}): its content is a list of parts, not text with "
                                       "<image> tokens where the images go; fastwds reads the text form")
        if not isinstance(content, str) or not (content.strip() or (role == "system" and allow_empty_system)):
            return Problem("empty_turn", f"turn {number} ({role}) has no text")
        normalized.append({"role": role, "content": content})
    return normalized


def count_media_tokens(conversations: list[dict[str, str]], token: str) -> int:
    return sum(turn["content"].count(token) for turn in conversations)


def system_turn_problem(conversations: list[dict[str, str]]) -> Problem | None:
    """Loaders move the system prompt out of the turns (Energon sample loaders keep one
    ``system`` value): a second or late system turn would be silently lost or reordered."""
    for number, turn in enumerate(conversations):
        if turn["role"] == "system" and number > 0:
            return Problem("system_turn_position", f"turn {number} is a system turn; only the first turn may be one")
    if all(turn["role"] == "system" for turn in conversations):
        return Problem("no_conversation", "the conversation has only a system turn")
    return None


def image_member_names(extensions: list[str]) -> list[str]:
    """One image is ``jpg``/``png``/...; several are ``0.jpg``, ``1.png``, ... in order, which
    webdataset, wids and Energon all split into key + one extension per image."""
    if len(extensions) == 1:
        return extensions
    return [f"{i}.{ext}" for i, ext in enumerate(extensions)]


@dataclass
class CheckedSample:
    """A row after validation: either ``problem`` is set, or it is ready to write."""

    conversations: list[dict[str, str]] | None = None
    images: list[ImageInfo] = field(default_factory=list)
    problem: Problem | None = None


def check_sample(turns: Any, image_checks: list[Any], *, kind: str = "image",
                 other_kinds: tuple[str, ...] = (), sft_system: bool = False) -> CheckedSample:
    """Conversation and media checks of one sample; media were inspected beforehand (in bulk).
    ``image_checks`` hold ``ImageInfo`` (or another info type, e.g. videos) or ``Problem``.
    The ``kind`` token must occur once per medium; the tokens of ``other_kinds`` must not occur
    at all (the sample has none of them). ``sft_system``: an empty system prompt is allowed and a
    system turn must be the first turn."""
    conversations = normalize_conversations(turns, allow_empty_system=sft_system)
    if isinstance(conversations, Problem):
        return CheckedSample(problem=conversations)
    if sft_system and (problem := system_turn_problem(conversations)) is not None:
        return CheckedSample(conversations, problem=problem)
    for number, check in enumerate(image_checks):
        if isinstance(check, Problem):
            return CheckedSample(conversations, problem=Problem(check.reason, f"{kind} {number}: {check.detail}"))
    for token_kind, count in ((kind, len(image_checks)), *((other, 0) for other in other_kinds)):
        tokens = count_media_tokens(conversations, MEDIA_TOKENS[token_kind])
        if tokens != count:
            return CheckedSample(conversations, problem=Problem(
                TOKEN_MISMATCH[token_kind],
                f"{tokens} {MEDIA_TOKENS[token_kind]} token(s) but {count} {token_kind}(s)"))
    return CheckedSample(conversations, images=list(image_checks))


@dataclass
class ChatColumns:
    """A batch's rows as Arrow string columns, read in place by ``_core.chat_documents``: in one
    call with the GIL released it writes the JSON of every row whose checks need no judgment
    (known roles spelled exactly, visible text in every turn, one ``<image>`` per image, every
    image checked fine) and leaves the rest to ``check_sample``, so both give the same bytes and
    only Python ever rejects. Per-row Python (normalising turns, building and dumping the
    document) was most of a parquet conversion's GIL time. The document's extra field is
    ``data_source``: the parquet source's."""

    ids: Any  # BinaryColumn of the ids
    turn_starts: list[int]  # one more than the rows: each row's turns in the flattened turn fields
    turn_fields: dict[str, Any]  # "role", "from", "content", "value" (those the turns have): BinaryColumn
    data_source: Any = None  # BinaryColumn, or None: the column is absent (null in the JSON)


@dataclass
class LoadedRows:
    """A batch after its image work (``ChatConverter.load``), per image of the batch in order:
    its check, and with --reencode its new ``(bytes, ImageInfo)`` (None: not re-encoded)."""

    batch: RowBatch
    checks: list[Any]
    reencoded: list[Any] | None = None


def image_layout(batch: RowBatch, loaded: LoadedRows) -> tuple[list[int], list[tuple[str, int, int] | None]]:
    """For Rust's documents: where each row's images start in the batch's flat list of checks,
    and each check as (format, width, height), None when it failed."""
    starts = [0, *itertools.accumulate(len(images) for images in batch.images)]
    return starts, [(c.format, c.width, c.height) if type(c) is ImageInfo else None for c in loaded.checks]


class ChatConverter(RejectLog):
    """Validates and encodes the conversation + images rows of one task."""

    def __init__(self, task: Task, options: ConvertOptions, images: ThreadPoolExecutor) -> None:
        super().__init__(task, options)
        self.images = images
        self.rejected = {offset: (reason, detail) for offset, reason, detail in task.rejected}

    def reject_row(self, batch: RowBatch, index: int, reason: str, detail: str, kept: bool = False) -> None:
        self.reject(batch.file, batch.first_row + index, batch.ids[index], reason, detail, kept)

    def inspect(self, flat: list[ImageData]) -> list[ImageInfo | Problem]:
        """Checks of every image of a batch, in one call (sources with other media override this)."""
        limit = self.options.max_image_pixels
        readable = [i for i, image in enumerate(flat) if not isinstance(image, Problem)]
        checks: list[ImageInfo | Problem] = list(flat)  # what the source could not read passes as it is
        for i, check in zip(readable, inspect_images([flat[i] for i in readable])):
            checks[i] = Problem("image_too_large", f"{check.width}x{check.height} = {check.width * check.height:,} "
                                                   f"pixels, more than --max-image-pixels {limit:,} (a decompression "
                                                   "bomb for the loader)") \
                if isinstance(check, ImageInfo) and check.width * check.height > limit else check
        if self.options.verify_images == "full":
            decoded = self.images.map(
                lambda pair: decode_problem(payload_bytes(pair[0])) if isinstance(pair[1], ImageInfo) else None,
                zip(flat, checks))
            checks = [problem or check for problem, check in zip(decoded, checks)]
        return checks

    def check_row(self, batch: RowBatch, index: int, media_checks: list) -> CheckedSample:
        return check_sample(batch.conversations[index], media_checks)

    def load(self, batch: RowBatch) -> LoadedRows:
        """The batch's image work, before its rows are validated: every image's check and, with
        --reencode jpeg, its new bytes (the whole batch's images on the pool at once: one row's at
        a time kept a single core busy). An image Pillow cannot re-encode gets an
        ``image_decode_failed`` check, so its row is rejected like any other bad image. (Loading
        the next batch while this one is validated was measured too: no gain, the decode already
        keeps both cores ~90% busy.)"""
        flat = [image for images in batch.images for image in images]
        checks = self.inspect(flat)
        if self.options.reencode != "jpeg":
            return LoadedRows(batch, checks)
        results = list(self.images.map(self._reencode, zip(flat, checks)))
        return LoadedRows(batch, [new if isinstance(new, Problem) else check for new, check in zip(results, checks)],
                          [None if isinstance(new, Problem) else new for new in results])

    def _reencode(self, pair: tuple[Any, Any]) -> tuple[bytes, ImageInfo] | Problem | None:
        data, check = pair
        if not isinstance(check, ImageInfo):
            return None  # a video, or an image that failed its checks: nothing to re-encode
        try:
            return reencode_jpeg(payload_bytes(data), self.options.quality, self.options.max_side)
        except Exception as error:  # Pillow raises many types for corrupt data: all mean "cannot decode"
            return Problem("image_decode_failed", f"Pillow cannot decode the image to re-encode it: {error}")

    def simple_documents(self, batch: RowBatch, loaded: LoadedRows) -> list[bytes | None]:
        """Each row's sample JSON from Rust where the row needs no judgment (see ``ChatColumns``),
        else None: the row goes through ``check_row`` and ``members``."""
        if batch.arrow is None or loaded.reencoded is not None:  # re-encoding changes the image infos
            return [None] * len(batch)
        columns: ChatColumns = batch.arrow
        fields = columns.turn_fields
        return _core.chat_documents(columns.ids, columns.turn_starts, fields.get("role"), fields.get("from"),
                                    fields.get("content"), fields.get("value"), columns.data_source,
                                    *image_layout(batch, loaded), batch.file, batch.first_row)

    def prepare(self, batch: RowBatch) -> PreparedBatch:
        loaded = self.load(batch)
        checks = loaded.checks
        documents = self.simple_documents(batch, loaded)
        prepared = PreparedBatch(rows=len(batch))
        position = 0
        for index, sample_id in enumerate(batch.ids):
            images = batch.images[index]
            image_checks = checks[position:position + len(images)]
            reencoded = None if loaded.reencoded is None else loaded.reencoded[position:position + len(images)]
            position += len(images)
            offset = self.result.rows + index
            if sample_id is None or sample_id == "":
                self.reject_row(batch, index, "missing_id", "the id is null or empty")
                continue
            if offset in self.rejected:
                self.reject_row(batch, index, *self.rejected[offset])
                continue
            if (document := documents[index]) is not None:  # valid, its JSON written by Rust
                names = image_member_names([check.extension for check in image_checks])
                prepared.add(sample_id, {**dict(zip(names, images)), "json": document})
                continue
            checked = self.check_row(batch, index, image_checks)
            keep_invalid = checked.problem is not None and self.options.on_invalid == "keep"
            if checked.problem is not None:
                self.reject_row(batch, index, checked.problem.reason, checked.problem.detail, kept=keep_invalid)
                if not keep_invalid:
                    continue
            try:
                members = self.members(batch, index, images, image_checks, checked, reencoded)
            except UnicodeEncodeError as error:  # JSON's "\ud800" escapes parse, but are no text
                self.reject_row(batch, index, "invalid_unicode", f"the row's text holds a lone surrogate "
                                f"'{printable(error.object[error.start:error.end])}': not Unicode, cannot be written")
                continue
            prepared.add(sample_id, members)
        self.result.rows += len(batch)
        return prepared

    def members(self, batch, index, images, image_checks, checked, reencoded=None) -> dict[str, ImageData]:
        """The row's members; ``reencoded``: its images re-encoded (``load``), or None."""
        infos = [c if isinstance(c, ImageInfo) else None for c in image_checks]
        if reencoded is not None:
            images = [new[0] if new is not None else data for new, data in zip(reencoded, images)]
            infos = [new[1] if new is not None else info for new, info in zip(reencoded, infos)]
        names = image_member_names([info.extension if info else "bin" for info in infos])
        # An empty image (kept with --on-invalid keep) has no member: the JSON lists it with
        # "member": null, so a loader following the list never looks for a member that is not there.
        # (Nor has an image the source could not give, e.g. a row with images in two columns.)
        empty = [isinstance(c, Problem) and c.reason == "image_empty" or isinstance(data, Problem)
                 for c, data in zip(image_checks, images)]
        document = {
            "id": batch.ids[index],
            "conversations": checked.conversations if checked.conversations is not None
            else batch.conversations[index],
            **batch.extras[index],
            "images": [{"member": None if is_empty else name, "format": info.format if info else None,
                        "width": info.width if info else None, "height": info.height if info else None}
                       for name, info, is_empty in zip(names, infos, empty)],
            "source": {"file": batch.file, "row": batch.first_row + index},
        }
        if checked.problem is not None:
            document["invalid"] = {"reason": checked.problem.reason, "detail": checked.problem.detail}
        members = {name: data for name, data, is_empty in zip(names, images, empty) if not is_empty}
        members["json"] = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return members
