"""The output format as a byte automaton whose spans are substrings of one row's text.

``<TL>IW`` then items ``:LABEL;SPAN`` (or ``:HEAD;REL;TAIL``), or the none marker ``:無い;`` alone
(or nothing, for tasks without a marker), then EOS. The literal parts are byte tries built once per
task (:class:`TaskGrammar`); the span part is the set of byte positions in the text where the
span read so far ends (:class:`RowGrammar`), so checking one more byte costs O(occurrences).
A state is a frozenset of NFA states (a ``:`` after an item may start a label or a relation head).

Legend of the NFA state tuples (the first field names the kind; tries are :class:`ByteTrie`
node ids)::

    ("Z",)                  before the prefix: one leading space (SentencePiece), then ("P", 0)
    ("P", node)             in the prefix trie of ``<TL>IW`` strings (tag "end": prefix done)
    ("B",)                  prefix done, no item yet: ``:`` starts the first item; EOS if the
                            task has no none marker
    ("L", which, node)      in a ``:LABEL;`` trie: which=0 first item (labels + the none
                            marker), which=1 later items (labels only); tag "wl" -> a W span,
                            tag "none" -> ("D",)
    ("S", kind, ends, nb)   in a span of the text: kind "W" (an item's span, or a relation's
                            tail) or "H" (a relation's head: no ``:``, not a label name); ends =
                            text byte positions just after where the span read so far may end
                            (None: no byte yet); nb = bytes read (at most ``max_span_bytes``)
    ("R", node)             after a head: in the ``;REL;`` trie (tag "rel" -> a W span, the tail)
    ("A",)                  an item is complete: ``:`` starts the next one, or EOS
    ("D",)                  after the none marker ``:無い;``: EOS only

Spans are non-empty, start and end on a character boundary, hold at most ``max_span_bytes``, and
never contain ``;`` (heads also no ``:``, and a head may not equal a label): with those rules
``parse`` reads back exactly the items written, since it only splits at ``:LABEL;`` / ``:HEAD;REL;``.

``need(state)`` bounds the tokens still needed to reach an accepting state: literal parts cost
their shortest tokenization (``cost``, computed by the factory over the vocabulary), span parts
their bytes (every byte has a single-byte token in byte-level vocabularies; SentencePiece pieces
are whole characters). It lets the constraint close the output before a token budget runs out.

Over 300 lines on purpose: the state encoding, the transitions that read it and ``need`` must
change together (a state tuple's shape is read in all three), so they stay in one module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import compress

from giellm_ray.formats.tasks import TaskSpec

COLON, SEMI = ord(":"), ord(";")
INF = 1 << 30
State = tuple
States = frozenset
_LEAD = bytes(int(b & 0xC0 != 0x80) for b in range(256))  # translate: 1 at a character start
# Per character length L (UTF-8: 1-4 bytes): the bytes to the next boundary at each of its bytes.
_TO_BOUNDARY = {size: bytes([0, *range(size - 1, 0, -1)]) for size in range(1, 5)}


class ByteTrie:
    """Literal strings as a byte trie: node 0 is the root; terminal nodes carry a tag."""

    def __init__(self, words: Iterable[tuple[bytes, str]]) -> None:
        self.children: list[dict[int, int]] = [{}]
        self.tag: list[str | None] = [None]
        self.words = list(words)
        for word, tag in self.words:
            node = 0
            for b in word:
                nxt = self.children[node].get(b)
                if nxt is None:
                    nxt = len(self.children)
                    self.children.append({})
                    self.tag.append(None)
                    self.children[node][b] = nxt
                node = nxt
            self.tag[node] = tag

    def rest(self, tag: str, cost: Callable[[bytes], int] = len) -> list[int]:
        """Per node: fewest tokens (``cost`` of the rest; default bytes) to a ``tag`` terminal."""
        out = [INF] * len(self.children)
        for word, word_tag in self.words:
            if word_tag != tag:
                continue
            node = 0
            for depth in range(len(word) + 1):
                out[node] = min(out[node], cost(word[depth:]))
                if depth < len(word):
                    node = self.children[node][word[depth]]
        return out


class TaskGrammar:
    """Per-task literal tries: ``<TL>IW``, ``:LABEL;`` (with/without the none marker), ``;REL;``."""

    def __init__(self, task: TaskSpec, cost: Callable[[bytes], int] = len) -> None:
        self.task = task
        iw = task.instruction.encode("utf-8")
        self.prefix = ByteTrie((f"<{t}>".encode() + iw, "end") for t in task.tl_labels)
        wl = [(f":{lab};".encode(), "wl") for lab in task.wl_labels]
        none = [(f":{task.none_marker};".encode(), "none")] if task.none_marker else []
        self.labels = (ByteTrie(wl + none), ByteTrie(wl))  # from "begin", from "after an item"
        self.relations = ByteTrie((f";{r};".encode(), "rel") for r in task.relation_labels)
        self.has_relations = bool(task.relation_labels)
        self.prefix_rest = self.prefix.rest("end", cost)
        self.label_rest = tuple((t.rest("wl", cost), t.rest("none", cost)) for t in self.labels)
        self.rel_rest = self.relations.rest("rel", cost)
        names = [*task.wl_labels, *([task.none_marker] if task.none_marker else [])]
        self.head_forbidden = {n.encode("utf-8") for n in names}


class RowGrammar:
    """The automaton for one row: :class:`TaskGrammar` plus the row's text bytes."""

    def __init__(
        self, grammar: TaskGrammar, text: str, max_span_bytes: int = 256, lead_space: bool = False
    ) -> None:
        self.g = grammar
        self.text = tb = text.encode("utf-8")
        self.n = n = len(tb)
        self.cap = max_span_bytes
        # C-speed passes over the bytes, then one loop over characters (a row's setup is paid
        # once per output, up front: it was a third of the constraint's work on a tiny model).
        lead = tb.translate(_LEAD) + b"\x01"  # 1 where a character starts (or the text ends)
        self.boundary = lead
        self.char_starts = starts = tuple(compress(range(n), lead))  # span starts, ascending
        pairs = tuple(zip(starts, (*starts[1:], n), strict=True))  # each character's bytes
        # Bytes from each position to the next character boundary (0 at a boundary), as one
        # bytes object: a character of L bytes contributes 0, L-1, ..., 1.
        self.to_boundary = b"".join([_TO_BOUNDARY[q - p] for p, q in pairs]) + b"\x00"
        first: dict[int, list[int]] = {}
        sizes = set()
        for p, q in pairs:  # () for ""
            b = tb[p]
            if b != SEMI:
                hit = first.get(b)
                if hit is None:
                    first[b] = [p + 1]
                else:
                    hit.append(p + 1)
                sizes.add(q - p)
        self.min_char = min(sizes, default=INF)
        self._memo: dict[tuple[States, int], States | None] = {}
        self.first_w = {b: tuple(v) for b, v in first.items()}
        self.first_h = {b: v for b, v in self.first_w.items() if b != COLON}
        # SentencePiece decoders drop the first token's leading space ("▁<社会>" reads "<社会>").
        self.start = self.closure([("P", 0)] + ([("Z",)] if lead_space else []))

    # -- transitions ---------------------------------------------------------------------------
    def closure(self, states: Iterable[State]) -> States:
        """``states`` plus what they reach without a byte; literal states at childless trie
        nodes are dropped once closed (they allow no byte), so equal futures share one key."""
        out: set[State] = set()
        g = self.g
        for s in states:
            kind = s[0]
            if kind == "P":
                if g.prefix.tag[s[1]] == "end":
                    out.add(("B",))
                if not g.prefix.children[s[1]]:
                    continue
            elif kind == "L":
                tag = g.labels[s[1]].tag[s[2]]
                if tag == "wl":
                    out.add(("S", "W", None, 0))
                elif tag == "none":
                    out.add(("D",))
                if not g.labels[s[1]].children[s[2]]:
                    continue
            elif kind == "R":
                if g.relations.tag[s[1]] == "rel":
                    out.add(("S", "W", None, 0))
                if not g.relations.children[s[1]]:
                    continue
            out.add(s)
            if kind != "S":
                continue
            if s[3] and self.boundary[s[2][0]]:
                if s[1] == "W":
                    out.add(("A",))
                elif self.text[s[2][0] - s[3] : s[2][0]] not in g.head_forbidden:
                    out.add(("R", 0))
        return frozenset(out)

    def _step_one(self, s: State, b: int) -> list[State]:
        kind, g = s[0], self.g
        if kind == "S":
            _, span_kind, pos, nb = s
            if pos is None:
                new = (self.first_w if span_kind == "W" else self.first_h).get(b)
            elif nb >= self.cap or b == SEMI or (b == COLON and span_kind == "H"):
                return []
            else:
                tb, n = self.text, self.n
                new = tuple(p + 1 for p in pos if p < n and tb[p] == b)
            return [("S", span_kind, new, nb + 1)] if new else []
        if kind == "P":
            c = g.prefix.children[s[1]].get(b)
            return [("P", c)] if c is not None else []
        if kind == "Z":
            return [("P", 0)] if b == 0x20 else []
        if kind in ("B", "A"):
            if b != COLON:
                return []
            which = 0 if kind == "B" else 1
            c = g.labels[which].children[0].get(b)
            out = [("L", which, c)] if c is not None else []
            if g.has_relations:
                out.append(("S", "H", None, 0))
            return out
        if kind == "L":
            c = g.labels[s[1]].children[s[2]].get(b)
            return [("L", s[1], c)] if c is not None else []
        if kind == "R":
            c = g.relations.children[s[1]].get(b)
            return [("R", c)] if c is not None else []
        return []  # "D": only EOS

    def step(self, states: States, b: int) -> States | None:
        """The state set after byte ``b``, or ``None`` if the byte is not allowed (memoized)."""
        key = (states, b)
        try:
            return self._memo[key]
        except KeyError:
            pass
        nxt = [t for s in states for t in self._step_one(s, b)]
        out = self._memo[key] = self.closure(nxt) if nxt else None
        return out

    def next_bytes(self, states: States) -> set[int]:
        """A superset of the bytes allowed next."""
        out: set[int] = set()
        g = self.g
        for s in states:
            kind = s[0]
            if kind == "S":
                if s[2] is None:
                    out.update(self.first_w if s[1] == "W" else self.first_h)
                else:
                    tb, n = self.text, self.n
                    out.update(tb[p] for p in s[2] if p < n)
            elif kind == "P":
                out.update(g.prefix.children[s[1]])
            elif kind in ("B", "A"):
                out.add(COLON)
            elif kind == "Z":
                out.add(0x20)
            elif kind == "L":
                out.update(g.labels[s[1]].children[s[2]])
            elif kind == "R":
                out.update(g.relations.children[s[1]])
        return out

    @staticmethod
    def span_state(states: States) -> State | None:
        """The ``S`` state of a set that is one span plus, at most, the ``A`` / ``R`` it closes
        into (so a byte other than ``:`` / ``;`` can only continue the span); else ``None``."""
        span = None
        for s in states:
            kind = s[0]
            if kind == "S":
                if span is not None:
                    return None
                span = s
            elif kind != "A" and s != ("R", 0):
                return None
        return span

    def span_next(self, span_kind: str, ends: tuple[int, ...], nb: int) -> tuple[States, int]:
        """The state (and its :meth:`need`) after a span of ``nb`` bytes ending at ``ends``."""
        s2 = ("S", span_kind, ends, nb)
        if span_kind != "W":
            nxt = self.closure((s2,))
            return nxt, self.need(nxt)
        if self.boundary[ends[0]]:  # a whole character: the item may end here (need 0)
            return frozenset((s2, ("A",))), 0
        return frozenset((s2,)), self.to_boundary[ends[0]]

    def span_moves(self, states: States, wanted: dict) -> list[tuple[int, States, int]] | None:
        """Inside one span (its ``S`` state plus, at most, the ``A`` / ``R`` it closes into):
        ``(byte, next state, need)`` for each text byte in ``wanted`` other than ``:`` / ``;``,
        as :meth:`step` and :meth:`need` give them, without the generic state-set work.
        ``None`` for any other state (use :meth:`step`)."""
        span = self.span_state(states)
        if span is None:
            return None
        _, span_kind, pos, nb = span
        if pos is None:
            groups = self.first_w if span_kind == "W" else self.first_h
        elif nb >= self.cap:
            return []
        else:
            tb, n = self.text, self.n
            groups = {}
            for p in pos:
                if p < n:
                    g = groups.get(tb[p])
                    if g is None:
                        groups[tb[p]] = [p + 1]
                    else:
                        g.append(p + 1)
        out = []
        for b, after in groups.items():
            if b not in wanted or b in (COLON, SEMI):
                continue
            out.append((b, *self.span_next(span_kind, tuple(after), nb + 1)))
        return out

    def accepting(self, states: States) -> bool:
        none_ok = self.g.task.none_marker is None
        return any(s[0] in ("A", "D") or (s[0] == "B" and none_ok) for s in states)

    # -- budget --------------------------------------------------------------------------------
    def _need_one(self, s: State) -> int:
        g, mc = self.g, self.min_char
        kind = s[0]
        rel_min = g.rel_rest[0] + mc
        if kind in ("A", "D"):
            return 0
        if kind == "Z":
            return INF
        if kind == "B":
            return self._need_items(0)
        if kind == "P":
            return g.prefix_rest[s[1]] + self._need_items(0)
        if kind == "L":
            wl_rest, none_rest = g.label_rest[s[1]]
            return min(wl_rest[s[2]] + mc, none_rest[s[2]])
        if kind == "R":
            return g.rel_rest[s[1]] + mc
        _, span_kind, pos, nb = s
        if pos is None:
            span = mc
        else:
            span = self.to_boundary[pos[0]]
            span = span if (span or nb) else mc
        return span if span_kind == "W" else span + rel_min

    def _need_items(self, which: int) -> int:
        g = self.g
        if g.task.none_marker is None:
            return 0
        wl_rest, none_rest = g.label_rest[which]
        best = min(wl_rest[0] + self.min_char, none_rest[0])
        if g.has_relations:
            best = min(best, 1 + 2 * self.min_char + g.rel_rest[0])
        return best

    def need(self, states: States) -> int:
        """An upper bound on the tokens from ``states`` to an accepting state (INF: none)."""
        return min((self._need_one(s) for s in states), default=INF)
