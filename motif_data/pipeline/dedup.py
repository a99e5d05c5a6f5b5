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

import array
import hashlib
import unicodedata
from functools import cache

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
from datatrove.utils.hashing import HashConfig
from datatrove.utils.typeshelper import StatHints

from motif_data.pipeline.config import DedupConfig
from motif_data.pipeline.shingles import shingle_batch
from motif_data.pipeline.words import ScriptWordTokenizer

__all__ = [
    "normalize_text",
    "exact_content",
    "exact_config",
    "minhash_config",
    "signature_step",
    "sort_records",
]

_HASH = HashConfig(precision=64, hash_fc="xxhash")
# MinHash values in 32 bits: datatrove then writes 4-byte values, halving the signature files (rows × bands values
# per document: 4.5 KB at 45 × 25), which its sort, bucket and cluster stages read. A false band match takes all
# `rows` values to collide (2^-32 each); rensa's values are 32-bit already, so its decisions are the same.
_MINHASH_HASH = HashConfig(precision=32, hash_fc="xxhash")


def normalize_text(text: str) -> str:
    """What "the same text" means for exact dedup: NFC, whitespace runs collapsed, ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def exact_content(doc: Document) -> str:
    return doc.metadata["domain"] + "\0" + normalize_text(doc.text)


def exact_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=exact_content, hash_config=_HASH)


def minhash_config(cfg: DedupConfig) -> MinhashConfig:
    return MinhashConfig(
        n_grams=cfg.ngram,
        num_buckets=cfg.bands,
        hashes_per_bucket=cfg.rows,
        seed=cfg.seed,
        hash_config=_MINHASH_HASH,
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


def sort_records(records: np.ndarray) -> np.ndarray:
    """Signature records (one row per document: ``rows`` values, then the document index, all uint32) in the
    order datatrove's ``records.sort(order=names)`` gives them: by every column, the first one first.

    That structured sort compares records column by column in Python-level loops; here the rows are ordered by
    their first two columns packed in one uint64 key, and only the rows that share such a key (documents alike in
    this band) go through the structured sort.
    """
    key = (records[:, 0].astype(np.uint64) << np.uint64(32)) | records[:, 1]
    order = np.argsort(key, kind="stable")
    records, key = records[order], key[order]
    same = key[1:] == key[:-1]
    if same.any():
        # runs of equal keys lie in key order, so sorting all their rows by every column puts each run back in
        # its own place, sorted
        tied = np.flatnonzero(np.append(same, False) | np.insert(same, 0, False))
        sub = np.ascontiguousarray(records[tied])
        names = [f"f{c}" for c in range(records.shape[1])]
        view = sub.view(np.dtype([(n, "<u4") for n in names])).reshape(-1)
        view.sort(order=names)
        records[tied] = sub
    return records


class RensaMinhashSignature(DomainMinhashSignature):
    """The same stage with signatures from rensa's compiled MinHash (``RMinHash``), in datatrove's files.

    The shingles are the same sets as datatrove's (same text simplification, words, n-grams and domain salt),
    found and hashed a batch of documents at a time (``shingles.shingle_batch``). The batch goes to rensa in one
    call and its records are written with NumPy: datatrove packs one record per document and band through
    ``struct``, which costs more than rensa's MinHash itself. Each band's file is then sorted as datatrove sorts
    its own (``sort_records``), a band at a time, so memory does not grow with the task.
    rensa's values are 32-bit, as datatrove's records are here (``minhash_config``).
    """

    # A batch is one rensa call and one write per band (45 files): up to 1,024 documents amortize both (256 wrote
    # 3× as often), and up to 2^20 characters bound the shingle finder's per-code-point arrays (≈ 30 bytes per
    # code point), which a thousand long documents would otherwise take to hundreds of MB.
    _BATCH = 1024
    _BATCH_CHARS = 1 << 20

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        with self.track_time():
            names = [f"bucket_{bi:03d}/{rank:05d}.minhash.sig" for bi in range(self.config.num_buckets)]
            files = [self.output_folder.open(name, mode="wb") for name in names]
            batch: list[Document] = []
            chars = 0
            first = 0  # datatrove's index of the batch's first document; documents without shingles count too
            for doc in data:
                batch.append(doc)
                chars += len(doc.text)
                if len(batch) == self._BATCH or chars >= self._BATCH_CHARS:
                    self._write(files, batch, first)
                    first += len(batch)
                    batch, chars = [], 0
            if batch:
                self._write(files, batch, first)
            self.stat_update(StatHints.total, value=first + len(batch))
            for f in files:
                f.close()
            width = self.config.hashes_per_bucket + 1
            for name in names:
                with self.output_folder.open(name, mode="rb") as f:
                    records = np.frombuffer(f.read(), dtype="<u4").reshape(-1, width)
                with self.output_folder.open(name, mode="wb") as f:
                    f.write(sort_records(records).tobytes())
        return iter(())

    def _write(self, files: list, batch: list[Document], first: int) -> None:
        import rensa

        salts = np.array([_salt(d.metadata["domain"]) for d in batch], dtype=np.uint64)
        shingles, offsets = shingle_batch([d.text for d in batch], salts, self.config.n_grams)
        some = np.flatnonzero(np.diff(offsets))  # rensa needs a shingle per row
        if not some.size:
            return
        doc_ids = some + first
        offsets = np.append(offsets[some], offsets[-1]).tolist()
        digests = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
            shingles, offsets, self.num_hashes, self.config.seed
        ).to_rows()
        # rensa 0.5 gives Python lists only; packing each row with `array` and the rows' bytes with one join
        # takes half the time of np.array on the nested lists. "I" is C's unsigned int, NumPy's uintc.
        packed = b"".join([array.array("I", row) for row in digests])
        sigs = np.frombuffer(packed, dtype=np.uintc).astype("<u4", copy=False).reshape(len(digests), -1)
        # one record per document and band: `rows` little-endian uint32 values, then the uint32 document index
        rows = self.config.hashes_per_bucket
        records = np.empty((len(doc_ids), rows + 1), dtype="<u4")
        records[:, rows] = doc_ids
        for bi, f in enumerate(files):
            records[:, :rows] = sigs[:, bi * rows : (bi + 1) * rows]
            f.write(records.tobytes())


def signature_step(cfg: DedupConfig, folder: str) -> MinhashDedupSignature:
    """The MinHash signature stage of ``cfg.engine``, writing datatrove's signature files to ``folder``."""
    engine = RensaMinhashSignature if cfg.engine == "rensa" else DomainMinhashSignature
    return engine(folder, config=minhash_config(cfg))
