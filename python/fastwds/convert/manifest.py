"""``manifest.json``: what was converted, how, and what came out, for audits and ``verify``."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from fastwds import __version__
from fastwds.convert.plan import Plan


def build_manifest(command: str, plan: Plan, output_options: dict[str, Any], task_records: list[dict],
                   elapsed: float, resumed: bool) -> dict[str, Any]:
    shards = [dict(shard, task=record["task"]) for record in task_records for shard in record["shards"]]
    reasons = Counter(r["reason"] for record in task_records for r in record["rejects"])
    kept = sum(r["action"] == "kept" for record in task_records for r in record["rejects"])
    rows = sum(record["rows"] for record in task_records)
    written = sum(record["written"] for record in task_records)
    return {
        "fastwds_version": __version__,
        "command": command,
        "options": output_options,
        "source": {
            "kind": plan.source,
            "root": plan.input_root,
            "fingerprint": plan.fingerprint(),
            "files": [asdict(f) for f in plan.files],
        },
        "shards": shards,
        "totals": {
            "rows": rows,
            "samples": written,
            "invalid": sum(reasons.values()),
            "invalid_kept": kept,
            "skipped": rows - written,
            "shards": len(shards),
            "bytes": sum(s["bytes"] for s in shards),
        },
        "invalid_by_reason": dict(sorted(reasons.items())),
        "elapsed_seconds": round(elapsed, 3),
        "resumed": resumed,
    }
