"""Sample validation shared by every converter: conversations, ``<image>`` tokens, images.

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
}

IMAGE_TOKEN = "<image>"

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


def normalize_conversations(turns: Any) -> list[dict[str, str]] | Problem:
    """``[{role, content}]`` from either spelling, or the first problem found."""
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
        if not isinstance(content, str) or not content.strip():
            return Problem("empty_turn", f"turn {number} ({role}) has no text")
        normalized.append({"role": role, "content": content})
    return normalized


def count_image_tokens(conversations: list[dict[str, str]]) -> int:
    return sum(turn["content"].count(IMAGE_TOKEN) for turn in conversations)


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


def check_sample(turns: Any, image_checks: list[ImageInfo | ImageProblem]) -> CheckedSample:
    """Conversation and image checks of one sample; images were inspected beforehand (in bulk)."""
    conversations = normalize_conversations(turns)
    if isinstance(conversations, Problem):
        return CheckedSample(problem=conversations)
    for number, check in enumerate(image_checks):
        if isinstance(check, ImageProblem):
            return CheckedSample(conversations, problem=Problem(check.reason, f"image {number}: {check.detail}"))
    tokens = count_image_tokens(conversations)
    if tokens != len(image_checks):
        return CheckedSample(conversations, problem=Problem(
            "image_token_mismatch", f"{tokens} {IMAGE_TOKEN} token(s) but {len(image_checks)} image(s)"))
    return CheckedSample(conversations, images=list(image_checks))
