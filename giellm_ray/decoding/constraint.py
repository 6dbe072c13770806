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

from giellm_ray.decoding.grammar import COLON, INF, SEMI, RowGrammar, States, TaskGrammar
from giellm_ray.decoding.vocab import (
    TrieNode,
    build_token_trie,
    drops_leading_space,
    token_bytes,
)
from giellm_ray.formats.tasks import TaskRegistry, TaskSpec


class _Entry:
    """What one automaton state allows: token ids sorted by the tokens still needed after them,
    the state each leads to, and ready answers for the common case of a loose budget."""

    __slots__ = ("needs", "ids", "nexts", "accepting", "loose", "tight")

    def __init__(self, found: list[tuple[int, int, States]], eos_id: int, accepting: bool) -> None:
        found.sort(key=lambda f: (f[0], f[1]))
        self.needs = tuple(n for n, _, _ in found)  # a tuple: left untracked by the GC
        self.ids = tuple(t for _, t, _ in found)
        # Next states; an ``("S", "W", ends, bytes)`` tuple stands for its state: most tokens of
        # a span state are never taken, and each built state is a frozenset the GC would track.
        self.nexts = {t: st for _, t, st in found}
        self.accepting = accepting
        # Allowed ids when every token still fits (``needs[-1] <= left - 2``): one shared tuple,
        # so the engine's mask cache sees the same key each time this state comes back.
        self.loose = self.ids + ((eos_id,) if accepting else ())
        self.tight: dict[int, tuple[int, ...]] = {}

    def allowed(self, left: int, eos_id: int) -> tuple[int, ...]:
        if not self.needs or self.needs[-1] <= left - 2:
            return self.loose if self.loose else (eos_id,)
        out = self.tight.get(left)
        if out is None:
            # After this token `left - 1` remain: its own `need` tokens at most, then EOS.
            out = self.ids[: bisect_right(self.needs, left - 2)]
            out += (eos_id,) if self.accepting else ()
            if not out:  # budget below the shortest completion: keep to the format regardless
                out = self.ids[: bisect_right(self.needs, INF - 1)] or (eos_id,)
            self.tight[left] = out
        return out


