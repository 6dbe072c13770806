"""Grammar-constrained decoding: outputs that always parse, with real labels and text spans.

``build_constraint_factory(tokenizer, registry)`` returns a factory whose ``for_row(text, task)``
gives the engine a :class:`~giellm_ray.decoding.base.RowConstraint` that only lets the model write
``<TL>IW`` + items whose labels are in the task inventory and whose spans are substrings of
``text`` (or the none marker), then EOS, within the token budget.

Why a byte automaton of our own and not a grammar library: "a span is a substring of this text"
is a per-row language that libraries compile per row (xgrammar: 7.5 ms a row) and none bounds the
token budget; here a row costs one pass over its text. Measurements: ``docs/decisions/
constrained-decoding-automaton.md``.
"""

from __future__ import annotations

from giellm_ray.decoding.constraint import FormatConstraint, FormatConstraintFactory
from giellm_ray.formats.tasks import TaskRegistry


def build_constraint_factory(
    tokenizer, registry: TaskRegistry | None = None, max_span_bytes: int = 256
) -> FormatConstraintFactory:
    """A factory of per-row format constraints for ``tokenizer`` (tables built once, here)."""
    return FormatConstraintFactory(tokenizer, registry, max_span_bytes)


__all__ = ["FormatConstraint", "FormatConstraintFactory", "build_constraint_factory"]
