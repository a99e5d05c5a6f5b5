"""The vectorized shingler against datatrove's own text simplification and our regex word splitter: the same
words, character for character, on real text of every domain and on every Unicode code point."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest
from datatrove.utils.text import simplify_text
from realtext import read_jsonl_zst

from motif_data.pipeline.shingles import _words, shingle_batch
from motif_data.pipeline.words import ScriptWordTokenizer

_SPLIT = ScriptWordTokenizer()


def reference_words(text: str) -> list[str]:
    return _SPLIT.word_tokenize(simplify_text(text))


def batch_words(texts: list[str]) -> list[list[str]]:
    """The words `_words` finds, decoded back to strings, per document."""
    cp, chars, first, doc = _words(texts)
    ends = np.append(first[1:], chars.size)
    out: list[list[str]] = [[] for _ in texts]
    for b, e, d in zip(first, ends, doc, strict=True):
        out[d].append(cp[chars[b:e]].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass"))
    return out


EDGE_CASES = [
    "Ça coûte 3,50 € — “naïve” café! 1,000,000 or 3.14.15",
    "  \t北京。東京、バンコク：กรุงเทพ\u2028x ",
    "e\u0301\u0301 \u0301 a \u0301",
    "ab漢字 漢字ab 漢a漢 ๏abc ab๏c กข๏ค",  # script characters inside and at the start of words; Thai's ๏
    "snake_case_name ＡＢＣ１２３ x_1",  # _ and fullwidth digit one are in datatrove's punctuation
    "",
    "   ",
    "\ud800 lone surrogate \udfff",
]


def _real_texts(corpus) -> list[str]:
    return [
        orjson.loads(x)["text"]
        for path in corpus.values()
        if path.suffix == ".zst"
        for x in read_jsonl_zst(path)
    ]


def test_words_are_datatrove_simplify_then_our_word_split(corpus):
    texts = _real_texts(corpus) + EDGE_CASES
    assert len(texts) > 500
    for i in range(0, len(texts), 37):  # batches of several documents: no word may cross a document
        chunk = texts[i : i + 37]
        assert batch_words(chunk) == [reference_words(t) for t in chunk]


@pytest.mark.parametrize("seed", [0, 1])
def test_words_agree_on_every_code_point(seed):
    rng = random.Random(seed)
    every = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    rng.shuffle(every)
    texts = []
    for i in range(0, len(every), 48):
        chars = [chr(c) for c in every[i : i + 48]]
        for _ in range(8):  # spaces and punctuation at random places: words end and start everywhere
            chars.insert(rng.randrange(len(chars) + 1), rng.choice(" .,_\u3001"))
        texts.append("".join(chars))
    got = []
    for i in range(0, len(texts), 500):
        got += batch_words(texts[i : i + 500])
    mismatched = [t for t, g in zip(texts, got, strict=True) if g != reference_words(t)]
    assert not mismatched, [hex(ord(c)) for c in mismatched[0]]


def test_shingles_are_the_word_ngram_sets_one_to_one(corpus):
    texts = _real_texts(corpus) + EDGE_CASES
    n = 5
    flat, offsets = shingle_batch(texts, np.zeros(len(texts), dtype=np.uint64), n)
    assert offsets[0] == 0 and offsets[-1] == flat.size and len(offsets) == len(texts) + 1
    seen: dict[tuple[str, ...], int] = {}
    owner: dict[int, tuple[str, ...]] = {}
    for i, t in enumerate(texts):
        w = reference_words(t)
        grams = [tuple(w[k : k + n]) for k in range(len(w) - n + 1)]
        got = flat[offsets[i] : offsets[i + 1]].tolist()
        assert len(got) == len(grams)  # in order, one per n-gram, none across documents
        for g, h in zip(grams, got, strict=True):
            assert seen.setdefault(g, h) == h  # an n-gram always has the same hash
            assert owner.setdefault(h, g) == g  # and no two n-grams share one
    assert len(seen) > 20_000


def test_a_document_shingles_alike_in_any_batch_and_its_salt_separates_it(corpus):
    texts = _real_texts(corpus)[:40]
    salts = np.arange(1, 41, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    flat, offsets = shingle_batch(texts, salts, 5)
    for i, t in enumerate(texts):
        alone, _ = shingle_batch([t], salts[i : i + 1], 5)
        assert np.array_equal(flat[offsets[i] : offsets[i + 1]], alone)
    unsalted, _ = shingle_batch(texts[:1], np.zeros(1, dtype=np.uint64), 5)
    assert unsalted.size and not set(unsalted.tolist()) & set(flat[offsets[0] : offsets[1]].tolist())
    salted_apart, _ = shingle_batch([texts[0], texts[0]], salts[1:3], 5)
    half = salted_apart.size // 2
    assert not set(salted_apart[:half].tolist()) & set(salted_apart[half:].tolist())


def test_documents_shorter_than_n_words_have_no_shingles():
    flat, offsets = shingle_batch(["one two three four", "", "a b c d e"], np.zeros(3, dtype=np.uint64), 5)
    assert offsets.tolist() == [0, 0, 0, 1] and flat.size == 1
