"""One ``giellm score`` per OUTPUT on a machine, and nothing left running after a killed one.

Measured here: after SIGKILL of a driver that started its own local Ray, ``gcs_server``,
``raylet`` and the workers exit within ~5 s, but ``ray::DashboardAgent`` and
``ray::RuntimeEnvAgent`` live on, re-parented to init, for ~60-70 s. A driver that joins a cluster
starts no such processes (Ray ends a dead driver's job, its actors and tasks).

:class:`RunLock` keeps a small record per OUTPUT in ``$TMPDIR/giellm-score/``: the driver's pid
and start time and, once it started a local Ray, the pids and start times of that Ray's
processes. The next run on the same OUTPUT (or ``giellm score --cleanup``) finds the record of a
dead driver and ends exactly those processes (matched by pid *and* start time, so a recycled pid
is never touched): SIGTERM, then SIGKILL after 3 s. A record whose driver is alive means another
run is writing to OUTPUT: refused (this guards one machine; two machines writing one S3 OUTPUT
are not detected).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile

import psutil

from giellm_ray.errors import UserError
from giellm_ray.score.paths import Location

log = logging.getLogger(__name__)
TERM_GRACE_S = 3.0


def _identity(proc: psutil.Process) -> list:
    return [proc.pid, proc.create_time()]


def _alive(pid: int, started: float) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - started) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def reap(record: dict) -> list[int]:
    """End the recorded processes of a dead run that are still alive; their pids."""
    procs = [p for p in (_alive(pid, t) for pid, t in record.get("procs", [])) if p is not None]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, late = psutil.wait_procs(procs, timeout=TERM_GRACE_S)
    for proc in late:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return [p.pid for p in procs]


class RunLock:
    """The per-OUTPUT run record (see the module docstring)."""

    def __init__(self, out: Location) -> None:
        digest = hashlib.sha1(f"{out.store}|{out.path}".encode()).hexdigest()[:16]
        self.dir = os.path.join(tempfile.gettempdir(), "giellm-score")
        self.path = os.path.join(self.dir, f"{digest}.json")
        self.output = out.uri
        self.held = False

    def _read(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _write(self, record: dict) -> None:
        os.makedirs(self.dir, exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, self.path)

    def clear_dead(self) -> list[int]:
        """Reap a dead run's leftovers and drop its record; refuse if its driver is alive."""
        record = self._read()
        if record is None:
            return []
        driver = record.get("driver") or [0, 0.0]
        if _alive(*driver) and driver[0] != os.getpid():
            raise UserError(
                f"another giellm score (pid {driver[0]}) is writing to "
                f"{record.get('output', self.output)}; wait for it or kill it first"
            )
        killed = reap(record)
        if killed:
            log.info("score: ended %d process(es) left by a killed run: %s", len(killed), killed)
        os.remove(self.path)
        return killed

    def acquire(self) -> list[int]:
        killed = self.clear_dead()
        self._write({"output": self.output, "driver": _identity(psutil.Process()), "procs": []})
        self.held = True
        return killed

    def record_children(self) -> None:
        """Note the processes this driver started (its local Ray), for a later reap."""
        if not self.held:
            return
        me = psutil.Process()
        procs = []
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                procs.append(_identity(child))
        self._write({"output": self.output, "driver": _identity(me), "procs": procs})

    def release(self) -> None:
        if self.held and os.path.exists(self.path):
            os.remove(self.path)
        self.held = False
