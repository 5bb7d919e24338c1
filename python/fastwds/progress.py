"""Progress of a long conversion. On a terminal: one tqdm bar that fits the terminal's width and
redraws in place (bar, percent, rows, elapsed and ETA, then shards finished, rows/s, MB/s and
skipped rows). Not on a terminal (CI logs, files, pipes): a plain log line every ``interval``
seconds, no carriage returns.

tqdm rather than rich: it is one small pure-Python package with no dependencies of its own, sizes
its line to the terminal on every redraw (``dynamic_ncols``), and is what the HF datasets and
img2dataset users already see; rich would bring its rendering stack for one line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("fastwds")


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_bytes(count: float) -> str:
    """1.2 kB, 34.5 MB, 1.2 GB: decimal units, as disks and buckets count them."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000:
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1000
    return f"{count:,.1f} TB"


class ProgressReporter:
    def __init__(self, total_rows: int, stream: TextIO | None = None, interval: float | None = None,
                 enabled: bool = True, total_tasks: int = 0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.enabled = enabled
        self.total = total_rows
        self.total_tasks = total_tasks
        self.rows = self.written = self.bytes = self.tasks_done = 0
        self.per_task: dict[str, tuple[int, int, int]] = {}
        self.started = time.monotonic()
        self.last_shown = 0.0
        self.bar = None
        self._logs_above_bar = None
        if enabled and self.tty:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            # Compact, so that an 80-column terminal keeps a bar of ~14 cells.
            self.bar = tqdm(total=total_rows, unit=" rows", file=self.stream, dynamic_ncols=True, smoothing=0.1,
                            mininterval=self.interval, unit_scale=True,
                            bar_format="{percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")
            # Log lines while the bar is up go above it (tqdm clears and redraws the bar), not
            # onto the bar's own line.
            self._logs_above_bar = logging_redirect_tqdm(tqdm_class=tqdm)
            self._logs_above_bar.__enter__()

    def update(self, rows: int, written: int, size: int) -> None:
        self.rows += rows
        self.written += written
        self.bytes += size
        now = time.monotonic()
        if self.bar is not None:
            self.bar.update(rows)
            if now - self.last_shown >= self.interval:
                self.last_shown = now
                self.bar.set_postfix_str(self.postfix(), refresh=False)
        elif now - self.last_shown >= self.interval:
            self.last_shown = now
            self.show()

    def task_totals(self, task: str, rows: int, written: int, size: int) -> None:
        """A task's running totals: a retried task replaces its earlier count, never adds to it."""
        old = self.per_task.get(task, (0, 0, 0))
        self.per_task[task] = (rows, written, size)
        self.update(rows - old[0], written - old[1], size - old[2])

    def task_finished(self, task: str, shards: list[dict]) -> None:
        self.tasks_done += 1
        for shard in shards:
            log.debug("task %s: published %s (%d samples, %s)", task, shard["name"], shard["samples"],
                      format_bytes(shard["bytes"]))

    def rates(self) -> tuple[float, float]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return self.rows / elapsed, self.bytes / elapsed / 1e6

    def postfix(self) -> str:
        """The bar's tail: tasks done, rows/s, bytes/s, rows skipped (compact: 2.1k, 175 MB)."""
        from tqdm import tqdm

        rows_per_s, mb_per_s = self.rates()
        def compact(number: float, suffix: str = "") -> str:
            return f"{number:.0f}{suffix}" if number < 1000 else tqdm.format_sizeof(number, suffix)

        return (f"{self.tasks_done}/{self.total_tasks} tasks, {compact(rows_per_s)} rows/s, "
                f"{compact(mb_per_s * 1e6, 'B')}/s, {compact(self.rows - self.written)} skipped")

    def line(self) -> str:
        rows_per_s, mb_per_s = self.rates()
        percent = 100.0 * self.rows / self.total if self.total else 100.0
        eta = format_duration((self.total - self.rows) / rows_per_s) if rows_per_s > 0 else "?"
        return (f"{self.rows:,}/{self.total:,} rows ({percent:.0f}%), tasks {self.tasks_done}/{self.total_tasks}, "
                f"{rows_per_s:,.0f} rows/s, {format_bytes(mb_per_s * 1e6)}/s, skipped {self.rows - self.written:,}, "
                f"ETA {eta}")

    def show(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=True)
            return
        self.stream.write(f"fastwds: {self.line()}\n")
        self.stream.flush()

    def close(self) -> None:
        """Leave the last state on screen (the bar stays as it ended, not erased)."""
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=False)
            self.bar.close()
            self.bar = None
        if self._logs_above_bar is not None:
            self._logs_above_bar.__exit__(None, None, None)
            self._logs_above_bar = None
