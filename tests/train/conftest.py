"""A synthetic corpus for the training tests: eight domains of random documents over a 512-id vocabulary,
so that a model trains in milliseconds per step (the real o200k corpus is exercised by the CLI test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from motif_data import DOMAINS
from motif_data.shards import DomainInfo, Manifest, ShardWriter, TokenizerInfo

VOCAB = 512
EOT = VOCAB - 1


def write_synthetic_corpus(root: Path, docs_per_domain: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    domains = {}
    for i, domain in enumerate(DOMAINS):
        with ShardWriter(root / domain, domain, max_tokens=4000) as writer:
            for _ in range(docs_per_domain):
                # Each domain draws from its own slice of the vocabulary, so per-domain losses differ.
                body = rng.integers(i * 50, i * 50 + 50 + 5 * i, size=int(rng.integers(5, 120)))
                writer.write(np.append(body, EOT))
        shards = tuple(
            s.__class__(f"{domain}/{s.path}", s.documents, s.tokens, s.sha256, s.index_sha256)
            for s in writer.shards
        )
        domains[domain] = DomainInfo(sum(s.documents for s in shards), sum(s.tokens for s in shards), shards)
    manifest = Manifest(TokenizerInfo("synthetic-512", "0" * 64, VOCAB, EOT), domains, root)
    manifest.save(root / "manifest.json")
    return root / "manifest.json"


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory) -> Path:
    return write_synthetic_corpus(tmp_path_factory.mktemp("synthetic-corpus"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run faster on one thread, and far faster when other processes share the cores
    (OpenMP threads spin-wait for each other); restored afterwards for the rest of the suite."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
