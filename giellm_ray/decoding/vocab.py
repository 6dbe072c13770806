"""What bytes each token of a tokenizer writes, and a byte trie over the whole vocabulary.

Built once per tokenizer (by the constraint factory) so a decoding step never decodes a token.
Byte-level BPE tokenizers (GPT-2 style, the tiny one) spell bytes with the GPT-2 byte-to-unicode
alphabet, so a token can hold part of a UTF-8 character; SentencePiece-style tokenizers write ``▁``
for a space and ``<0xHH>`` for byte-fallback pieces. Special tokens get ``None`` (never generated
inside the output); non-special added tokens write their text. :func:`check_token_bytes` tells
whether the table reproduces ``tokenizer.decode`` on sample strings (used by tests).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode`` (printable bytes map to themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


def _mentions(obj: object, type_name: str) -> bool:
    if isinstance(obj, dict):
        return obj.get("type") == type_name or any(_mentions(v, type_name) for v in obj.values())
    if isinstance(obj, list):
        return any(_mentions(v, type_name) for v in obj)
    return False


def is_byte_level(tokenizer) -> bool:
    """Whether the tokenizer's decoder is GPT-2 byte-level (fast tokenizers only)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    return _mentions(json.loads(backend.to_str()).get("decoder"), "ByteLevel")


def token_bytes(tokenizer) -> list[bytes | None]:
    """Per token id: the bytes it adds to the output, or ``None`` for special/empty tokens."""
    size = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    special = set(tokenizer.all_special_ids)
    added = {i: t for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    byte_level = is_byte_level(tokenizer)
    decoder = _byte_decoder() if byte_level else {}
    out: list[bytes | None] = []
    for i, piece in enumerate(pieces):
        value: bytes | None
        if piece is None or i in special or (i in added and added[i].special):
            value = None
        elif i in added:
            value = added[i].content.encode("utf-8")
        elif byte_level:
            try:
                value = bytes(decoder[c] for c in piece)
            except KeyError:  # not in the byte alphabet: trust the tokenizer's own decode
                value = tokenizer.decode([i]).encode("utf-8")
        else:
            m = _BYTE_PIECE.fullmatch(piece)
            value = bytes([int(m.group(1), 16)]) if m else piece.replace("▁", " ").encode("utf-8")
        out.append(value or None)
    return out


def drops_leading_space(tokenizer, table: list[bytes | None]) -> bool:
    """Whether ``decode`` drops the first token's leading space (SentencePiece ``▁`` prefix)."""
    for token_id, data in enumerate(table):
        if data and len(data) > 1 and data[:1] == b" " and data[1:2] not in (b" ", b"\t", b"\n"):
            return not tokenizer.decode([token_id]).startswith(" ")
    return False


def check_token_bytes(tokenizer, table: list[bytes | None], samples: Iterable[str]) -> list[str]:
    """Samples whose joined token bytes differ from ``tokenizer.decode`` (``<unk>`` ones skipped)."""
    bad = []
    special = set(tokenizer.all_special_ids)
    for s in samples:
        ids = tokenizer.encode(s, add_special_tokens=False)
        if special.intersection(ids):  # <unk>: the sample cannot be spelled at all
            continue
        joined = b"".join(table[i] or b"" for i in ids).decode("utf-8", "replace")
        if joined.lstrip(" ") != tokenizer.decode(ids).lstrip(" "):
            bad.append(s)
    return bad


class TrieNode:
    """A node of the vocabulary trie: children by next byte, and the token ids ending here."""

    __slots__ = ("children", "ids")

    def __init__(self) -> None:
        self.children: dict[int, TrieNode] = {}
        self.ids: list[int] = []


def build_token_trie(table: list[bytes | None]) -> TrieNode:
    """A byte trie holding every token id whose bytes are known."""
    root = TrieNode()
    for token_id, data in enumerate(table):
        if not data:
            continue
        node = root
        for b in data:
            nxt = node.children.get(b)
            if nxt is None:
                nxt = node.children[b] = TrieNode()
            node = nxt
        node.ids.append(token_id)
    return root
