"""Fixtures for the tokenizer tests: a small Korean corpus cut from the shared samples, a tokenizer trained
on it once per session through the real CLI, and deterministic fuzz strings across scripts."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from tokhelpers import cli, make_fuzz, read_texts

SMALL_MERGES = 1500  # enough for multi-level merges; the full-size run is measured by the benchmark


@pytest.fixture(scope="session")
def small_corpus(corpus, tmp_path_factory) -> Path:
    """~140 KB of Korean: all of KoNLPy's bills and constitution, as plain JSON Lines."""
    out = tmp_path_factory.mktemp("corpus") / "ko_small.jsonl"
    texts = read_texts(corpus["korean_articles"]) + read_texts(corpus["korean_short"])
    out.write_bytes(b"".join(orjson.dumps({"text": t}) + b"\n" for t in texts))
    return out


@pytest.fixture(scope="session")
def small_vocab_size() -> int:
    from motif_data.tokenizer.vocab import FIRST_LEARNED, NAMED_SPECIALS

    return FIRST_LEARNED + len(NAMED_SPECIALS) + SMALL_MERGES


@pytest.fixture(scope="session")
def trained_dir(small_corpus, o200k_path, small_vocab_size, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "ko"
    argv = ["tokenizer", "train", "--input", str(small_corpus), "--out", str(out), "--base", str(o200k_path)]
    assert cli([*argv, "--vocab-size", str(small_vocab_size), "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def trained(trained_dir):
    from motif_data.tokenizer import load

    return load(trained_dir)


@pytest.fixture(scope="session")
def words(corpus) -> tuple[list[str], list[str]]:
    korean = " ".join(read_texts(corpus["korean_short"])).split()
    english = " ".join(read_texts(corpus["web"], 100)).split()
    return korean, english


@pytest.fixture(scope="session")
def fuzz_texts(words) -> list[str]:
    """10,000 strings mixing Korean (NFC and NFD), English, code, CJK, Thai, emoji ZWJ, whitespace, digits."""
    return make_fuzz(10_000, *words)
