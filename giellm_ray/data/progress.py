"""Progress lines for long data builds: rows done and rows/s, printed to stderr.

``Progress("scpos")`` prints at most every ``every_s`` seconds while rows arrive and once more
at :meth:`Progress.done`, so a 187k-row build shows it is alive without flooding a log.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts rows and prints ``NAME: N rows, R rows/s`` to ``stream`` now and then."""

    def __init__(self, name: str, every_s: float = 5.0, stream: TextIO | None = None) -> None:
        self.name = name
        self.every_s = every_s
        self.stream = stream
        self.rows = 0
        self.started = time.perf_counter()
        self._last = self.started

    def _print(self, final: bool = False) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        state = "done" if final else "running"
        print(f"{self.name}: {self.rows:,} rows, {self.rows / elapsed:,.0f} rows/s ({state}, "
              f"{elapsed:.1f} s)", file=self.stream or sys.stderr, flush=True)

    def add(self, n: int) -> None:
        self.rows += n
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self._print()

    def done(self) -> float:
        """Print the final line; return rows/s."""
        self._print(final=True)
        return self.rows / max(time.perf_counter() - self.started, 1e-9)
