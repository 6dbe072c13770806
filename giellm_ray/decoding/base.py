"""The contract between the generation engine and a decoding constraint.

The engine (``giellm_ray.generation.hf``) asks each row's :class:`RowConstraint` which token ids may
come next, masks every other logit, picks the next token greedily and reports it back with
``advance``. A :class:`ConstraintFactory` makes one fresh constraint per row from the row's source
text and task. Implementations live beside this file; torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from giellm_ray.formats.tasks import TaskSpec


class RowConstraint(Protocol):
    """Per-row decoding state."""

    def allowed_tokens(self) -> Sequence[int] | None:
        """Token ids allowed next (EOS among them when the output may end); ``None``: any."""

    def advance(self, token_id: int) -> None:
        """Record that ``token_id`` was generated."""

    def is_done(self) -> bool:
        """True once only EOS may follow (the engine then stops the row)."""


class ConstraintFactory(Protocol):
    """Builds a :class:`RowConstraint` for one row; holds per-tokenizer tables shared by rows."""

    def for_row(
        self, text: str, task: TaskSpec, max_new_tokens: int | None = None
    ) -> RowConstraint:
        """A fresh constraint for ``task``'s output about ``text``.

        ``max_new_tokens``: the engine's token budget for the row (default: the task's), so the
        constraint can close the output before the budget cuts it mid-item.
        """
