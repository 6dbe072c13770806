"""Progress lines for long data builds: rows done and rows/s, logged at INFO.

``Progress("scpos")`` logs at most every ``every_s`` seconds while rows arrive and once more
at :meth:`Progress.done`, so a 187k-row build shows it is alive without flooding a log
(``giellm -q`` turns the lines off).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class Progress:
    """Counts rows and logs ``NAME: N rows, R rows/s`` now and then."""

    def __init__(self, name: str, every_s: float = 5.0) -> None:
        self.name = name
        self.every_s = every_s
        self.rows = 0
        self.started = time.perf_counter()
        self._last = self.started

    def _log(self, final: bool = False) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        state = "done" if final else "running"
        log.info(
            "%s: %s rows, %s rows/s (%s, %.1f s)",
            self.name,
            f"{self.rows:,}",
            f"{self.rows / elapsed:,.0f}",
            state,
            elapsed,
        )

    def add(self, n: int) -> None:
        self.rows += n
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self._log()

    def done(self) -> float:
        """Log the final line; return rows/s."""
        self._log(final=True)
        return self.rows / max(time.perf_counter() - self.started, 1e-9)
