"""Every name fastwds gives a file in an output folder, in one place.

Dataset files (read by users and readers): the shards ``{task}.tar`` (spill shards
``{task}-1.tar``, ...), their sidecar indexes (``.tar.idx``, ``.idx``), ``manifest.json``,
``rejects.jsonl``, ``index.wids.json``, and whatever a source adds at the end (``.nv-meta/``,
``volumes.jsonl``). Run state (read by ``--resume``) lives in ``.fastwds/``: ``run.json`` (the plan
fingerprint, output options and the current run's session), one record per finished task under
``tasks/``, the run lock ``lock``, and each live attempt's staging folder under ``attempts/``
(see ``commit.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

MANIFEST_NAME = "manifest.json"
REJECTS_NAME = "rejects.jsonl"
WIDS_INDEX_NAME = "index.wids.json"
STATE_DIR = ".fastwds"
RUN_FILE = "run.json"
TASKS_DIR = "tasks"
LOCK_FILE = "lock"
ATTEMPTS_DIR = "attempts"
ATTEMPTS_LOG = "attempts.jsonl"  # one line per attempt started: which task ran where, and when
# Dataset files a source writes at the end of a run go here first (see run.finalize).
FINISH_STAGING_DIR = "finish"


def state_dir(output_dir: Path) -> Path:
    return output_dir / STATE_DIR


def run_file(output_dir: Path) -> Path:
    return output_dir / STATE_DIR / RUN_FILE


def tasks_dir(output_dir: Path) -> Path:
    return output_dir / STATE_DIR / TASKS_DIR


def lock_file(output_dir: Path) -> Path:
    return output_dir / STATE_DIR / LOCK_FILE


def attempts_dir(output_dir: Path) -> Path:
    return output_dir / STATE_DIR / ATTEMPTS_DIR


def attempts_log(output_dir: Path) -> Path:
    return output_dir / STATE_DIR / ATTEMPTS_LOG


def task_record_path(output_dir: Path, task_name: str) -> Path:
    return tasks_dir(output_dir) / f"{task_name}.json"


def task_outputs(output_dir: Path, task_name: str) -> list[Path]:
    """Every file of one task in the output folder: its shard, spill shards (``name-1.tar``) and
    sidecar indexes."""
    own = re.compile(rf"^{re.escape(task_name)}(-\d+)?\.(tar|idx)")
    return [entry for entry in output_dir.iterdir() if own.match(entry.name)]
