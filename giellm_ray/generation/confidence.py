"""Confidence scores: how sure the model was of each extracted item and of the TL label.

An engine asked for scores (``GenerationRequest.scores``) returns the generated tokens and the
log-probability of each under the format constraint (the model's distribution renormalised over
the tokens the constraint allowed at that step). :func:`score_output` maps the tokens onto the
character ranges of the output text and aggregates per range:

- the TL label: ``<LABEL>`` at the start of the output;
- each item: its whole segment ``:LABEL;SPAN`` (``:HEAD;RELATION;TAIL`` for relations), the
  ``:`` that chose to write another item, the label and the span.

A token belongs to every range it overlaps by at least one byte, so a byte-level BPE token that
carries half of a multi-byte character counts for the item holding that character, and a token
that straddles two items counts for both.

The aggregate is the **product** of the tokens' probabilities, ``exp(sum ln p)``: the probability
the model gave to writing exactly this item at that point of its output, under the constraint.

- It is a probability of an event, so a score threshold and a calibration table read as "the
  model gave this item p": a calibrated model's items at 0.8 are right ~80% of the time.
- Tokens the constraint forces (one allowed id: p = 1) leave it unchanged. Under the constraint
  many tokens are forced (the rest of a label once its first token is chosen, the ``;`` after
  it, the ``>`` of the TL label), and how many depends on the tokenizer and the label's length.
  A mean of log-probabilities (the geometric-mean probability) counts them as certain decisions
  and is pulled towards 1 by them: on the random-init tiny model one item (``:施設名;I``, six
  tokens, three of them chosen) scored 0.44 by the mean and 0.0001 by the product.
- The minimum also ignores forced tokens but is decided by one token: two unsure decisions
  (the label and the span's end) score as one.

Its cost: a span with more real choices scores lower than a shorter one the model was as sure
of per token (0.99 per token over 10 tokens is 0.90): that is compounded uncertainty, not a bias
to correct. An item's segment starts with the ``:`` whose probability is the model's choice to
write another item rather than end.

Tokens to text: the fast path rebuilds each token's bytes from its vocabulary piece (byte-level
BPE: the GPT-2 byte alphabet; SentencePiece: ``▁`` is a space, ``<0xNN>`` one byte; added tokens
their content; special tokens nothing) and checks that the bytes decode to the output text
(allowing the one leading space a SentencePiece decoder strips). Where they do not, a slower exact
path decodes growing prefixes with the tokenizer itself; where even that does not reproduce the
text, the scores are ``None``. Ray- and torch-free.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from itertools import accumulate

from giellm_ray.formats.tasks import TaskSpec

_HEX_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def joint_probability(logprobs: Sequence[float]) -> float | None:
    """``exp(sum(logprobs))`` in [0, 1]; ``None`` for no tokens."""
    return _probability(sum(logprobs)) if logprobs else None


def _probability(sum_logprob: float) -> float:
    return min(1.0, max(0.0, math.exp(sum_logprob)))


def output_ranges(
    output: str, tl_label: str | None, items: Sequence[Mapping], task: TaskSpec
) -> tuple[tuple[int, int] | None, list[tuple[int, int] | None]]:
    """Character ranges in ``output`` of the TL label (``<LABEL>``) and of each parsed item's
    segment, in order; ``None`` for one that cannot be found where the format puts it."""
    tl = (0, len(tl_label) + 2) if tl_label and output.startswith(f"<{tl_label}>") else None
    ranges: list[tuple[int, int] | None] = [None] * len(items)
    if tl is None:
        return tl, ranges
    cursor = tl[1] + len(task.instruction)
    for k, it in enumerate(items):
        tail = it.get("tail")
        seg = (
            f":{it['label']};{it['span']}"
            if tail is None
            else f":{it['span']};{it['label']};{tail}"
        )
        if not output.startswith(seg, cursor):
            break  # the rest cannot be placed either
        ranges[k] = (cursor, cursor + len(seg))
        cursor += len(seg)
    return tl, ranges


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character standing for each byte."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


class TokenPieces:
    """Token ids -> positions in the output text, for one tokenizer (pieces cached per id)."""

    MODES = ("bytelevel", "sentencepiece")

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.alphabet = _byte_alphabet()
        self.special = set(getattr(tokenizer, "all_special_ids", ()) or ())
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self.added = {i: t.content for i, t in added.items() if not getattr(t, "special", False)}
        self.special |= {i for i, t in added.items() if getattr(t, "special", False)}
        self.mode: str | None = None  # the fast mode that last reproduced a text
        self._pieces: dict[str, dict[int, bytes]] = {}  # mode -> token id -> its bytes

    def _piece(self, mode: str, tid: int) -> bytes:
        """The bytes token ``tid`` writes in ``mode`` (raises KeyError where it cannot be one)."""
        if tid in self.special:
            return b""
        if tid in self.added:
            return self.added[tid].encode("utf-8")
        piece = self.tokenizer.convert_ids_to_tokens(tid)
        if mode == "bytelevel":
            return bytes(self.alphabet[c] for c in piece)  # KeyError: not a byte-level piece
        m = _HEX_BYTE.fullmatch(piece)
        return bytes([int(m.group(1), 16)]) if m else piece.replace("▁", " ").encode("utf-8")

    def _fast(self, mode: str, token_ids: Sequence[int], text: str):
        table = self._pieces.setdefault(mode, {})
        try:
            pieces = [table[t] for t in token_ids]
        except KeyError:
            try:
                for t in token_ids:
                    if t not in table:
                        table[t] = self._piece(mode, t)
            except (KeyError, TypeError):
                return None
            pieces = [table[t] for t in token_ids]
        data = b"".join(pieces)
        target = text.encode("utf-8")
        if data == target:
            shift = 0
        elif data[:1] == b" " and data[1:] == target:  # SentencePiece strips the first space
            shift = 1
        else:
            return None
        ends = list(accumulate(map(len, pieces)))
        starts = [e - len(p) for e, p in zip(ends, pieces, strict=True)]
        return starts, ends, lambda c: len(text[:c].encode("utf-8")) + shift

    def _exact(self, token_ids: Sequence[int], text: str):
        """Character positions from decoding growing prefixes (any tokenizer; O(n^2) decode)."""
        decode = self.tokenizer.decode
        if decode(list(token_ids), skip_special_tokens=True) != text:
            return None
        starts, ends, prev = [], [], 0
        for k in range(1, len(token_ids) + 1):
            end = len(decode(list(token_ids[:k]), skip_special_tokens=True).rstrip("\ufffd"))
            end = max(end, prev)
            # A token that adds no whole character (part of a multi-byte one) counts for the
            # character it helps to write.
            starts.append(prev if end > prev else min(prev, max(len(text) - 1, 0)))
            ends.append(end if end > prev else starts[-1] + 1)
            prev = end
        return starts, ends, lambda c: c

    def positions(self, token_ids: Sequence[int], text: str):
        """``(starts, ends, to_pos)``: each token's ``[start, end)`` and a function from a
        character offset of ``text`` to the same unit; ``None`` when the tokens do not spell
        ``text``."""
        order = [self.mode] if self.mode else []
        order += [m for m in self.MODES if m != self.mode]
        for mode in order:
            got = self._fast(mode, token_ids, text)
            if got is not None:
                self.mode = mode
                return got
        return self._exact(token_ids, text)


_PIECES: dict[int, tuple[object, TokenPieces]] = {}


def pieces_for(tokenizer) -> TokenPieces:
    """The (cached) :class:`TokenPieces` of ``tokenizer``."""
    hit = _PIECES.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        if len(_PIECES) >= 8:
            _PIECES.clear()
        hit = _PIECES[id(tokenizer)] = (tokenizer, TokenPieces(tokenizer))
    return hit[1]


def range_scores(
    pieces: TokenPieces,
    token_ids: Sequence[int],
    logprobs: Sequence[float],
    text: str,
    ranges: Sequence[tuple[int, int] | None],
) -> list[float | None]:
    """The joint probability of the tokens overlapping each character range of
    ``text`` (the output the tokens spell); ``None`` where it cannot be mapped."""
    if not token_ids or len(token_ids) != len(logprobs):
        return [None] * len(ranges)
    got = pieces.positions(token_ids, text)
    if got is None:
        return [None] * len(ranges)
    starts, ends, to_pos = got
    total = [0.0, *accumulate(logprobs)]
    out: list[float | None] = []
    for r in ranges:
        if r is None or r[1] <= r[0]:
            out.append(None)
            continue
        a, b = to_pos(r[0]), to_pos(r[1])
        first = bisect_right(ends, a)  # the first token ending after a
        last = bisect_left(starts, b)  # one past the last token starting before b
        n = last - first
        out.append(_probability(total[last] - total[first]) if n > 0 else None)
    return out


def score_output(
    tokenizer,
    token_ids: Sequence[int] | None,
    logprobs: Sequence[float] | None,
    output: str,
    tl_label: str | None,
    items: Sequence[Mapping],
    task: TaskSpec,
) -> tuple[float | None, list[float | None]]:
    """``(tl_score, item scores)`` of a parsed output; ``None`` where none can be given (no
    token log-probabilities, an unparsed label, tokens that do not spell ``output``)."""
    if token_ids is None or logprobs is None:
        return None, [None] * len(items)
    tl, ranges = output_ranges(output, tl_label, items, task)
    scores = range_scores(pieces_for(tokenizer), token_ids, logprobs, output, [tl, *ranges])
    return scores[0], scores[1:]
