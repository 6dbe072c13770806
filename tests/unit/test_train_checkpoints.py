"""Checkpoints in storage, without Ray: what counts as complete, which one a restart takes, which
orphans go, which files a rank fetches, and that an untrusted ``resume_from`` is refused before
any work starts."""

from __future__ import annotations

import json
import os

import pyarrow.fs as pafs
import pytest

from giellm_ray import io
from giellm_ray.config import load_config
from giellm_ray.train.checkpoints import (
    check_trusted,
    checkpoint_dirs,
    is_complete,
    newest_complete,
    rank_files,
    remove_orphans,
    stage_for_rank,
    staging_root,
)
from giellm_ray.train.config import TrainConfig
from giellm_ray.train.driver import run_training

ZERO2 = [
    "ds/mp_rank_00_model_states.pt",
    "ds/zero_pp_rank_0_mp_rank_00_optim_states.pt",
    "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt",
    "ds/bf16_zero_pp_rank_10_mp_rank_00_optim_states.pt",
    "latest",
    "zero_to_fp32.py",
    "train_state.json",
    "_complete/rank-0.json",
]
ZERO3 = [
    "ds/zero_pp_rank_0_mp_rank_00_model_states.pt",
    "ds/zero_pp_rank_0_mp_rank_00_optim_states.pt",
    "ds/zero_pp_rank_1_mp_rank_00_model_states.pt",
    "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt",
    "train_state.json",
]


def _checkpoint(
    root, name: str, step: int | None, writers: int = 2, markers=(0, 1), weights_only: bool = False
) -> str:
    """A checkpoint directory as the workers leave it: shards, state, per-rank markers."""
    path = root / name
    (path / "ds").mkdir(parents=True)
    for r in range(writers):
        (path / "ds" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"x" * 10)
    if step is not None:
        (path / "train_state.json").write_text(
            json.dumps(
                {
                    "epoch": 1,
                    "batch": 0,
                    "step": step,
                    "writers": writers,
                    "weights_only": weights_only,
                }
            )
        )
    (path / "_complete").mkdir()
    for r in markers:
        (path / "_complete" / f"rank-{r}.json").write_text("{}")
    return str(path)


def test_rank_files_zero2_and_zero3():
    shared, own = rank_files(ZERO2, 1)
    assert own == ["ds/zero_pp_rank_1_mp_rank_00_optim_states.pt"]  # not rank 10's
    assert shared == [
        "ds/mp_rank_00_model_states.pt",
        "latest",
        "zero_to_fp32.py",
        "train_state.json",
    ]  # the markers are not needed to resume
    assert rank_files(ZERO2, 10)[1] == ["ds/bf16_zero_pp_rank_10_mp_rank_00_optim_states.pt"]
    shared, own = rank_files(ZERO3, 0)
    assert own == ZERO3[:2] and shared == ["train_state.json"]


def test_newest_complete_skips_partial_and_prefers_full_at_equal_steps(tmp_path):
    fs = pafs.LocalFileSystem()
    a = _checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-01", step=8)
    _checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-02", step=16, markers=(0,))  # rank 1 died
    _checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-03", step=None)  # no train_state.json
    _checkpoint(
        tmp_path,
        "checkpoint_2026-01-01_00-00-04",
        step=8,
        writers=1,
        markers=(0,),
        weights_only=True,
    )
    (tmp_path / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray's file, not ours
    assert len(checkpoint_dirs(fs, str(tmp_path))) == 4
    path, state = newest_complete(fs, str(tmp_path))
    assert path == a and state["step"] == 8 and not state["weights_only"]
    assert newest_complete(fs, str(tmp_path / "nothing-here")) is None


def test_remove_orphans_keeps_what_ray_keeps(tmp_path):
    fs = pafs.LocalFileSystem()
    kept = _checkpoint(tmp_path, "checkpoint_b", step=16)
    orphan = _checkpoint(tmp_path, "checkpoint_a", step=8)
    partial = _checkpoint(tmp_path, "checkpoint_c", step=None)
    removed = remove_orphans(fs, str(tmp_path), {kept + "/"})
    assert sorted(removed) == [orphan, partial]
    assert checkpoint_dirs(fs, str(tmp_path)) == [kept] and is_complete(fs, kept)


def test_check_trusted_resolves_aliases(tmp_path):
    runs = tmp_path / "runs"
    (runs / "a" / "checkpoint_1").mkdir(parents=True)
    check_trusted(str(runs / "a" / "checkpoint_1"), str(runs), trust=False)
    check_trusted(str(runs / "x" / ".." / "a" / "checkpoint_1"), str(runs / "."), trust=False)
    for outside in [tmp_path / "elsewhere", runs / ".." / "runs-evil" / "c", tmp_path]:
        with pytest.raises(ValueError, match="a checkpoint is code.*trust_checkpoint: true"):
            check_trusted(str(outside), str(runs), trust=False)
    link = runs / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ValueError, match="outside this run's storage"):
        check_trusted(str(link / "c"), str(runs), trust=False)  # a symlink out of storage
    check_trusted(str(tmp_path / "elsewhere"), str(runs), trust=True)
    check_trusted("s3://b/runs/a/checkpoint_1", "s3://b/runs", trust=False)
    for outside in ["s3://b/runs-evil/x", "s3://b/runs/../secret/x", "s3://other/runs/x"]:
        with pytest.raises(ValueError, match="outside"):
            check_trusted(outside, "s3://b/runs/", trust=False)


def test_untrusted_resume_from_is_refused_before_any_work(tmp_path):
    cfg = load_config(
        TrainConfig,
        None,
        [
            "data.train=sample:train",
            f"storage_path={tmp_path / 'runs'}",
            f"resume_from={tmp_path / 'downloaded' / 'checkpoint_x'}",
        ],
    )
    with pytest.raises(ValueError, match="a checkpoint is code") as err:
        run_training(cfg)
    assert "trust_checkpoint" in str(err.value)
    assert not (tmp_path / "runs").exists()  # nothing was built or started
    trusted = cfg.model_copy(update={"trust_checkpoint": True})
    with pytest.raises(ValueError, match="not a training checkpoint"):
        run_training(trusted)  # trusted, but there is no checkpoint there: said before Ray


def test_staging_root(tmp_path):
    assert os.path.isdir(staging_root("auto"))  # NVMe when mounted, else the temp dir
    explicit = tmp_path / "nvme" / "scratch"
    assert staging_root(str(explicit)) == str(explicit) and explicit.is_dir()


def test_stage_for_rank_fetches_shared_once_and_only_its_shard(s3_server, tmp_path):
    for name in ZERO2:
        io.write_bytes(f"s3://giellm-test/stage/ckpt/{name}", name.encode())
    fs, path = io.resolve_native("s3://giellm-test/stage/ckpt")
    dest = tmp_path / "restore"
    stage_for_rank(fs, path, str(dest), rank=0)
    got = sorted(
        str(p.relative_to(dest))
        for p in dest.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    assert got == sorted(
        [
            "ds/mp_rank_00_model_states.pt",
            "latest",
            "zero_to_fp32.py",
            "train_state.json",
            "ds/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        ]
    )
    # Rank 1 on the same node: the shared files are there already (.shared-done), so only its
    # shard comes down; a shared file changed in storage meanwhile is therefore not re-read.
    io.write_bytes("s3://giellm-test/stage/ckpt/latest", b"changed")
    stage_for_rank(fs, path, str(dest), rank=1)
    assert (dest / "latest").read_bytes() == b"latest"
    assert (dest / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
