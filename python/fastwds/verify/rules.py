"""The verify-time rules: what ``verify`` (and ``inspect``) check in one member or one sample of
shards from any producer. Each finding has a code of ``fastwds.reasons.VERIFY_CODES``, which also
says how bad it is. (Convert-time rules, which decide what fastwds writes, are the sources'.)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fastwds.tar.format import is_unsafe_path
from fastwds.tar.scanner import TarMember
from fastwds.tokens import IMAGE_TOKEN

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
IMAGE_EXTENSIONS = frozenset(("jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff"))
FORMAT_EXTENSIONS = {"jpeg": ("jpg", "jpeg"), "tiff": ("tif", "tiff")}

# Where chat-style JSON keeps its turns, and the text field of a turn (LLaVA uses "value").
TURN_LISTS = ("conversations", "messages", "texts")
TURN_TEXT = ("content", "value", "text")


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    member: str | None = None


def last_extension(ext: str) -> str:
    return ext.rsplit(".", 1)[-1].lower()


def is_image_extension(ext: str) -> bool:
    return last_extension(ext) in IMAGE_EXTENSIONS


def is_json_extension(ext: str) -> bool:
    return ext.lower() == "json"


# -- member names -------------------------------------------------------------------------------

def unsafe_path_finding(name: str) -> Finding | None:
    if is_unsafe_path(name):
        return Finding("unsafe_member_path", f"{name!r}: absolute or climbing out with '..': tarfile.extractall "
                       "(Python 3.11) writes it outside the folder; fastwds.WebDataset refuses the shard", name)
    return None


# Extensions webdataset's default decoders unpickle (pickle.loads; torch.load for .pth).
PICKLED = frozenset(("pkl", "pickle", "pyd", "pth"))


def member_findings(member: TarMember, key: str, ext: str) -> list[Finding]:
    """Safety and portability of one member's header and name (a regular member of sample ``key``)."""
    name = member.name
    found = [finding] if (finding := unsafe_path_finding(name)) is not None else []
    if "pax" in member.extensions or "pax_global" in member.extensions:
        found.append(Finding("pax_header", f"{name}: PAX header ({', '.join(sorted(member.pax)) or 'empty'})", name))
    if "." in member.pax.get("mtime", ""):
        found.append(Finding("float_mtime", f"{name}: mtime {member.pax['mtime']}", name))
    if member.ustar_name != name:
        found.append(Finding("long_name", f"{name}: wids reads {member.ustar_name!r} from the 100-byte name field "
                             f"({'/'.join(e for e in member.extensions if e != 'pax')} header)", name))
    problems = []
    if not name.isascii():
        problems.append("non-ASCII")
    if " " in name:
        problems.append("a space (breaks DALI's index)")
    if "\\" in name:
        problems.append("a backslash")
    if CONTROL.search(name):
        problems.append("a control character")
    if len(name.encode("utf-8", "surrogateescape")) > 100:
        problems.append("longer than 100 bytes")
    if member.typeflag != "0":
        problems.append(f"typeflag {member.typeflag!r} (wids accepts only '0')")
    if problems:
        found.append(Finding("name_not_portable", f"{name!r}: {', '.join(problems)}", name))
    if ext != ext.lower():
        found.append(Finding("uppercase_extension", f"{name}: extension {ext!r} (webdataset reads "
                             f"{ext.lower()!r}, Energon/HF/DALI {ext!r})", name))
    if ext.rsplit(".", 1)[-1].lower() in PICKLED:
        found.append(Finding("pickled_member", f"{name}: webdataset's default decoding unpickles .{ext.rsplit('.', 1)[-1]} "
                             "members (code in it runs when the sample is read)", name))
    if key.rsplit("/", 1)[-1].startswith("__"):
        found.append(Finding("hidden_key", f"{name}: key {key!r} starts with '__'", name))
    return found


# -- sample JSON --------------------------------------------------------------------------------

def _member_reference(item: str, key: str, extensions: list[str]) -> str:
    """The extension a JSON entry names: ``"jpg"``, ``"0.jpg"``, or a full ``"<key>.jpg"`` name."""
    if item in extensions:
        return item
    for prefix in (key + ".", key.rsplit("/", 1)[-1] + "."):
        if item.startswith(prefix) and item[len(prefix):] in extensions:
            return item[len(prefix):]
    return item


def listed_members(document: dict[str, Any]) -> tuple[str, list[str]] | None:
    """Member references a sample JSON makes, and the field they came from: Energon-style
    ``"name": [ext, ...]`` or fastwds' ``"images": [{"member": ext, ...}]`` (``"member": null``: an
    image kept flagged invalid that has no member)."""
    name = document.get("name")
    if isinstance(name, list) and name and all(isinstance(item, str) for item in name):
        return "name", name
    images = document.get("images")
    if isinstance(images, list) and any(isinstance(item, dict) and "member" in item for item in images):
        return "images", [str(item["member"]) for item in images if isinstance(item, dict) and item.get("member")]
    return None


