"""Sample validation shared by every converter: conversations, ``<image>``/``<video>`` tokens, media.

Every failure has a stable reason code (the keys of ``REASONS``) and a detail message; counts per
reason go to the manifest and every rejected row to the rejects file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastwds.media import ImageInfo, ImageProblem

REASONS = {
    "missing_id": "the id is null or empty",
    "duplicate_id": "the id was already seen earlier in the dataset",
    "key_collision": "a different id maps to the same shard key",
    "no_conversation": "conversations missing or empty",
    "bad_turn": "a turn is not a {role, content} / {from, value} mapping",
    "bad_role": "a role is not user, assistant or system",
    "empty_turn": "a turn has no text",
    "image_token_mismatch": "number of <image> tokens differs from number of images",
    "image_empty": "an image has no bytes",
    "image_unknown_format": "an image is not JPEG/PNG/GIF/WebP/BMP/TIFF",
    "image_unreadable_header": "an image header cannot be parsed",
    "image_zero_size": "an image has zero width or height",
    "image_truncated": "an image is cut short",
    "image_decode_failed": "an image does not decode (--verify-images full)",
    # SFT JSON sources: rows, media files read from disk, videos, system turns.
    "bad_json": "a JSONL line is not valid JSON",
    "bad_sample": "a row is not a JSON object, or its media field is not a path / list of paths",
    "media_kind_mismatch": "a row has media of the other kind than --media",
    "media_missing": "a media file does not exist",
    "media_unreadable": "a media file cannot be read",
    "video_token_mismatch": "number of <video> tokens differs from number of videos",
    "video_empty": "a video has no bytes",
    "video_unknown_format": "a video is not MP4/MOV/WebM/MKV/AVI",
    "video_truncated": "a video is cut short (its container structure runs past the end of the file)",
    "system_turn_position": "a system turn is not the first turn",
}

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
MEDIA_TOKENS = {"image": IMAGE_TOKEN, "video": VIDEO_TOKEN}

# LLaVA's {from, value} spelling and the role names it uses.
ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


@dataclass
class Problem:
    reason: str
    detail: str


def normalize_conversations(turns: Any, allow_empty_system: bool = False) -> list[dict[str, str]] | Problem:
    """``[{role, content}]`` from either spelling, or the first problem found. An empty system
    prompt is kept when allowed: some chat templates add a default one when none is given, so
    dropping it would change what the model sees."""
    if not turns:
        return Problem("no_conversation", "conversations is missing or empty")
    normalized = []
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return Problem("bad_turn", f"turn {number} is {type(turn).__name__}, not a mapping")
        raw_role = turn.get("role") if turn.get("role") is not None else turn.get("from")
        content = turn.get("content") if turn.get("content") is not None else turn.get("value")
        role = ROLE_ALIASES.get(str(raw_role).strip().lower()) if raw_role is not None else None
        if role is None:
            return Problem("bad_role", f"turn {number} has role {raw_role!r}")
        if not isinstance(content, str) or not (content.strip() or (role == "system" and allow_empty_system)):
            return Problem("empty_turn", f"turn {number} ({role}) has no text")
        normalized.append({"role": role, "content": content})
    return normalized


def count_tokens(conversations: list[dict[str, str]], token: str) -> int:
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
    ``image_checks`` hold ``ImageInfo`` (or another info type, e.g. videos) or ``ImageProblem``.
    The ``kind`` token must occur once per medium; the tokens of ``other_kinds`` must not occur
    at all (the sample has none of them). ``sft_system``: an empty system prompt is allowed and a
    system turn must be the first turn."""
    conversations = normalize_conversations(turns, allow_empty_system=sft_system)
    if isinstance(conversations, Problem):
        return CheckedSample(problem=conversations)
    if sft_system and (problem := system_turn_problem(conversations)) is not None:
        return CheckedSample(conversations, problem=problem)
    for number, check in enumerate(image_checks):
        if isinstance(check, ImageProblem):
            return CheckedSample(conversations, problem=Problem(check.reason, f"{kind} {number}: {check.detail}"))
    for token_kind, count in ((kind, len(image_checks)), *((other, 0) for other in other_kinds)):
        tokens = count_tokens(conversations, MEDIA_TOKENS[token_kind])
        if tokens != count:
            return CheckedSample(conversations, problem=Problem(
                f"{token_kind}_token_mismatch",
                f"{tokens} {MEDIA_TOKENS[token_kind]} token(s) but {count} {token_kind}(s)"))
    return CheckedSample(conversations, images=list(image_checks))
