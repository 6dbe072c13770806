"""The commit of ``giellm score`` under failure at every step (local and S3 via moto), and the
0-row input over an existing result (no Ray: nothing to score).

Faults come from a pyarrow file system that delegates to the real one and raises on the k-th
write-side call (create, delete, move, copy, open for writing), for every k the commit makes.
After each fault a reader must see either the old result or no ``_SUCCESS``, never a ``_SUCCESS``
over other files; running the commit again must end with exactly the new result."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from giellm_ray import schema as S
from giellm_ray.io import fs_exists, read_json
from giellm_ray.score import commit
from giellm_ray.score.config import ScoreConfig
from giellm_ray.score.driver import run_score
from giellm_ray.score.layout import SCORE_JSON, STAGING, SUCCESS, ScoreOutput, locate_output

MUTATING = (
    "create_dir",
    "delete_dir",
    "delete_dir_contents",
    "delete_file",
    "move",
    "copy_file",
    "open_output_stream",
    "open_append_stream",
)


class FaultyHandler(pafs.FileSystemHandler):
    """Delegates to ``fs``; the ``fail_at``-th mutating call raises (``None``: only counts)."""

    def __init__(self, fs: pafs.FileSystem, fail_at: int | None) -> None:
        self.fs, self.fail_at, self.calls = fs, fail_at, 0

    def _mutate(self, name: str, *args):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise OSError(f"injected fault at call {self.calls} ({name} {args[:1]})")
        return getattr(self.fs, name)(*args)

    def get_type_name(self):
        return "faulty"

    def equals(self, other):
        return self is other

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def delete_root_dir_contents(self):
        raise OSError("not allowed")

    def create_dir(self, path, recursive):
        return self._mutate("create_dir", path, recursive)

    def delete_dir(self, path):
        return self._mutate("delete_dir", path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        return self._mutate("delete_dir_contents", path, missing_dir_ok)

    def delete_file(self, path):
        return self._mutate("delete_file", path)

    def move(self, src, dest):
        return self._mutate("move", src, dest)

    def copy_file(self, src, dest):
        return self._mutate("copy_file", src, dest)

    def open_output_stream(self, path, metadata):
        return self._mutate("open_output_stream", path)

    def open_append_stream(self, path, metadata):
        return self._mutate("open_append_stream", path)


def ids_table(ids: list[str]) -> pa.Table:
    return pa.table({S.ID: ids, S.ERROR: pa.nulls(len(ids), pa.string())})


def stage(out: ScoreOutput, parts: dict[str, list[str]]) -> None:
    base = out.staged()
    out.fs.create_dir(base, recursive=True)
    for name, ids in parts.items():
        pq.write_table(ids_table(ids), f"{base}/{name}", filesystem=out.fs)


def meta_writer(out: ScoreOutput, run_id: str):
    def write(names: list[str]) -> list[str]:
        with out.fs.open_output_stream(out.score_json) as f:
            f.write(json.dumps({"run_id": run_id, "files": names}).encode())
        return [SCORE_JSON]

    return write


def commit_all(out: ScoreOutput, run_id: str) -> dict:
    """What run_score does once every row is staged: journal (unless one exists), then finish."""
    journal = read_json(out.fs, out.journal)
    if journal is None:
        journal = commit.begin_commit(
            out, run_id, commit.staged_files(out), {}, read_json(out.fs, out.success)
        )
    return commit.finish_commit(out, journal, meta_writer(out, journal["run_id"]))


def reader_view(out: ScoreOutput) -> list[str] | None:
    """What a reader trusting ``_SUCCESS`` sees: the sorted ids, or None (no complete result)."""
    manifest = read_json(out.fs, out.success)
    if manifest is None:
        return None
    present = {
        i.base_name
        for i in out.fs.get_file_info(pafs.FileSelector(out.path))
        if i.base_name.endswith(".parquet")
    }
    assert present == {f["name"] for f in manifest["files"]}, "_SUCCESS over other files"
    return sorted(
        i
        for n in present
        for i in pq.read_table(out.child(n), filesystem=out.fs).column(S.ID).to_pylist()
    )


OLD = {"old-a.parquet": ["o0", "o1", "o2"], "old-b.parquet": ["o3", "o4", "o5"]}
NEW = {"new-a.parquet": ["n0", "n1"], "new-b.parquet": ["n2", "n3"], "new-c.parquet": ["n4"]}


def fresh_state(out: ScoreOutput) -> None:
    """OUTPUT holding the committed OLD result and a completely staged NEW one."""
    if fs_exists(out.fs, out.path):
        out.fs.delete_dir(out.path)
    stage(out, OLD)
    commit_all(out, "old-run")
    stage(out, NEW)


def _location(kind: str, tmp_path, s3_endpoint) -> ScoreOutput:
    if kind == "local":
        return locate_output(str(tmp_path / "out"))
    return locate_output(f"s3://giellm-test/commit-{os.getpid()}-{tmp_path.name}", s3_endpoint)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_commit_survives_a_fault_at_every_step(kind, tmp_path, request):
    out = _location(kind, tmp_path, request.getfixturevalue("s3_server") if kind == "s3" else None)
    counting = FaultyHandler(out.fs, None)
    fresh_state(out)
    commit_all(ScoreOutput(out.uri, pafs.PyFileSystem(counting), out.path, out.store), "new-run")
    old_ids, new_ids = (sorted(i for v in p.values() for i in v) for p in (OLD, NEW))
    assert reader_view(out) == new_ids
    assert counting.calls >= 8
    for k in range(1, counting.calls + 1):
        fresh_state(out)
        faulty = ScoreOutput(
            out.uri, pafs.PyFileSystem(FaultyHandler(out.fs, k)), out.path, out.store
        )
        with pytest.raises(OSError, match="injected fault"):
            commit_all(faulty, "new-run")
        seen = reader_view(out)  # the old result, none, or (fault after _SUCCESS) the new one
        assert seen in (None, old_ids, new_ids), (k, seen)
        commit_all(out, "new-run")  # the re-run
        assert reader_view(out) == new_ids, k
        assert not fs_exists(out.fs, out.staging), k
        assert json.loads(out.fs.open_input_stream(out.score_json).read())["run_id"] == "new-run"


def test_zero_row_input_replaces_a_result_with_a_valid_empty_one(tmp_path, tiny_model_dir):
    out = locate_output(str(tmp_path / "out"))
    stage(out, OLD)
    commit_all(out, "old-run")
    (tmp_path / "out" / "_metrics").mkdir()
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(S.DATASET_SCHEMA.empty_table(), inp / "empty.parquet")
    cfg = ScoreConfig(input=[str(inp)], output=str(tmp_path / "out"), progress_interval_s=0)
    cfg.model.name_or_path = tiny_model_dir
    summary = run_score(cfg)  # no rows: no Ray, no model
    assert summary["input_rows"] == summary["output_rows"] == 0
    manifest = json.loads((tmp_path / "out" / SUCCESS).read_text())
    assert manifest["rows"] == 0 and len(manifest["files"]) == 1
    files = sorted(p for p in os.listdir(tmp_path / "out") if p.endswith(".parquet"))
    assert files == [manifest["files"][0]["name"]]  # the old files are gone
    table = pq.read_table(tmp_path / "out" / files[0])
    assert table.num_rows == 0
    assert {S.ID, S.TEXT, S.PREDICTION, S.ERROR, S.PRED_ITEMS} <= set(table.column_names)
    score = json.loads((tmp_path / "out" / SCORE_JSON).read_text())
    assert score["output_rows"] == 0 and score["run_id"] == manifest["run_id"]
    assert not (tmp_path / "out" / STAGING).exists()


def test_parquet_files_no_manifest_names_are_refused_and_kept(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(ids_table(["x"]), out / "theirs.parquet")
    (out / SUCCESS).write_text("")  # an older giellm's empty marker names no files
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(S.DATASET_SCHEMA.empty_table(), inp / "empty.parquet")
    cfg = ScoreConfig(input=[str(inp)], output=str(out), progress_interval_s=0)
    with pytest.raises(ValueError, match="theirs.parquet.*did not provably write"):
        run_score(cfg)
    assert sorted(os.listdir(out)) == [SUCCESS, "theirs.parquet"]