def json_image_tokens(document: dict[str, Any]) -> int | None:
    """``<image>`` tokens in the turns of a chat-style JSON; None when it has no turns."""
    found = False
    tokens = 0
    for field_name in TURN_LISTS:
        turns = document.get(field_name)
        if not isinstance(turns, list):
            continue
        found = True
        for turn in turns:
            if isinstance(turn, str):
                tokens += turn.count(IMAGE_TOKEN)
                continue
            if not isinstance(turn, dict):
                continue
            text = next((turn[f] for f in TURN_TEXT if turn.get(f) is not None), None)
            if isinstance(text, str):
                tokens += text.count(IMAGE_TOKEN)
            elif isinstance(text, list):  # OpenAI-style parts: {"type": "image"} or {"type": "text", ...}
                for part in text:
                    if isinstance(part, dict):
                        tokens += part.get("type") in ("image", "image_url")
                        tokens += str(part.get("text") or "").count(IMAGE_TOKEN)
    return tokens if found else None


def parse_json_member(data: bytes) -> Any:
    """The parsed JSON; raises ValueError with a short reason."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{error.msg} at line {error.lineno} column {error.colno}") from None


def json_findings(key: str, json_member: str, document: Any, extensions: list[str]) -> list[Finding]:
    """Does a sample's JSON agree with its members? ``extensions`` are the sample's member
    extensions in archive order."""
    if not isinstance(document, dict):
        return []
    found = []
    images = [ext for ext in extensions if is_image_extension(ext)]
    flagged = document.get("invalid")
    note = (f" (the converter kept it flagged invalid: {flagged.get('reason')})"
            if isinstance(flagged, dict) and flagged.get("reason") else "")
    listed = listed_members(document)
    if listed is not None:
        field_name, items = listed
        references = [_member_reference(item, key, extensions) for item in items]
        for item, reference in zip(items, references):
            if reference not in extensions:
                found.append(Finding("name_mismatch", f"key {key}: JSON {field_name!r} lists {item!r} but the sample "
                                     f"has no such member (members: {', '.join(extensions)}){note}", json_member))
        for ext in images:
            if ext not in references:
                found.append(Finding("name_mismatch", f"key {key}: image member {ext!r} is not listed in the JSON's "
                                     f"{field_name!r} ({', '.join(map(repr, items))}){note}", json_member))
    tokens = json_image_tokens(document)
    if tokens is not None and (tokens or images) and tokens != len(images):
        found.append(Finding("image_token_mismatch", f"key {key}: {tokens} {IMAGE_TOKEN} token(s) in the JSON but "
                             f"{len(images)} image member(s) ({', '.join(images) or 'none'}){note}", json_member))
    return found


def sample_structure_findings(key: str, extensions: list[str]) -> list[Finding]:
    seen: set[str] = set()
    found = []
    for ext in extensions:
        folded = ext.lower()  # webdataset lowercases, so "JPG" and "jpg" collide there
        if folded in seen:
            found.append(Finding("duplicate_extension", f"key {key}: extension {ext!r} appears more than once in "
                                 "the sample (webdataset raises, Energon keeps only the last)", f"{key}.{ext}"))
        seen.add(folded)
    return found + hidden_member_findings(key, extensions)


def hidden_member_findings(key: str, extensions: list[str]) -> list[Finding]:
    """A dot in what the producer meant as the key: ``a.b.json`` is key ``a``, extension
    ``b.json`` to every reader, so ``sample["json"]`` is missing. Positions (``0.jpg``) and
    compound extensions of other kinds (``labels.npy``, ``npy.zst``) are fine."""
    plain = {ext.lower() for ext in extensions}
    found = []
    for ext in extensions:
        head, dot, last = ext.rpartition(".")
        last = last.lower()
        if not dot or head.isdigit() or last in plain or not (last == "json" or last in IMAGE_EXTENSIONS):
            continue
        found.append(Finding("key_split_hides_member", f"member {key}.{ext}: readers read key {key!r} and "
                             f"extension {ext!r}, so sample[{last!r}] is missing (the producer probably meant "
                             f"key {key + '.' + head!r}); keys must not contain dots", f"{key}.{ext}"))
    return found


def image_format_finding(member: str, ext: str, image_format: str) -> Finding | None:
    if last_extension(ext) in FORMAT_EXTENSIONS.get(image_format, (image_format,)):
        return None
    return Finding("image_extension_mismatch", f"{member}: extension {ext!r} but the bytes are {image_format.upper()}",
                   member)
