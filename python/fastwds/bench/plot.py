"""``--plot``: throughput against worker count, drawn with matplotlib when it is installed.

matplotlib is not a dependency of fastwds: a benchmark checks ``require_matplotlib()`` before it
runs anything, so a missing install costs the user no benchmark time.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from fastwds.errors import FastwdsError

MISSING = "--plot needs matplotlib: pip install matplotlib"


class PlotUnavailable(FastwdsError):
    """``--plot`` was asked for but matplotlib is not installed."""


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise PlotUnavailable(MISSING)


def plot_scaling(path: str | Path, title: str, points: Sequence[tuple[int, float]],
                 references: dict[str, float]) -> None:
    """One line of samples/s per worker count (``points``), and a dashed horizontal line for each
    reference (the floor, the peer: they do not scale with fastwds's workers)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    try:
        workers = [w for w, _ in points]
        axes.plot(workers, [rate for _, rate in points], marker="o", label="fastwds convert")
        for (label, rate), style in zip(references.items(), ("--", ":", "-.")):
            axes.axhline(rate, linestyle=style, color="grey", label=label)
        axes.set_xticks(workers)
        axes.set_xlabel("worker processes")
        axes.set_ylabel("samples/s (median)")
        axes.set_ylim(bottom=0)
        axes.set_title(title, fontsize=10)
        axes.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)
