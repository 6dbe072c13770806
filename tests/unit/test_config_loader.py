"""Typed configs: YAML + overrides, unknown keys rejected with the key named."""

from __future__ import annotations

import pytest

from giellm_ray.config import ConfigError, StrictModel, dump_config, load_config


class Inner(StrictModel):
    lr: float = 1e-5
    """Learning rate."""
    tags: list[str] = []
    """Free tags."""


class Outer(StrictModel):
    name: str = "run"
    """Run name."""
    inner: Inner = Inner()
    """Nested section."""


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\ninner:\n  lr: 0.1\n")
    cfg = load_config(Outer, str(path), ["inner.lr=2e-5", "inner.tags=[x, y]", "name=b"])
    assert cfg.name == "b" and cfg.inner.lr == 2e-5 and cfg.inner.tags == ["x", "y"]
    dump_config(cfg, str(tmp_path / "out" / "resolved.yaml"))
    assert load_config(Outer, str(tmp_path / "out" / "resolved.yaml")) == cfg


@pytest.mark.parametrize(
    "text,overrides,message",
    [
        ("inner:\n  lrr: 1\n", [], "inner.lrr: unknown key"),
        ("", ["nmae=x"], "nmae: unknown key"),
        ("inner:\n  lr: fast\n", [], "inner.lr"),
        ("- a\n- b\n", [], "expected a mapping"),
        ("a: [\n", [], "invalid YAML"),
        ("", ["novalue"], "key=value"),
    ],
)
def test_bad_configs_are_clear_errors(tmp_path, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(Outer, str(path), overrides)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, "/nonexistent/c.yaml")
