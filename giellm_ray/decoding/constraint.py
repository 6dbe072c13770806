"""Per-row format constraint: walk the vocabulary trie against the row's byte automaton.

``FormatConstraintFactory(tokenizer)`` computes every token's bytes and a byte trie of the
vocabulary once; ``for_row(text, task)`` builds a :class:`FormatConstraint` over a
:class:`~giellm_ray.decoding.grammar.RowGrammar`. ``allowed_tokens()`` walks the trie from the root
with the current automaton state, following only bytes the state accepts, so the work is the
tokens that fit (and their trie paths), not the vocabulary: inside a span that is the trie paths
along the text after each occurrence, at a label it is the few label tokens. Results are cached
per state, with the fewest bytes still needed after each token so the token budget
(``max_new_tokens``) is enforced by a bisect: a token is allowed only if the output can still be
finished, EOS included, within the budget.
"""

from __future__ import annotations

from bisect import bisect_right

from giellm_ray.decoding.grammar import INF, RowGrammar, States, TaskGrammar
from giellm_ray.decoding.vocab import (
    TrieNode,
    build_token_trie,
    drops_leading_space,
    token_bytes,
)
from giellm_ray.formats.tasks import TaskRegistry, TaskSpec


class FormatConstraint:
    """A :class:`~giellm_ray.decoding.base.RowConstraint` for one row's output."""

    def __init__(self, grammar: RowGrammar, trie: TrieNode, table: list[bytes | None],
                 eos_id: int, max_new_tokens: int) -> None:
        self.grammar = grammar
        self.trie = trie
        self.table = table
        self.eos_id = eos_id
        self.budget = max_new_tokens
        self.generated = 0
        self.state: States | None = grammar.start
        self._cache: dict[States, tuple[list[int], list[int]]] = {}

    def _walk(self, states: States) -> tuple[list[int], list[int]]:
        """Token ids that fit from ``states``, sorted by bytes still needed after them."""
        g = self.grammar
        found: list[tuple[int, int]] = []
        stack = [(self.trie, states)]
        while stack:
            node, st = stack.pop()
            bytes_ok = g.next_bytes(st)
            if bytes_ok is None or len(bytes_ok) > len(node.children):
                edges = node.children.items()
            else:
                edges = [(b, node.children[b]) for b in bytes_ok if b in node.children]
            for b, child in edges:
                nxt = g.step(st, b)
                if nxt is None:
                    continue
                if child.ids:
                    need = g.need(nxt)
                    found.extend((need, t) for t in child.ids)
                if child.children:
                    stack.append((child, nxt))
        found.sort()
        return [n for n, _ in found], [t for _, t in found]

    def _entry(self) -> tuple[list[int], list[int]]:
        entry = self._cache.get(self.state)
        if entry is None:
            entry = self._cache[self.state] = self._walk(self.state)
        return entry

    def allowed_tokens(self) -> list[int]:
        if self.state is None:  # an unexpected token was forced in: only stopping makes sense
            return [self.eos_id]
        needs, ids = self._entry()
        left = self.budget - self.generated
        eos = [self.eos_id] if self.grammar.accepting(self.state) else []
        # After this token `left - 1` remain: its own `need` bytes (one token each at worst) + EOS.
        out = ids[:bisect_right(needs, left - 2)] + eos
        if not out:  # budget below the shortest completion: keep to the format regardless
            out = ids[:bisect_right(needs, INF - 1)] or [self.eos_id]
        return out

    def advance(self, token_id: int) -> None:
        self.generated += 1
        data = self.table[token_id] if 0 <= token_id < len(self.table) else None
        if token_id == self.eos_id or self.state is None:
            return
        st: States | None = self.state
        for b in data or b"\xff":  # a special token cannot continue the format
            st = self.grammar.step(st, b)
            if st is None:
                break
        self.state = st

    def tokens_needed(self) -> int:
        """An upper bound on the tokens (EOS included) that finish the output from here."""
        return INF if self.state is None else self.grammar.need(self.state) + 1

    def is_done(self) -> bool:
        if self.state is None:
            return True
        if not self.grammar.accepting(self.state):
            return False
        needs, _ = self._entry()
        return not needs or needs[0] > self.budget - self.generated - 2


class FormatConstraintFactory:
    """Per-tokenizer token bytes and trie; per-task literal tries; one constraint per row."""

    def __init__(self, tokenizer, registry: TaskRegistry | None = None,
                 max_span_bytes: int = 256) -> None:
        self.table = token_bytes(tokenizer)
        self.trie = build_token_trie(self.table)
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no EOS token; constrained decoding needs one")
        self.eos_id = int(eos)
        self.max_span_bytes = max_span_bytes
        self.lead_space = drops_leading_space(tokenizer, self.table)
        self._tasks: dict[TaskSpec, TaskGrammar] = {}
        for task in (registry or {}).values():
            self._grammar(task)

    def _grammar(self, task: TaskSpec) -> TaskGrammar:
        g = self._tasks.get(task)
        if g is None:
            g = self._tasks[task] = TaskGrammar(task, self.min_tokens)
        return g

    def min_tokens(self, data: bytes) -> int:
        """Fewest vocabulary tokens that spell ``data`` (INF if none do)."""
        best = [INF] * len(data) + [0]
        for i in range(len(data) - 1, -1, -1):
            node = self.trie
            for j in range(i, len(data)):
                node = node.children.get(data[j])
                if node is None:
                    break
                if node.ids and best[j + 1] + 1 < best[i]:
                    best[i] = best[j + 1] + 1
        return best[0]

    def for_row(self, text: str, task: TaskSpec,
                max_new_tokens: int | None = None) -> FormatConstraint:
        """A fresh constraint; ``max_new_tokens`` (default the task's) must match the engine's."""
        budget = task.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        row = RowGrammar(self._grammar(task), text or "", self.max_span_bytes, self.lead_space)
        return FormatConstraint(row, self.trie, self.table, self.eos_id, budget)
