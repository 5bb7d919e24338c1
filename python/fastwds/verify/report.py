"""The findings of a ``verify`` run: each issue with its code (``fastwds.reasons.VERIFY_CODES``),
exact counts per code, and the JSON form ``--json`` prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from fastwds.reasons import ERROR, VERIFY_CODES, WARNING, severity
from fastwds.verify.rules import Finding

# Issues listed per code; the counts stay exact. Keeps a broken 10-million-sample dataset's
# report readable.
LIST_LIMIT = 50


@dataclass
class Issue:
    severity: str
    code: str
    message: str
    shard: str | None = None
    key: str | None = None
    member: str | None = None
    count: int = 1  # warnings are folded per shard and code: how many occurrences this stands for


@dataclass
class Report:
    issues: list[Issue] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # code -> occurrences
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    checked: list[str] = field(default_factory=list)
    precision: dict | None = None  # the --check-precision summary
    _folded: dict[tuple[str | None, str], Issue] = field(default_factory=dict, repr=False)
    _listed: Counter = field(default_factory=Counter, repr=False)

    def add(self, code: str, message: str, shard: str | None = None, key: str | None = None,
            member: str | None = None) -> None:
        self.counts[code] += 1
        if severity(code) == WARNING:
            # Portability warnings usually hit every member of a producer's shards: one line per shard.
            folded = self._folded.get((shard, code))
            if folded is not None:
                folded.count += 1
                return
            issue = Issue(WARNING, code, message, shard, key, member)
            self._folded[(shard, code)] = issue
        else:
            issue = Issue(ERROR, code, message, shard, key, member)
        self._listed[code] += 1
        if self._listed[code] <= LIST_LIMIT:
            self.issues.append(issue)

    def add_finding(self, finding: Finding, shard: str, key: str | None = None) -> None:
        self.add(finding.code, finding.message, shard=shard, key=key, member=finding.member)

    def total(self, level: str) -> int:
        return sum(n for code, n in self.counts.items() if severity(code) == level)

    def failed(self, strict: bool = False) -> bool:
        return bool(self.total(ERROR) or (strict and self.total(WARNING)))

    def to_json(self, strict: bool = False) -> dict:
        extra = {"precision": self.precision} if self.precision is not None else {}
        return {
            "ok": not self.failed(strict),
            "strict": strict,
            "shards": self.shards,
            "samples": self.samples,
            "bytes": self.bytes,
            "errors": self.total(ERROR),
            "warnings": self.total(WARNING),
            "counts": {code: {"severity": severity(code), "count": n, "meaning": VERIFY_CODES[code][1]}
                       for code, n in sorted(self.counts.items())},
            "checked": self.checked,
            "issues": [asdict(issue) for issue in self.issues],
            **extra,
        }
