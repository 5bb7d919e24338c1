"""Hugging Face ``datasets``: a dataset card (``README.md``) that makes it load every sample and
every image of a shard set, whatever the member names and the order of the shards.

HF's webdataset builder takes its columns from the first five samples of the first shard it is
given, one column per member extension; a later sample with other members (``png`` where the
first had ``jpg``, ``0.jpg 1.png`` where the first had one ``jpg``) loses them without an error,
and first samples that disagree fail the load. Real-format member names are right for every
other reader (Energon, webdataset, the seed workflows rely on them), so instead of renaming
members, fastwds declares the columns: the card lists every member extension any sample has, and
HF then skips inference and fills a column a sample lacks with None. The card also pins the
data files to ``*.tar``, so that sidecar files (``.tar.idx``, ``manifest.json``) and shard names
containing "train"/"test" do not change what HF loads.

- ``load_dataset("OUTPUT_DIR", split="train")`` reads the card (a folder, or a Hub repository);
- ``load_dataset("webdataset", data_files=..., features=fastwds.hf.features("OUTPUT_DIR"))`` for
  an explicit list of shards (HF reads no card then).
"""

from __future__ import annotations

import json
from typing import Any

CARD_NAME = "README.md"
CARD_MARK = "<!-- written by fastwds: the columns below are every member extension of these shards -->"
IMAGE_EXTENSIONS = frozenset(("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"))
TEXT_EXTENSIONS = frozenset(("txt", "text", "caption"))
# Members HF gets as bytes: a kept image fastwds could not identify (``KEY.bin``, --on-invalid
# keep) and videos (cast to ``datasets.Video`` to decode them: that needs a decoder installed).
BINARY_EXTENSIONS = frozenset(("bin", "mp4", "mov", "webm", "mkv", "avi"))


def column_type(extension: str) -> str | None:
    """HF's type for a member extension (its last part decides, as in HF's builder), or None
    when it has no simple declaration (arrays: HF infers those)."""
    last = extension.rsplit(".", 1)[-1].lower()
    if last in ("json", "jsn"):
        return "json"
    if last in IMAGE_EXTENSIONS:
        return "image"
    if last in TEXT_EXTENSIONS:
        return "string"
    if last in BINARY_EXTENSIONS:
        return "binary"
    return None


def feature_list(members: list[str]) -> list[dict[str, str]] | None:
    """The ``dataset_info.features`` of shards with these member extensions, or None when one has
    no declaration (then HF infers the columns, and ``verify`` says when that loses data)."""
    types = {member: column_type(member) for member in sorted(set(members))}
    if not types or any(kind is None for kind in types.values()):
        return None
    return ([{"name": member, "dtype": kind} for member, kind in types.items()]
            + [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}])


def dataset_card(name: str, samples: int, features: list[dict[str, str]] | None, command: str) -> str:
    lines = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train", '    path: "*.tar"']
    if features is not None:
        lines += ["dataset_info:", "  features:"]
        lines += [f"  - name: {json.dumps(f['name'])}\n    dtype: {f['dtype']}" for f in features]
    lines += ["---", CARD_MARK, "", f"# {name}", "",
              f"WebDataset shards written by `fastwds {command}`: {samples:,} samples. `manifest.json` lists every "
              "shard with its sha256; `rejects.jsonl` every input row that was not written, and why.", "",
              "```python", "from datasets import load_dataset", "",
              'dataset = load_dataset("PATH_OR_REPO_OF_THIS_FOLDER", split="train")', "```", ""]
    if features is None:
        lines += ["The members of these samples include types HF infers itself (arrays): it takes the "
                  "columns from the first samples of the first shard.", ""]
    return "\n".join(lines)


def is_ours(text: str) -> bool:
    return CARD_MARK in text


def features(location: str) -> Any:
    """``datasets.Features`` of a fastwds output (folder or s3:// prefix), for
    ``load_dataset("webdataset", data_files=..., features=...)``, which reads no dataset card."""
    from datasets import Features

    from fastwds.convert.layout import MANIFEST_NAME
    from fastwds.convert.output import open_output

    manifest = json.loads(open_output(location).read_text(MANIFEST_NAME))
    declared = (manifest.get("hf") or {}).get("features")
    if declared is None:
        raise ValueError(f"{location}: its members have types HF infers itself; load without features=")
    return Features._from_yaml_list(declared)
