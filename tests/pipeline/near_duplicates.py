"""Planted near-duplicates for the MinHash tests and benchmarks: edits of real documents whose similarity is
measured by brute force on word 5-gram sets, and the dedup run through datatrove's own bucket, cluster and
filter stages after our signature step."""

from __future__ import annotations

import random
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
from datatrove.utils.text import simplify_text

from motif_data.pipeline.config import DedupConfig
from motif_data.pipeline.dedup import minhash_config, signature_step
from motif_data.pipeline.words import ScriptWordTokenizer

_WORDS = ScriptWordTokenizer()


def shingle_set(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """What MinHash estimates the Jaccard similarity of: datatrove's simplified text, our words, word n-grams."""
    w = _WORDS.word_tokenize(simplify_text(text))
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = shingle_set(a), shingle_set(b)
    return len(x & y) / len(x | y)


def distinct_bases(texts: list[str], count: int, min_words: int = 150) -> list[str]:
    """Long texts far from each other (Jaccard < 0.3), so that only planted pairs are near-duplicates."""
    bases: list[str] = []
    sets: list[set] = []
    for t in texts:
        s = shingle_set(t)
        if len(t.split()) >= min_words and all(len(s & o) / len(s | o) < 0.3 for o in sets):
            bases.append(t)
            sets.append(s)
            if len(bases) == count:
                break
    return bases


def plant(base: str, target: float, rng: random.Random, tolerance: float = 0.015) -> tuple[str, float] | None:
    """An edit of `base` (words replaced by unseen ones) whose brute-force Jaccard with it is nearest `target`;
    None when no number of replacements comes within `tolerance`."""
    words = base.split(" ")
    order = rng.sample(range(len(words)), len(words))
    fresh = [f"zq{rng.randrange(10**9)}" for _ in words]

    def edit(k: int) -> tuple[str, float]:
        edited = list(words)
        for i in order[:k]:
            edited[i] = fresh[i]
        text = " ".join(edited)
        return text, jaccard(base, text)

    lo, hi = 1, len(words)  # similarity falls as more words are replaced: bisect for the target
    while lo < hi:
        mid = (lo + hi) // 2
        if edit(mid)[1] > target:
            lo = mid + 1
        else:
            hi = mid
    best = min((edit(k) for k in {max(lo - 1, 1), lo}), key=lambda v: abs(v[1] - target))
    return best if abs(best[1] - target) <= tolerance else None


def kept_after_dedup(ranks: list[list[Document]], cfg: DedupConfig, work: Path) -> set[str]:
    """Ids of the documents that survive: our signature step, then datatrove's buckets, cluster and filter."""
    mcfg = minhash_config(cfg)
    for rank, docs in enumerate(ranks):
        signature_step(cfg, str(work / "sigs")).run(iter(docs), rank, len(ranks))
    for band in range(cfg.bands):
        MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=mcfg).run(None, band, cfg.bands)
    MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=mcfg).run(None, 0, 1)
    return {
        d.id
        for rank, docs in enumerate(ranks)
        for d in MinhashDedupFilter(str(work / "remove")).run(iter(docs), rank, len(ranks))
    }
