"""Logits masks from the format constraint's allowed-token sets, cached per set.

The constraint (``giellm_ray.decoding``) answers "which token ids may come next" with a tuple
that is shared while a state recurs (the loose-budget answer of an automaton state), so a
``[vocab]`` boolean "forbidden" row per distinct tuple is built once and reused: a decode step
then stacks cached rows and does one ``masked_fill``. The HF engine applies it to its logits; the
same cache serves any engine whose logits are a ``[rows, vocab]`` tensor.
"""

from __future__ import annotations

from collections.abc import Sequence


class MaskCache:
    """``forbidden(allowed)``: a cached bool row, True where a token is not allowed."""

    def __init__(self, fallback_id: int = 0, budget_bytes: int = 1 << 28) -> None:
        # An empty allowed set would mask everything; the fallback (EOS) stays open instead.
        self.fallback_id = fallback_id
        self.budget_bytes = budget_bytes
        self._rows: dict = {}

    def forbidden(self, allowed: Sequence[int] | None, vocab: int, device):
        """The row for ``allowed`` (``None``: all allowed) on ``device`` with ``vocab`` columns."""
        import torch

        key = allowed if allowed is None or isinstance(allowed, tuple) else tuple(allowed)
        row = self._rows.get(key)
        if row is None or row.shape[0] != vocab or row.device != device:
            if len(self._rows) >= max(1024, self.budget_bytes // max(vocab, 1)):
                self._rows.clear()  # bound the cache (about 256 MiB of rows by default)
            row = torch.zeros(vocab, dtype=torch.bool, device=device)
            if key is not None:
                row.fill_(True)
                ids = list(key) or [self.fallback_id]
                row[torch.as_tensor(ids, dtype=torch.long, device=device)] = False
            self._rows[key] = row
        return row

    def apply(self, logits, allowed_per_row: Sequence[Sequence[int] | None]):
        """Mask ``logits`` (``[rows, vocab]``) in place to each row's allowed set; returns it."""
        import torch

        if all(a is None for a in allowed_per_row):
            return logits
        vocab, device = logits.shape[-1], logits.device
        forbid = torch.stack([self.forbidden(a, vocab, device) for a in allowed_per_row])
        return logits.masked_fill_(forbid, float("-inf"))
