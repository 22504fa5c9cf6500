"""Progress on stderr: a rich progress bar on a terminal, a line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Count finished items; ``enabled=None`` shows a bar only when stderr is a terminal."""

    def __init__(self, description: str, *, total: int | None = None,
                 enabled: bool | None = None, every_s: float = 10.0) -> None:
        self.description, self.total, self.count = description, total, 0
        self.tty = sys.stderr.isatty()
        self.enabled = self.tty if enabled is None else enabled
        self.every_s, self._last = every_s, time.monotonic()
        self._start = self._last
        self._bar: Any = None
        if self.enabled and self.tty:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)
            from rich.console import Console

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn(),
                                     TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=False)
            self._task = self._bar.add_task(description, total=total)
            self._bar.start()

    def advance(self, n: int = 1) -> None:
        self.count += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.advance(self._task, n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            rate = self.count / max(now - self._start, 1e-9)
            total = f"/{self.total}" if self.total else ""
            print(f"{self.description}: {self.count}{total} ({rate:.1f}/s)", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        """Stop the bar; without one (not a terminal), say where the count ended."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.enabled and self.count:
            total = f"/{self.total}" if self.total else ""
            elapsed = time.monotonic() - self._start
            print(f"{self.description}: {self.count}{total} in {elapsed:.1f} s", file=sys.stderr,
                  flush=True)
            self.enabled = False          # once

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
