"""Deduplication within each domain with datatrove's exact and MinHash stages.

Both stages see all domains at once and keep them apart by salting: the exact hash covers
``domain + NUL + normalized text``, and each MinHash shingle is XOR-ed with a per-domain constant. XOR is a
bijection, so Jaccard similarity inside a domain is unchanged, while shingle sets of different domains are
disjoint and never collide.
"""

from __future__ import annotations

import hashlib
import unicodedata
from functools import cache

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
from datatrove.utils.hashing import HashConfig

from motif_data.pipeline.config import DedupConfig
from motif_data.pipeline.words import ScriptWordTokenizer

__all__ = ["normalize_text", "exact_content", "exact_config", "minhash_config", "DomainMinhashSignature"]

_HASH = HashConfig(precision=64, hash_fc="xxhash")


def normalize_text(text: str) -> str:
    """What "the same text" means for exact dedup: NFC, whitespace runs collapsed, ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def exact_content(doc: Document) -> str:
    return doc.metadata["domain"] + "\0" + normalize_text(doc.text)


def exact_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=exact_content, hash_config=_HASH)


def minhash_config(cfg: DedupConfig) -> MinhashConfig:
    return MinhashConfig(
        n_grams=cfg.ngram, num_buckets=cfg.bands, hashes_per_bucket=cfg.rows, seed=cfg.seed, hash_config=_HASH
    )


@cache
def _salt(domain: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.sha256(domain.encode()).digest()[:8], "little"))


class DomainMinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash signature stage with shingles salted by the document's domain."""

    def __init__(self, output_folder, config: MinhashConfig):
        super().__init__(output_folder, config=config, language=ScriptWordTokenizer())
        self._domain_salt = np.uint64(0)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        def salted() -> DocumentsPipeline:
            for doc in data:
                # the parent computes this document's shingles right after receiving it
                self._domain_salt = _salt(doc.metadata["domain"])
                yield doc

        return super().run(salted(), rank, world_size)

    def get_shingles(self, text: str) -> np.ndarray:
        return super().get_shingles(text) ^ self._domain_salt
