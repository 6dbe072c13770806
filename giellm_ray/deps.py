"""Check a stage's heavy dependencies in the driver, before any Ray work, with an actionable line.

``pip install -e .`` without an extra has no torch, DeepSpeed or vLLM. Without this check
``giellm train`` would start Ray, launch its workers and let each die with
``ModuleNotFoundError``; :func:`require` raises one :class:`MissingDependency` (an ``ImportError``
the CLI prints as ``giellm: error: ...``) naming the module and the extra that installs it.
Lookups use ``importlib.util.find_spec``: nothing is imported.
"""

from __future__ import annotations

import importlib.util
import sys

# stage -> modules it needs on every worker
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "train": ("torch", "transformers", "deepspeed"),
    "score": ("torch", "transformers"),
    "serve": ("torch", "transformers"),
}
ENGINE_MODULES = {"hf": (), "vllm": ("vllm",)}
INSTALL_HINT = (
    "install the `cpu` extra on CPU machines (./install.sh, or "
    "pip install -e '.[cpu]' then see install.sh), the `gpu` extra on GPU clusters "
    "(pip install -e '.[gpu]', or the project's Docker image)"
)


class MissingDependency(ImportError):
    """A module the stage needs is not installed."""


def missing(modules: tuple[str, ...]) -> list[str]:
    """The modules of ``modules`` that cannot be imported here."""
    out = []
    for name in modules:
        if name in sys.modules:
            if sys.modules[name] is None:  # explicitly blocked
                out.append(name)
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def require(stage: str, engine: str = "hf") -> None:
    """Raise :class:`MissingDependency` when ``stage`` (with ``engine``) cannot run here."""
    needed = STAGE_MODULES[stage] + ENGINE_MODULES.get(engine, ())
    absent = missing(needed)
    if absent:
        what = f"`giellm {stage}`" + (f" with engine={engine}" if engine != "hf" else "")
        raise MissingDependency(
            f"{what} needs {', '.join(absent)}, which is not installed: {INSTALL_HINT}"
        )
