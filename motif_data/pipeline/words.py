"""A script-aware word splitter for datatrove's MinHash shingles and quality filters, with no model to download.

datatrove's per-language word tokenizers need spaCy/NLTK models; this one splits on Unicode word
boundaries and treats each Han, kana or Thai character as a word, since those scripts do not use spaces.
"""

from __future__ import annotations

import regex
from datatrove.utils.word_tokenizers import WordTokenizer

__all__ = ["ScriptWordTokenizer"]

_WORD = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}]|[\w\p{M}]+")
_SENT = regex.compile(r"[^.!?。！？\n]+(?:[.!?。！？]+|\n|$)")


class ScriptWordTokenizer(WordTokenizer):
    def word_tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in _SENT.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _SENT.finditer(text) if m.group().strip()]
