"""Progress a person can follow on a long scoring run, and the engine counters behind the report.

Each inference actor reports rows, generated tokens and engine-stat deltas
(:class:`giellm_ray.generation.base.EngineStats` fields) to one :class:`ProgressCounter` actor
(0 CPU); :class:`ProgressPrinter` (a driver thread) logs ``rows done / total, rows/s, tokens/s,
ETA`` every few seconds and the driver reads the totals for ``_score.json`` at the end.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class ProgressCounter:
    """Sums what the actors report (run as a Ray actor with ``num_cpus=0``)."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {"scored_rows": 0, "error_rows": 0}

    def add(self, deltas: dict[str, int]) -> None:
        for key, value in deltas.items():
            self.totals[key] = self.totals.get(key, 0) + int(value)

    def get(self) -> dict[str, int]:
        return dict(self.totals)


class ProgressPrinter(threading.Thread):
    """Logs a progress line every ``interval_s`` seconds until :meth:`stop`."""

    def __init__(self, counter, total_rows: int, interval_s: float, already: int = 0) -> None:
        super().__init__(daemon=True, name="giellm-score-progress")
        self.counter, self.total, self.interval = counter, total_rows, interval_s
        self.already = already  # rows committed by an earlier attempt (not counted in the rate)
        self.start_time = time.monotonic()
        self._stop = threading.Event()

    def line(self, totals: dict[str, int]) -> str:
        done = totals.get("scored_rows", 0)
        secs = max(time.monotonic() - self.start_time, 1e-9)
        rate = done / secs
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        pct = 100.0 * done / self.total if self.total else 100.0
        resumed = f" (+{self.already} resumed)" if self.already else ""
        return (
            f"score: {done}/{self.total} rows{resumed} ({pct:.1f}%), {rate:.1f} rows/s, "
            f"{totals.get('generated_tokens', 0) / secs:.0f} tok/s, "
            f"errors {totals.get('error_rows', 0)}, eta {eta:.0f}s"
        )

    def run(self) -> None:
        import ray

        while not self._stop.wait(self.interval):
            try:
                log.info("%s", self.line(ray.get(self.counter.get.remote(), timeout=30)))
            except Exception as exc:  # progress must never break the job
                log.warning("score: progress unavailable (%s)", exc)

    def stop(self) -> None:
        self._stop.set()
