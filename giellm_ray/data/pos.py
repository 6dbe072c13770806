"""Part-of-speech tagging for SCPOS with fugashi + unidic-lite (MeCab with UniDic).

:class:`PosTagger` builds its ``fugashi.Tagger`` lazily on first use and drops it when pickled
(a Tagger cannot be pickled), so one object can be shipped to Ray workers or used in a loop.
``tokens(text)`` gives :class:`Token` tuples: ``surface`` (the span written into targets, so it
can be grounded in the text), ``pos`` (UniDic ``pos1``) and ``base`` (dictionary forms used for
the lexicon lookup: ``orthBase``, then ``lemma`` without UniDic's ``-English`` loanword gloss).

UniDic versus IPADIC: UniDic tags na-adjectives (静か, 鮮やか) as 形状詞, where IPADIC says
名詞/形容動詞語幹, and it segments more finely (short unit words). The default "adjective" is
UniDic 形容詞 only (い-adjectives: 良い, 暗い); :class:`PosConfig.adj_pos` can add 形状詞
(``giellm data scpos --adj-pos 形容詞 形状詞``). Nouns are UniDic 名詞 (普通名詞, 固有名詞,
数詞, ...; 代名詞 is its own pos1 in UniDic and is not a noun here).
"""

from __future__ import annotations

from typing import NamedTuple

from pydantic import Field

from giellm_ray.config import StrictModel

# Relation-word candidates: content words only, so particles and symbols never count.
CONTENT_POS = ("名詞", "形容詞", "形状詞", "動詞", "副詞", "連体詞", "感動詞")


class PosConfig(StrictModel):
    """Which UniDic ``pos1`` tags count as nouns, adjectives and relation-word candidates."""

    noun_pos: tuple[str, ...] = ("名詞",)
    """UniDic pos1 tags for SCPOS:N (and the noun half of N&Adj)."""
    adj_pos: tuple[str, ...] = ("形容詞",)
    """UniDic pos1 tags for SCPOS:Adj; add 形状詞 to count na-adjectives (静か) as adjectives."""
    rw_pos: tuple[str, ...] = Field(default=CONTENT_POS)
    """UniDic pos1 tags a relation word (SCPOS:RW) may have; it must also be in the lexicon."""


class Token(NamedTuple):
    surface: str
    pos: str
    base: tuple[str, ...]


class PosTagger:
    """A lazily built ``fugashi.Tagger`` (unidic-lite) that survives pickling."""

    def __init__(self, tagger_args: str = "") -> None:
        self.tagger_args = tagger_args
        self._tagger = None

    def __getstate__(self) -> dict:
        return {"tagger_args": self.tagger_args, "_tagger": None}

    def _get(self):
        if self._tagger is None:
            import fugashi

            self._tagger = fugashi.Tagger(self.tagger_args)
        return self._tagger

    def tokens(self, text: str) -> list[Token]:
        out = []
        for word in self._get()(text):
            # feature_raw split by hand: ~3x faster than fugashi's namedtuple ``word.feature``
            raw = word.feature_raw
            if '"' in raw:  # a quoted field (e.g. a comma token): let fugashi parse it
                f = word.feature
                fields = [f.pos1, *[""] * 6, f.lemma or "", "", "", f.orthBase or ""]
            else:
                fields = raw.split(",")
            pos = fields[0] or "*"
            lemma = fields[7] if len(fields) > 7 else ""
            orth_base = fields[10] if len(fields) > 10 else ""
            forms = []
            for form in (orth_base, lemma.split("-", 1)[0], word.surface):
                if form and form != "*" and form not in forms:
                    forms.append(form)
            out.append(Token(word.surface, pos, tuple(forms)))
        return out
