"""Deduplication within each domain with datatrove's exact and MinHash stages.

Both stages see all domains at once and keep them apart by salting: the exact hash covers
``domain + NUL + normalized text``, and each MinHash shingle is XOR-ed with a per-domain constant. XOR is a
bijection, so Jaccard similarity inside a domain is unchanged, while shingle sets of different domains are
disjoint and never collide.

MinHash signatures come from one of two engines (``DedupConfig.engine``): datatrove's own NumPy MinHash (the
anchor) or ``rensa``'s compiled one. Both write datatrove's signature files, which datatrove's bucket,
cluster and filter stages then read unchanged.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import cache

import numpy as np
import regex
import xxhash
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import NUMBERS_PATTERN, PUNCTUATION
from datatrove.utils.typeshelper import StatHints

from motif_data.pipeline.config import DedupConfig
from motif_data.pipeline.words import ScriptWordTokenizer

__all__ = ["normalize_text", "exact_content", "exact_config", "minhash_config", "signature_step"]

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


# simplify_text (datatrove.utils.text) with its default TextNormConfig, in fewer passes: its character-by-character
# diacritics loop and its punctuation str.translate are 60 % of the rensa engine's time. Punctuation becoming a
# space and then whitespace runs collapsing is one substitution of runs of either; marks go by one regex.
_SEPARATORS = re.compile("[\\s" + re.escape("".join(sorted(set(PUNCTUATION)))) + "]+")
_NONSPACING_MARKS = regex.compile(r"\p{Mn}+")


def _simplify(text: str) -> str:
    text = _SEPARATORS.sub(" ", NUMBERS_PATTERN.sub("0", text.lower())).strip()
    if text.isascii():  # NFD leaves ASCII alone and it has no marks
        return text
    return _NONSPACING_MARKS.sub("", unicodedata.normalize("NFD", text)).strip()


# splitmix64's finalizer: the n-gram combination below is nearly linear, the permutations want uniform bits
_MIX = tuple(np.uint64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _ngram_hashes(words: list[str], n: int) -> np.ndarray:
    """A 64-bit hash per word n-gram: each word hashed once, n-grams combined in NumPy instead of joining and
    hashing every n-gram string (as datatrove does), which costs as much again as the MinHash itself."""
    count = len(words) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    word = np.fromiter(map(xxhash.xxh3_64_intdigest, words), dtype=np.uint64, count=len(words))
    h = word[:count].copy()
    for k in range(1, n):  # odd multiplier: each step is a bijection of the n-gram so far
        h *= _MIX[0]
        h ^= word[k : k + count]
    h ^= h >> np.uint64(30)
    h *= _MIX[1]
    h ^= h >> np.uint64(27)
    h *= _MIX[2]
    h ^= h >> np.uint64(31)
    return h


class RensaMinhashSignature(DomainMinhashSignature):
    """The same stage with signatures from rensa's compiled MinHash (``RMinHash``), in datatrove's files.

    The shingles are the same sets as datatrove's (same text simplification, words, n-grams and domain salt),
    hashed differently. Documents go to rensa a batch at a time and their records are written with NumPy: datatrove
    packs one record per document and band through ``struct``, which costs more than rensa's MinHash itself.
    datatrove's own ``run`` then sorts and verifies the files, as it does for signatures that already exist.
    rensa's values are 32-bit; in datatrove's 64-bit records they stay below the Mersenne prime up to which its
    bucket stage reads.
    """

    _BATCH = 256  # documents per rensa call: amortizes its per-call setup, bounds the memory held

    def __init__(self, output_folder, config: MinhashConfig):
        super().__init__(output_folder, config)
        self.skip_existing_sigs = True  # makes datatrove's run only sort and verify what this run wrote

    def get_shingles(self, text: str) -> np.ndarray:
        words = self.word_tokenizer.word_tokenize(_simplify(text))
        return _ngram_hashes(words, self.config.n_grams) ^ self._domain_salt

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        with self.track_time():
            files = [
                self.output_folder.open(f"bucket_{bi:03d}/{rank:05d}.minhash.sig", mode="wb")
                for bi in range(self.config.num_buckets)
            ]
            shingles: list[np.ndarray] = []
            doc_ids: list[int] = []
            # datatrove's document index counts documents without shingles too
            for doc_idx, doc in enumerate(data):
                self.stat_update(StatHints.total)
                self._domain_salt = _salt(doc.metadata["domain"])
                found = self.get_shingles(doc.text)
                if found.size:
                    shingles.append(found)
                    doc_ids.append(doc_idx)
                if len(shingles) == self._BATCH:
                    self._write(files, shingles, doc_ids)
                    shingles, doc_ids = [], []
            if shingles:
                self._write(files, shingles, doc_ids)
            for f in files:
                f.close()
        MinhashDedupSignature.run(self, iter(()), rank, world_size)

    def _write(self, files: list, shingles: list[np.ndarray], doc_ids: list[int]) -> None:
        import rensa

        offsets = np.cumsum([0] + [len(s) for s in shingles]).tolist()
        digests = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
            np.concatenate(shingles), offsets, self.num_hashes, self.config.seed
        ).to_rows()
        sigs = np.array(digests, dtype="<u8")
        # one record per document: `rows` little-endian uint64 values, then the uint32 document index
        rows = self.config.hashes_per_bucket
        records = np.empty((len(doc_ids), rows * 8 + 4), dtype=np.uint8)
        records[:, rows * 8 :] = np.array(doc_ids, dtype="<u4").view(np.uint8).reshape(-1, 4)
        for bi, f in enumerate(files):
            records[:, : rows * 8] = sigs[:, bi * rows : (bi + 1) * rows].view(np.uint8)
            f.write(records.tobytes())


def signature_step(cfg: DedupConfig, folder: str) -> MinhashDedupSignature:
    """The MinHash signature stage of ``cfg.engine``, writing datatrove's signature files to ``folder``."""
    engine = RensaMinhashSignature if cfg.engine == "rensa" else DomainMinhashSignature
    return engine(folder, config=minhash_config(cfg))
