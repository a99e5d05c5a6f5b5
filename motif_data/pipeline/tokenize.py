"""Tokenization as a datatrove step: our tiktoken encoding, ``<|endoftext|>`` after each document.

The step also applies the per-source minimum length in tokens, since that is where the tokens exist.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import numpy as np
import tiktoken
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from motif_data.pipeline.accounting import key
from motif_data.pipeline.config import SourceConfig

__all__ = ["TOKENS_KEY", "load_tokenizer", "TokenizeStep"]

TOKENS_KEY = "_tokens"


def load_tokenizer(path: str | os.PathLike | None) -> tiktoken.Encoding:
    """A tokenizer directory written by ``motif-data tokenizer``, or o200k_base (a rank file or the default)."""
    if path is not None and Path(path).is_dir():
        try:
            from motif_data.tokenizer import load
        except ImportError as e:
            raise ValueError(
                f"{path} is a tokenizer directory but motif_data.tokenizer.load is not available ({e}); "
                "point tokenizer.path to o200k_base.tiktoken instead"
            ) from e
        return load(path)
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
        for doc in data:
            with self.track_time():
                # The tokenizer learned its Korean merges on NFC text; NFD Hangul would fall back to
                # ~1 byte per token, so every document is encoded in NFC (a no-op for most text).
                ids = enc.encode_ordinary(unicodedata.normalize("NFC", doc.text))
                source = doc.metadata["source"]
                if len(ids) < self.min_tokens[source]:
                    self.stat_update(key("filtered", source, doc.metadata["domain"], "min_tokens"))
                    continue
                ids.append(eot)
                doc.metadata[TOKENS_KEY] = np.array(ids, dtype=np.uint32)
            yield doc