class FormatConstraint:
    """A :class:`~giellm_ray.decoding.base.RowConstraint` for one row's output."""

    def __init__(
        self,
        grammar: RowGrammar,
        trie: TrieNode,
        table: list[bytes | None],
        eos_id: int,
        max_new_tokens: int,
        shared: dict[States, _Entry] | None = None,
        sep_trie: TrieNode | None = None,
    ) -> None:
        self.grammar = grammar
        self.trie = trie
        # The tokens holding ``:`` or ``;`` (a trie of their own), if given: then the tokens of a
        # span state are text substrings found by :meth:`_span_walk` plus a generic walk of these.
        self.sep_trie = sep_trie
        self.table = table
        self.eos_id = eos_id
        self.budget = max_new_tokens
        self.generated = 0
        self.state: States | None = grammar.start
        self._cache: dict[States, _Entry] = {}
        # Entries whose walk never read the text (literal states): shared by the task's rows.
        self._shared: dict[States, _Entry] = {} if shared is None else shared
        self._cur: _Entry | None = None  # the entry of ``self.state`` once looked up

    def _walk(self, states: States) -> tuple[list[tuple[int, int, States]], bool]:
        """Token ids that fit from ``states`` (need, id, next state) and whether the walk read
        the row's text (a span state had bytes to try)."""
        span = self.grammar.span_state(states) if self.sep_trie is not None else None
        if span is None:
            return self._trie_walk(self.trie, states)
        found = self._span_walk(span)
        found += self._trie_walk(self.sep_trie, states)[0]
        return found, True

    def _span_walk(self, span: tuple) -> list[tuple[int, int, States]]:
        """Tokens without ``:`` / ``;`` that continue ``span``: from each place it may go on in
        the text, the vocabulary trie is followed along the text's bytes (a plain loop, no state
        sets), and each token reached gets the positions it ends at. What the generic walk would
        find through the same trie paths (``span_moves`` at each node), at a fraction of the cost:
        a span start (every character of the text) is the costliest state of a row."""
        g = self.grammar
        _, span_kind, pos, nb = span
        tb, n = g.text, g.n
        room = g.cap - nb  # bytes the span may still take
        hits: dict[TrieNode, list[int]] = {}
        for q in g.char_starts if pos is None else pos:
            node = self.trie
            for r in range(q, min(n, q + room)):
                b = tb[r]
                if b in (COLON, SEMI):
                    break
                node = node.children.get(b)
                if node is None:
                    break
                if node.ids:
                    ends = hits.get(node)
                    if ends is None:
                        hits[node] = [q, r + 1]  # the start, then the end of each occurrence
                    else:
                        ends.append(r + 1)
        found: list[tuple[int, int, States]] = []
        boundary, to_boundary = g.boundary, g.to_boundary
        for node, ends in hits.items():
            after, nb2 = tuple(ends[1:]), nb + ends[1] - ends[0]
            if span_kind == "W":  # the state is built if the token is taken (see `advance`)
                nxt, need = (
                    ("S", "W", after, nb2),
                    0 if boundary[after[0]] else to_boundary[after[0]],
                )
            else:
                nxt, need = g.span_next(span_kind, after, nb2)
            found.extend((need, t, nxt) for t in node.ids)
        return found

    def _trie_walk(
        self, trie: TrieNode, states: States
    ) -> tuple[list[tuple[int, int, States]], bool]:
        """The generic walk: the trie from its root, each node with the automaton's state."""
        g = self.grammar
        found: list[tuple[int, int, States]] = []
        reads_text = False
        stack = [(trie, states)]
        while stack:
            node, st = stack.pop()
            children = node.children
            if not reads_text and any(s[0] == "S" for s in st):
                reads_text = True
            moves = g.span_moves(st, children)
            if moves is not None:  # inside a span: text bytes in bulk, ':' / ';' via `step`
                reads_text = True
                for b, nxt, need in moves:
                    child = children[b]
                    if child.ids:
                        found.extend((need, t, nxt) for t in child.ids)
                    if child.children:
                        stack.append((child, nxt))
                edges = [(b, children[b]) for b in (COLON, SEMI) if b in children]
            else:
                bytes_ok = g.next_bytes(st)
                if len(bytes_ok) > len(children):
                    edges = [(b, c) for b, c in children.items() if b in bytes_ok]
                else:
                    edges = [(b, children[b]) for b in bytes_ok if b in children]
            succ = [(child, g.step(st, b)) for b, child in edges]
            for child, nxt in succ:
                if nxt is None:
                    continue
                if child.ids:
                    need = g.need(nxt)
                    found.extend((need, t, nxt) for t in child.ids)
                if child.children:
                    stack.append((child, nxt))
        return found, reads_text

    def _entry(self) -> _Entry:
        entry = self._cur
        if entry is not None:
            return entry
        state = self.state
        entry = self._cache.get(state) or self._shared.get(state)
        if entry is None:
            found, reads_text = self._walk(state)
            entry = _Entry(found, self.eos_id, self.grammar.accepting(state))
            (self._cache if reads_text else self._shared)[state] = entry
        self._cur = entry
        return entry

    def allowed_tokens(self) -> tuple[int, ...]:
        if self.state is None:  # an unexpected token was forced in: only stopping makes sense
            return (self.eos_id,)
        return self._entry().allowed(self.budget - self.generated, self.eos_id)

    def advance(self, token_id: int) -> None:
        self.generated += 1
        if token_id == self.eos_id or self.state is None:
            return
        entry = self._cur
        nxt = entry.nexts.get(token_id) if entry is not None else None
        if nxt.__class__ is tuple:  # a span state left unbuilt by `_span_walk`
            nxt = self.grammar.span_next(nxt[1], nxt[2], nxt[3])[0]
        if nxt is None:  # not looked up yet, or a token the state forbids: step its bytes
            data = self.table[token_id] if 0 <= token_id < len(self.table) else None
            nxt = self.state
            for b in data or b"\xff":  # a special token cannot continue the format
                nxt = self.grammar.step(nxt, b)
                if nxt is None:
                    break
        self.state = nxt
        self._cur = None

    def tokens_needed(self) -> int:
        """An upper bound on the tokens (EOS included) that finish the output from here."""
        return INF if self.state is None else self.grammar.need(self.state) + 1

    def is_done(self) -> bool:
        if self.state is None:
            return True
        entry = self._entry()
        if not entry.accepting:
            return False
        return not entry.needs or entry.needs[0] > self.budget - self.generated - 2


class FormatConstraintFactory:
    """Per-tokenizer token bytes and trie; per-task literal tries; one constraint per row."""

    def __init__(
        self, tokenizer, registry: TaskRegistry | None = None, max_span_bytes: int = 256
    ) -> None:
        self.table = token_bytes(tokenizer)
        self.trie = build_token_trie(self.table)
        self.sep_trie = build_token_trie(
            [d if d and (COLON in d or SEMI in d) else None for d in self.table]
        )
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no EOS token; constrained decoding needs one")
        self.eos_id = int(eos)
        self.max_span_bytes = max_span_bytes
        self.lead_space = drops_leading_space(tokenizer, self.table)
        self._tasks: dict[TaskSpec, TaskGrammar] = {}
        self._shared: dict[tuple[TaskSpec, int], dict[States, _Entry]] = {}
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

    def for_row(
        self, text: str, task: TaskSpec, max_new_tokens: int | None = None
    ) -> FormatConstraint:
        """A fresh constraint; ``max_new_tokens`` (default the task's) must match the engine's."""
        budget = task.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        row = RowGrammar(self._grammar(task), text or "", self.max_span_bytes, self.lead_space)
        # Literal-state entries depend on the task and, through ``need``, the text's shortest
        # character only; rows that agree on both share them.
        shared = self._shared.setdefault((task, row.min_char), {})
        return FormatConstraint(
            row, self.trie, self.table, self.eos_id, budget, shared, self.sep_trie
        )
