"""The shipped configs (train / score / serve YAML), as package data.

``jobs/configs`` is a link to this directory, so ``ray job submit --working-dir .`` and the
README's commands name ``jobs/configs/...`` while an installed wheel carries the same files here.
:func:`config_path` finds one wherever the package is installed (``giellm demo`` uses it).
"""

from __future__ import annotations

from importlib import resources


def config_path(*parts: str) -> str:
    """Path of a shipped config, e.g. ``config_path("train", "tiny-cpu.yaml")``."""
    path = resources.files(__name__).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(
            f"no shipped config {'/'.join(parts)} in {resources.files(__name__)}"
        )
    return str(path)
