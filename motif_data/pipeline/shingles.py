"""Word n-gram shingles for MinHash, for a batch of documents at once in NumPy, with no Python string per word.

The sets are datatrove's: its ``simplify_text`` (default ``TextNormConfig``), then ``ScriptWordTokenizer``'s
words, then word n-grams inside each document. Splitting into words with a regex and hashing each word costs
two thirds of the signature stage, almost all of it in creating a string object per word; here every code point
is classified once through a table and the words are found and hashed in a few vectorized passes. Only the
hash of a word differs from datatrove's, which no later stage sees: they compare signatures, not shingles.
"""

from __future__ import annotations

import unicodedata
from functools import cache

import numpy as np
from datatrove.utils.text import NUMBERS_PATTERN, PUNCTUATION

from motif_data.pipeline.codepoints import UNICODE, codepoints, matching

__all__ = ["shingle_batch"]

# A code point's part in a word, as ScriptWordTokenizer's `[Han|Hiragana|Katakana|Thai] | [\w\p{M}]+` sees it
# after simplify_text: SEPARATOR ends a word (punctuation becomes a space there); WORD continues one; SCRIPT is
# a word character of a script without spaces: a word by itself where a word starts, else part of the word it
# is in (the regex's first alternative wins only at a match's start); ALONE is such a script's non-word
# character (Thai's ๏, say): always a word by itself; DROP is a nonspacing mark, which simplify_text removes.
SEPARATOR, WORD, SCRIPT, ALONE, DROP = range(5)


@cache
def _classes() -> np.ndarray:
    """The class of every code point (≈ 0.5 s, once per process)."""
    table = np.full(UNICODE, SEPARATOR, dtype=np.uint8)
    table[matching(r"[\w\p{M}]")] = WORD
    script = matching(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}]")
    table[script] = np.where(table[script] == WORD, SCRIPT, ALONE)
    # simplify_text drops marks by Python's own Unicode tables, whose version may differ from regex's
    table[[c for c in range(UNICODE) if unicodedata.category(chr(c)) == "Mn"]] = DROP
    table[[ord(c) for c in set(PUNCTUATION)]] = SEPARATOR
    return table


def _prepare(text: str) -> str:
    """simplify_text's steps that change code points: lowercase, numbers to 0, NFD. Punctuation, whitespace and
    marks are left to the class table."""
    text = NUMBERS_PATTERN.sub("0", text.lower())
    return text if text.isascii() else unicodedata.normalize("NFD", text)


def _words(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The words of a batch: code points, the positions in them of every word character, the index into those
    of each word's first character, and each word's document."""
    prepared = [_prepare(t) for t in texts]
    # a space between documents: no word crosses one
    cp = codepoints(" ".join(prepared))
    doc_starts = np.cumsum([0] + [len(p) + 1 for p in prepared[:-1]])
    cls = _classes()[cp]
    kept = cls != DROP
    position = None  # where each kept code point was, when marks were dropped
    if not kept.all():
        position = np.flatnonzero(kept)
        cp, cls = cp[position], cls[position]
    inside = cls != SEPARATOR
    start = inside.copy()
    start[1:] &= ~inside[:-1]
    n = len(cls)
    alone = np.flatnonzero(cls == ALONE)
    if alone.size:
        start[alone] = True
        after = alone[alone + 1 < n] + 1
        start[after] |= inside[after]
    script = np.flatnonzero(cls == SCRIPT)
    if script.size:
        # a run of SCRIPT characters right after a separator or an ALONE one is a run of one-character words
        new_run = np.ones(script.size, dtype=bool)
        new_run[1:] = np.diff(script) != 1
        before = script[new_run] - 1
        prev = cls[np.maximum(before, 0)]
        leads = (before < 0) | (prev == SEPARATOR) | (prev == ALONE)
        single = script[leads[np.cumsum(new_run) - 1]]
        after = single[single + 1 < n] + 1
        start[after] |= inside[after]
    chars = np.flatnonzero(inside)
    first = np.flatnonzero(start[chars])
    at = chars[first] if position is None else position[chars[first]]
    doc = np.searchsorted(doc_starts, at, side="right") - 1
    return cp, chars, first, doc


# splitmix64's constants; the finalizer gives every bit of a word's (nearly linear) sum an even chance
_MIX = tuple(np.uint64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))
_WEIGHT_SEED = 0x6D6F746966


@cache
def _weights(length: int) -> np.ndarray:
    """An odd random multiplier per position in a word, for words up to `length` code points."""
    return np.random.default_rng(_WEIGHT_SEED).integers(0, 2**64, size=length, dtype=np.uint64) | np.uint64(1)


def _finalize(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint64(30)
    h *= _MIX[1]
    h ^= h >> np.uint64(27)
    h *= _MIX[2]
    h ^= h >> np.uint64(31)
    return h


def _word_hashes(cp: np.ndarray, chars: np.ndarray, first: np.ndarray) -> np.ndarray:
    """A 64-bit hash per word: the sum of its code points, each times its position's weight, mixed."""
    if not first.size:
        return np.empty(0, dtype=np.uint64)
    offset = np.arange(chars.size) - np.repeat(first, np.diff(np.append(first, chars.size)))
    longest = int(offset.max()) + 1
    weights = _weights(max(1024, 1 << (longest - 1).bit_length()))  # a few sizes, each drawn once
    terms = (cp[chars].astype(np.uint64) + np.uint64(1)) * weights[offset]
    return _finalize(np.add.reduceat(terms, first))


def shingle_batch(texts: list[str], salts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit word n-gram shingles of each document, XOR-ed with its salt, as one flat array and
    ``len(texts) + 1`` offsets into it (a document of fewer than ``n`` words has none)."""
    cp, chars, first, doc = _words(texts)
    word = _word_hashes(cp, chars, first)
    counts = np.bincount(doc, minlength=len(texts))
    if word.size < n:
        return np.empty(0, dtype=np.uint64), np.zeros(len(texts) + 1, dtype=np.int64)
    count = word.size - n + 1
    h = word[:count].copy()
    for k in range(1, n):  # odd multiplier: each step is a bijection of the n-gram so far
        h *= _MIX[0]
        h ^= word[k : k + count]
    h = _finalize(h)[doc[:count] == doc[n - 1 :]]  # n-grams inside one document only
    per_doc = np.maximum(counts - n + 1, 0)
    h ^= np.repeat(np.asarray(salts, dtype=np.uint64), per_doc)
    return h, np.concatenate([[0], np.cumsum(per_doc)])
