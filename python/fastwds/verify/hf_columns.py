"""Will Hugging Face ``datasets`` load every sample of these shards? HF takes one column per
member extension from the first five samples of the first shard, unless the dataset card
(``README.md`` beside the shards) declares the features: first samples that disagree fail the
load, and a later sample's members outside those columns are dropped without an error."""

from __future__ import annotations

import re
from pathlib import Path

from fastwds.verify.report import Report

INFERRED_FROM = 5  # samples of the first shard HF's webdataset builder looks at
FEATURE_NAME = re.compile(r'^\s*-\s*(?:\{\s*)?name:\s*"?([^"\n,}]+)"?', re.MULTILINE)


def declared_columns(root: Path) -> set[str] | None:
    """The columns the dataset card declares in ``dataset_info.features``, or None without a card
    or declaration."""
    card = root / "README.md"
    try:
        text = card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("---") or "dataset_info:" not in text:
        return None
    front = text.split("---", 2)[1]
    features = front.split("features:", 1)[1] if "features:" in front else ""
    names = {name.strip() for name in FEATURE_NAME.findall(features)}
    return names or None


class HfColumns:
    def __init__(self, report: Report, root: Path) -> None:
        self.report = report
        self.declared = declared_columns(root)
        self.first: list[frozenset[str]] = []  # member sets of the first samples of the first shard
        self.columns: set[str] = set()
        self.lost: dict[str, int] = {}  # extension -> samples whose member HF would drop
        self.examples: dict[str, str] = {}

    def add(self, shard_number: int, key: str, extensions: list[str]) -> None:
        members = frozenset(extensions)
        if shard_number == 0 and len(self.first) < INFERRED_FROM:
            self.first.append(members)
            self.columns |= members
            return
        for ext in members - self.columns if self.declared is None else members - self.declared:
            self.lost[ext] = self.lost.get(ext, 0) + 1
            self.examples.setdefault(ext, key)

    def finish(self) -> None:
        if self.declared is not None:
            undeclared = {ext: n for ext, n in self.lost.items()}
            undeclared.update({ext: 1 for ext in self.columns - self.declared})
            if undeclared:
                self.report.add("hf_columns_undeclared", "HF datasets drops members README.md does not declare: "
                                + ", ".join(f"{ext!r} ({n:,} samples)" for ext, n in sorted(undeclared.items()))
                                + "; add them to dataset_info.features")
            return
        if len(set(self.first)) > 1:
            self.report.add("hf_columns_differ", "HF datasets cannot load these shards as they are: the first samples "
                            "of the first shard have different members ("
                            + "; ".join(sorted(",".join(sorted(m)) for m in set(self.first)))
                            + "), so load_dataset fails (\"don't share the same prefix or the same types\"). Declare "
                            "the columns in a README.md (fastwds convert writes one) or pass features= to load_dataset")
        elif self.lost:
            self.report.add("hf_columns_differ", "HF datasets takes its columns from the first samples of the first "
                            f"shard ({', '.join(sorted(self.columns))}) and silently drops other members: "
                            + ", ".join(f"{ext!r} in {n:,} samples (e.g. {self.examples[ext]})"
                                        for ext, n in sorted(self.lost.items()))
                            + ". Declare the columns in a README.md (fastwds convert writes one) or pass features= "
                            "to load_dataset")
