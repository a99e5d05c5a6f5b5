"""Tokenization as a datatrove step: our tiktoken encoding, ``<|endoftext|>`` after each document.

The step also applies the per-source minimum length in tokens, since that is where the tokens exist.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import tiktoken
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from motif_data.pipeline.accounting import add_counts, key
from motif_data.pipeline.config import SourceConfig

__all__ = ["TOKENS_KEY", "load_tokenizer", "TokenizeStep"]

TOKENS_KEY = "_tokens"


def _check_base(directory: Path) -> None:
    """Our tokenizers continue o200k, so a directory's rank file starts with o200k_base.tiktoken, line for line:
    its sha256 over those lines is o200k's published one, as ``load_base`` checks for the file itself."""
    from motif_data.tokenizer.base import O200K_SHA256
    from motif_data.tokenizer.export import RANKS_FILE
    from motif_data.tokenizer.vocab import BASE_RANKS

    ranks = directory / RANKS_FILE
    with ranks.open("rb") as f:
        digest = hashlib.sha256(b"".join(itertools.islice(f, BASE_RANKS))).hexdigest()
    if digest != O200K_SHA256:
        raise ValueError(
            f"{ranks}: its first {BASE_RANKS:,} ranks are not o200k_base's (sha256 {digest[:16]}…, expected "
            f"{O200K_SHA256[:16]}…); train the tokenizer again with `motif-data tokenizer train`"
        )


def load_tokenizer(path: str | os.PathLike | None) -> tiktoken.Encoding:
    """A tokenizer directory written by ``motif-data tokenizer`` (its o200k part checked), or o200k_base (a rank
    file or the default)."""
    if path is not None and Path(path).is_dir():
        from motif_data.tokenizer import load

        enc = load(path)  # names a missing rank file itself
        _check_base(Path(path))
        return enc
    from motif_data.tokenizer import load_base

    return load_base(path)


class TokenizeStep(PipelineStep):
    """Puts the document's token ids (end-of-text included) in ``metadata["_tokens"]`` as ``uint32``."""

    type = "🔢 - TOKENIZER"
    name = "motif tiktoken tokenizer"

    def __init__(self, tokenizer: str | None, sources: tuple[SourceConfig, ...]):
        super().__init__()
        self.tokenizer = tokenizer
        self.min_tokens = {s.name: s.filters.min_tokens for s in sources}

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        enc = load_tokenizer(self.tokenizer)
        eot = enc.eot_token
        short: Counter = Counter()
        for doc in data:
            with self.track_time():
                # The tokenizer learned its Korean merges on NFC text; NFD Hangul would fall back to
                # ~1 byte per token, so every document is encoded in NFC (a no-op for most text).
                ids = enc.encode_ordinary(unicodedata.normalize("NFC", doc.text))
                source = doc.metadata["source"]
                if len(ids) < self.min_tokens[source]:
                    short[key("filtered", source, doc.metadata["domain"], "min_tokens")] += 1
                    continue
                ids.append(eot)
                doc.metadata[TOKENS_KEY] = np.array(ids, dtype=np.uint32)
            yield doc
        add_counts(self, short)
