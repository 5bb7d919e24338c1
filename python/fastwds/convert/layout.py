"""Every name fastwds gives a file in an output location (a folder or an s3:// prefix), in one
place. Names are relative to the output, '/'-separated.

Dataset files (read by users and readers): the shards ``{task}.tar`` (spill shards
``{task}-1.tar``, ...), their sidecar indexes (``.tar.idx``, ``.idx``), ``manifest.json``,
``rejects.jsonl``, ``index.wids.json``, and whatever a source adds at the end (``.nv-meta/``,
``volumes.jsonl``). Run state (read by ``--resume``) lives in ``.fastwds/``: ``run.json`` (the plan
fingerprint, output options and the current run's session), one record per finished task under
``tasks/``, the run lock ``lock``, a log of attempts, and (in a local folder) each live attempt's
staging folder under ``attempts/`` (see ``commit.py``).
"""

from __future__ import annotations

import re

MANIFEST_NAME = "manifest.json"
REJECTS_NAME = "rejects.jsonl"
WIDS_INDEX_NAME = "index.wids.json"
STATE_DIR = ".fastwds"
RUN_FILE = f"{STATE_DIR}/run.json"
TASKS_DIR = f"{STATE_DIR}/tasks"
LOCK_FILE = f"{STATE_DIR}/lock"
ATTEMPTS_DIR = f"{STATE_DIR}/attempts"  # local staging folders of attempts
ATTEMPTS_LOG = f"{STATE_DIR}/attempts.jsonl"  # one line per attempt started: which task ran where, and when
PROBES_DIR = f"{STATE_DIR}/probes"  # files written by cluster nodes to prove they share the output


def task_record(task_name: str) -> str:
    return f"{TASKS_DIR}/{task_name}.json"


def is_task_output(name: str, task_name: str) -> bool:
    """A file of the task: its shard, spill shards (``name-1.tar``) and sidecar indexes."""
    return re.match(rf"^{re.escape(task_name)}(-\d+)?\.(tar|idx)", name) is not None
