"""Progress of a long conversion: a redrawn status line on a terminal, a log line every
``interval`` seconds otherwise (CI logs and files get no carriage-return noise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressReporter:
    def __init__(self, total_rows: int, stream: TextIO | None = None, interval: float | None = None,
                 enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.enabled = enabled
        self.total = total_rows
        self.rows = self.written = self.bytes = 0
        self.per_task: dict[str, tuple[int, int, int]] = {}
        self.started = time.monotonic()
        self.last_shown = 0.0

    def update(self, rows: int, written: int, size: int) -> None:
        self.rows += rows
        self.written += written
        self.bytes += size
        now = time.monotonic()
        if now - self.last_shown >= self.interval:
            self.last_shown = now
            self.show()

    def task_totals(self, task: str, rows: int, written: int, size: int) -> None:
        """A task's running totals: a retried task replaces its earlier count, never adds to it."""
        old = self.per_task.get(task, (0, 0, 0))
        self.per_task[task] = (rows, written, size)
        self.update(rows - old[0], written - old[1], size - old[2])

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        percent = 100.0 * self.rows / self.total if self.total else 100.0
        rate = self.rows / elapsed
        eta = format_duration((self.total - self.rows) / rate) if rate > 0 else "?"
        return (f"{self.rows:,}/{self.total:,} rows ({percent:.0f}%)  written {self.written:,}  "
                f"skipped {self.rows - self.written:,}  {self.bytes / elapsed / 1e6:.1f} MB/s  "
                f"{rate:,.0f} rows/s  ETA {eta}")

    def show(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
        else:
            self.stream.write(f"fastwds: {self.line()}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
