"""Small real builds for the loader tests: shards written with motif_data.shards, as the builder does."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from motif_data import DOMAINS
from motif_data.shards import DomainInfo, Manifest, ShardWriter, TokenizerInfo

EOT = 199_999
TOKENIZER = TokenizerInfo("o200k_base", "ab" * 32, 200_019, EOT)


def random_docs(rng: np.random.Generator, n: int, domain: int, max_len: int = 60) -> list[np.ndarray]:
    """Documents whose tokens encode (domain, document, position) so any token can be traced back."""
    docs = []
    for i in range(n):
        length = int(rng.integers(1, max_len))
        body = (domain * 20_000_000 + i * 1000 + np.arange(length)) % EOT
        docs.append(np.append(body, EOT).astype(np.uint32))
    return docs


def write_build(root, docs_by_domain: dict[str, list[np.ndarray]], max_tokens: int = 700) -> Manifest:
    domains = {}
    for name, docs in docs_by_domain.items():
        with ShardWriter(root / name, name, max_tokens=max_tokens) as w:
            for doc in docs:
                w.write(doc)
        shards = tuple(replace(s, path=f"{name}/{s.path}") for s in w.shards)
        domains[name] = DomainInfo(len(docs), sum(s.tokens for s in shards), shards)
    manifest = Manifest(TOKENIZER, domains, root)
    manifest.save(root / "manifest.json")
    return manifest


@pytest.fixture(scope="session")
def build_tools():
    """(random_docs, write_build) for tests that need a build of their own."""
    return random_docs, write_build


@pytest.fixture(scope="session")
def small_build(tmp_path_factory):
    """All eight domains, a few hundred short documents each, shards of at most 700 tokens."""
    root = tmp_path_factory.mktemp("build")
    rng = np.random.default_rng(0)
    docs = {name: random_docs(rng, 150 + 40 * d, d) for d, name in enumerate(DOMAINS)}
    write_build(root, docs)
    return root / "manifest.json", docs
