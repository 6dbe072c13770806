"""GIELLM's unified input/output format: task registry, rendering, parsing, grounding.

Pure Python (no torch, no ray) so every stage, from data building to serving, shares it.
"""

from giellm_ray.formats.grounding import ground_items, span_in_text
from giellm_ray.formats.parser import ParseResult, parse, parse_cut
from giellm_ray.formats.render import (
    build_prompt,
    build_target,
    cp932_key,
    make_item,
    normalize_items,
    render,
)
from giellm_ray.formats.tasks import (
    DEFAULT_REGISTRY,
    DEFAULT_TASKS,
    TaskRegistry,
    TaskSpec,
    learn_task,
)

__all__ = [
    "DEFAULT_REGISTRY",
    "DEFAULT_TASKS",
    "ParseResult",
    "TaskRegistry",
    "TaskSpec",
    "build_prompt",
    "build_target",
    "cp932_key",
    "ground_items",
    "learn_task",
    "make_item",
    "normalize_items",
    "parse",
    "parse_cut",
    "render",
    "span_in_text",
]
