"""Where ``giellm score`` puts each thing under OUTPUT: one object, so no module spells a path.

Layout (documented in the README; ``_staging`` is the extension that makes resume possible)::

    OUTPUT/*.parquet                 the result (input columns + scored columns)
    OUTPUT/_SUCCESS                  JSON, written last: run_id, rows and the result's exact files
    OUTPUT/_score.json               summary (rows/s, engine statistics, resumed_rows, run_id)
    OUTPUT/_config.yaml              the resolved ScoreConfig
    OUTPUT/_metrics/                 report, when the input has gold targets
    OUTPUT/_staging/                 only while a run is in progress or was interrupted:
        attempt.json                 the attempt's run_id, id column and input fingerprint
        data/                        staged part files (Ray Data's ``write_parquet``)
        checkpoint/                  Ray Data's ids of committed part files (resume.py)
        commit.json                  the commit journal (commit.py)

:class:`ScoreOutput` is a :class:`~giellm_ray.score.paths.Location` (``fs``, ``path``, ``uri``)
that also names these places; the driver, the dataflow, resume and commit all take one.
"""

from __future__ import annotations

from dataclasses import dataclass

from giellm_ray.score.paths import Location, locate

SUCCESS = "_SUCCESS"
SCORE_JSON = "_score.json"
CONFIG_YAML = "_config.yaml"
METRICS_DIR = "_metrics"
STAGING = "_staging"
ATTEMPT = "attempt.json"
STAGED_DATA = "data"
CHECKPOINT = "checkpoint"
JOURNAL = "commit.json"


@dataclass(frozen=True)
class ScoreOutput(Location):
    """OUTPUT of one ``giellm score`` run: a location plus the paths (within ``fs``) of its parts."""

    @classmethod
    def at(cls, loc: Location) -> ScoreOutput:
        return loc if isinstance(loc, ScoreOutput) else cls(loc.uri, loc.fs, loc.path, loc.store)

    @property
    def success(self) -> str:
        return self.child(SUCCESS)

    @property
    def score_json(self) -> str:
        return self.child(SCORE_JSON)

    @property
    def config_yaml(self) -> str:
        return self.child(CONFIG_YAML)

    @property
    def metrics_dir(self) -> str:
        return self.child(METRICS_DIR)

    @property
    def staging(self) -> str:
        return self.child(STAGING)

    @property
    def attempt(self) -> str:
        return self.child(STAGING, ATTEMPT)

    @property
    def journal(self) -> str:
        return self.child(STAGING, JOURNAL)

    @property
    def checkpoint(self) -> str:
        return self.child(STAGING, CHECKPOINT)

    def staged(self, name: str | None = None) -> str:
        """The staged-data directory, or the staged part file ``name`` in it."""
        return self.child(STAGING, STAGED_DATA, *([name] if name else []))

    def result(self, name: str) -> str:
        """A file of the committed result (or of its metadata: ``_metrics/x.json``)."""
        return self.child(name)


def locate_output(uri: str, endpoint_url: str | None = None) -> ScoreOutput:
    """:func:`~giellm_ray.score.paths.locate` for an OUTPUT."""
    return ScoreOutput.at(locate(uri, endpoint_url))


__all__ = ["METRICS_DIR", "SUCCESS", "ScoreOutput", "locate_output"]
