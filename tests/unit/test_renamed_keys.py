"""One name for one thing, old spellings kept: ``tasks`` (a tasks.json) in every config, with
ServeConfig's old ``tasks_file`` still read; ``giellm data scpos --datasets`` with the old
``--tasks``; both ``auto`` dtypes mean the same."""

from __future__ import annotations

import pytest

from giellm_ray.cli import build_parser
from giellm_ray.config import ConfigError, load_config
from giellm_ray.configs import config_path
from giellm_ray.generation.config import VLLMConfig
from giellm_ray.model.loader import resolve_dtype
from giellm_ray.score.config import ScoreConfig
from giellm_ray.serve.config import ServeConfig


def test_serve_tasks_key_and_its_old_name(tmp_path):
    assert load_config(ServeConfig, None, ["tasks=t.json"]).tasks == "t.json"
    assert load_config(ServeConfig, None, ["tasks_file=t.json"]).tasks == "t.json"
    assert load_config(ScoreConfig, None, ["tasks=t.json"]).tasks == "t.json"  # the same key
    old = tmp_path / "old.yaml"
    old.write_text("tasks_file: old.json\n", encoding="utf-8")
    assert load_config(ServeConfig, str(old)).tasks == "old.json"
    # a shipped file spells `tasks: null`; an override in either spelling wins over the null
    shipped = config_path("serve", "giellm.yaml")
    assert load_config(ServeConfig, shipped, ["tasks_file=x.json"]).tasks == "x.json"
    with pytest.raises(ConfigError, match="old name of 'tasks'"):
        load_config(ServeConfig, None, ["tasks=a.json", "tasks_file=b.json"])
    with pytest.raises(ConfigError, match="tasks_fil"):  # still strict about everything else
        load_config(ServeConfig, None, ["tasks_fil=a.json"])
    assert "tasks_file" not in load_config(ServeConfig, None, ["tasks_file=t.json"]).model_dump()


def test_scpos_datasets_option_and_its_old_spelling():
    parser = build_parser()
    base = [
        "data",
        "scpos",
        "--input",
        "x.csv",
        "--text-column",
        "t",
        "--label-column",
        "l",
        "--output",
        "o",
    ]
    assert parser.parse_args([*base, "--datasets", "SCPOS:N"]).datasets == ["SCPOS:N"]
    assert parser.parse_args([*base, "--tasks", "SCPOS:N", "SCPOS:Adj"]).datasets == [
        "SCPOS:N",
        "SCPOS:Adj",
    ]
    assert parser.parse_args(base).datasets is None


def test_auto_dtype_means_one_thing():
    import torch

    for device, on_gpu in (("cuda", True), ("cpu", False)):
        hf = resolve_dtype("auto", device)
        vllm = VLLMConfig(dtype="auto").engine_kwargs("auto", on_gpu=on_gpu)["dtype"]
        assert getattr(torch, vllm) == hf
