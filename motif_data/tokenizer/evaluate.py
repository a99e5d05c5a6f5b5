"""Measuring an extended encoding: bytes/token against o200k per file, use of learned tokens, reachability,
and id-for-id parity of the exported HF tokenizer with tiktoken.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import tiktoken

from motif_data.tokenizer.base import encoding_spec
from motif_data.tokenizer.bpe import bpe
from motif_data.tokenizer.corpus import CorpusStats, iter_texts
from motif_data.tokenizer.vocab import FIRST_LEARNED

__all__ = ["learned_ids", "unreachable_tokens", "compare_file", "hf_parity", "batches"]

_BATCH = 512


def batches(texts: Iterable[str], size: int = _BATCH) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def learned_ids(enc: tiktoken.Encoding) -> list[int]:
    """Ids of the tokens learned on top of o200k (mergeable ranks from 200,019 up)."""
    return sorted(rank for rank in encoding_spec(enc)["mergeable_ranks"].values() if rank >= FIRST_LEARNED)


def unreachable_tokens(enc: tiktoken.Encoding, ids: Iterable[int] | None = None) -> list[int]:
    """Tokens whose bytes, byte-pair encoded alone, do not give back that one token.

    tiktoken itself would look a whole piece up directly, so this uses the plain merge rule (``bpe``): a
    token it cannot build can only ever appear when a regex piece is exactly its bytes.
    """
    ranks = encoding_spec(enc)["mergeable_ranks"]
    ids = learned_ids(enc) if ids is None else ids
    return [
        i for i in ids if bpe(enc.decode_single_token_bytes(i), ranks) != [enc.decode_single_token_bytes(i)]
    ]


def compare_file(
    path: Path,
    base: tiktoken.Encoding,
    extended: tiktoken.Encoding,
    text_field: str = "text",
    threads: int = 2,
) -> dict:
    """Bytes/token of ``base`` and ``extended`` on one file (texts NFC-normalized, as in training)."""
    stats = CorpusStats()
    n_bytes = base_tokens = ext_tokens = new_tokens = 0
    seen = np.zeros(extended.n_vocab, dtype=bool)
    for batch in batches(unicodedata.normalize("NFC", t) for t in iter_texts(path, text_field, stats)):
        n_bytes += sum(len(t.encode()) for t in batch)
        base_tokens += sum(map(len, base.encode_ordinary_batch(batch, num_threads=threads)))
        ids = np.fromiter(
            (i for doc in extended.encode_ordinary_batch(batch, num_threads=threads) for i in doc),
            dtype=np.int64,
        )
        ext_tokens += len(ids)
        new = ids[ids >= FIRST_LEARNED]
        new_tokens += len(new)
        seen[new] = True
    n_learned = len(learned_ids(extended))
    base_bpt = n_bytes / base_tokens if base_tokens else 0.0
    ext_bpt = n_bytes / ext_tokens if ext_tokens else 0.0
    return {
        "file": str(path),
        "documents": stats.documents,
        "skipped": dict(sorted(stats.skipped.items())),
        "bytes": n_bytes,
        "o200k_tokens": base_tokens,
        "extended_tokens": ext_tokens,
        "o200k_bytes_per_token": round(base_bpt, 4),
        "extended_bytes_per_token": round(ext_bpt, 4),
        "bytes_per_token_change": round(ext_bpt / base_bpt - 1, 4) if base_bpt else 0.0,
        "new_token_share_of_output": round(new_tokens / ext_tokens, 4) if ext_tokens else 0.0,
        "learned_tokens_used": round(int(seen.sum()) / n_learned, 4) if n_learned else 0.0,
    }


def hf_parity(enc: tiktoken.Encoding, hf, texts: Iterable[str], max_examples: int = 5) -> dict:
    """Encode ``texts`` with tiktoken and the HF tokenizer; count id mismatches and failed decodes."""
    checked = mismatches = decode_failures = 0
    examples: list[str] = []
    for batch in batches(texts):
        ours = enc.encode_batch(batch, allowed_special="all")
        theirs = [e.ids for e in hf.encode_batch(batch, add_special_tokens=False)]
        decoded = hf.decode_batch(theirs, skip_special_tokens=False)
        for text, a, b, back in zip(batch, ours, theirs, decoded, strict=True):
            checked += 1
            if a != b:
                mismatches += 1
                if len(examples) < max_examples:
                    examples.append(text[:200])
            if back != text or enc.decode(a) != text:
                decode_failures += 1
    return {
        "checked": checked,
        "mismatches": mismatches,
        "decode_failures": decode_failures,
        "examples": examples,
    }
