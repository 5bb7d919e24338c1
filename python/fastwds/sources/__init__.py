"""Input sources, registered by name. Each module named here defines ``SOURCE``, an instance of
``fastwds.sources.base.Source``; ``fastwds convert NAME`` and the engines find it through
``get_source``. Registering a new source is one line here (see ARCHITECTURE.md)."""

from __future__ import annotations

import importlib

from fastwds.sources.base import Source

SOURCES: dict[str, str] = {
    "parquet": "fastwds.sources.parquet",
    "sft": "fastwds.sources.sft",
    "npz": "fastwds.sources.npz",
}


def get_source(name: str) -> Source:
    """The registered source ``name`` (its module is imported on first use)."""
    return importlib.import_module(SOURCES[name]).SOURCE
