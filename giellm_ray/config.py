"""Typed configuration: pydantic models that reject unknown keys, loaded from YAML + overrides.

Every stage (train, score, serve) defines a :class:`StrictModel` subclass with a docstring per
field. :func:`load_config` reads a YAML file (optional), applies ``--set key.sub=value`` overrides
(values parsed as YAML, so ``--set train.lr=2e-5`` is a float and ``--set a=[1,2]`` a list), and
validates. A typo is an error naming the key. :func:`dump_config` writes the resolved config
beside every output.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from giellm_ray import io
from giellm_ray.errors import UserError

T = TypeVar("T", bound="StrictModel")


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, field docstrings are descriptions."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_assignment=True
    )


class ConfigError(UserError):
    """A config file or override that cannot be used; the message says what to fix."""


def fold_renamed(data: Any, old: str, new: str) -> Any:
    """``data`` (a config mapping before validation) with the old key ``old`` read as ``new``.

    Keys are a contract, so a renamed key stays accepted. Both may be present when a file uses
    one spelling and an override the other: a null one yields to the other; two different values
    are an error. Used from a ``model_validator(mode="before")``, so ``extra="forbid"`` still
    refuses every other unknown key.
    """
    if not isinstance(data, dict) or old not in data:
        return data
    data = dict(data)
    value = data.pop(old)
    if data.get(new) is not None and value is not None and data[new] != value:
        raise ValueError(
            f"{old!r} is the old name of {new!r}; set one of them, not both "
            f"({data[new]!r} vs {value!r})"
        )
    if data.get(new) is None:
        data[new] = value
    return data


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override to a nested dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form key=value")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(cls: type[T], path: str | None = None, overrides: Iterable[str] = ()) -> T:
    """Build ``cls`` from a YAML file and ``key=value`` overrides, with errors a user can act on."""
    data: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(io.read_text(path))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping at the top, found {type(loaded).__name__}"
            )
        data = loaded or {}
    for assignment in overrides or ():
        apply_override(data, assignment)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top)"
            msg = "unknown key (typo?)" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {loc}: {msg}")
        where = path or "overrides"
        raise ConfigError(f"invalid {cls.__name__} in {where}:\n" + "\n".join(lines)) from None


def dump_config(config: BaseModel, path: str, filesystem=None) -> None:
    """Write the resolved config as YAML beside an output (local or ``s3://``).

    ``filesystem``: a ``pyarrow.fs.FileSystem`` that ``path`` lies in (e.g. the one an output was
    written through, with its own S3 endpoint); ``None`` resolves ``path`` itself.
    """
    text = yaml.safe_dump(config.model_dump(mode="json"), allow_unicode=True, sort_keys=False)
    if filesystem is None:
        io.write_text(path, text)
        return
    with filesystem.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))


def flag_overrides(pairs: Iterable[tuple[str, object]]) -> list[str]:
    """``--set``-style overrides from shortcut flags (``(dotted.key, value)``; ``None`` skipped).

    Commands turn their shortcut flags (``--model``, ``--input``, ``--port``) into overrides that
    go after the ``--set`` ones, so a flag wins and is validated like any other key.
    """
    out = []
    for key, value in pairs:
        if value is None:
            continue
        out.append(f"{key}={json.dumps(value)}")  # JSON is YAML: "null", "#" stay strings
    return out
