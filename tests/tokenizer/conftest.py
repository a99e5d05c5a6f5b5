"""Fixtures for the tokenizer tests: a small Korean corpus cut from the shared samples, a tokenizer trained
on it once per session through the real CLI, and deterministic fuzz strings across scripts."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from tokhelpers import cli, make_fuzz, read_jsonl_zst

SMALL_MERGES = 1500  # enough for multi-level merges; the full-size run is measured by the benchmark


@pytest.fixture(scope="session")
def small_corpus(shared_data, tmp_path_factory) -> Path:
    """~1.5 MB of Korean: the first 120 Wikipedia articles and 6,000 movie reviews, as plain JSON Lines."""
    out = tmp_path_factory.mktemp("corpus") / "ko_small.jsonl"
    texts = read_jsonl_zst(shared_data / "korean" / "kowiki_train.jsonl.zst", 120)
    texts += read_jsonl_zst(shared_data / "korean" / "nsmc_reviews.jsonl.zst", 6000)
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
def words(shared_data) -> tuple[list[str], list[str]]:
    korean = " ".join(read_jsonl_zst(shared_data / "korean" / "nsmc_reviews.jsonl.zst", 3000)).split()
    english = " ".join(read_jsonl_zst(shared_data / "web" / "dclm_samples.jsonl.zst", 100)).split()
    return korean, english


@pytest.fixture(scope="session")
def fuzz_texts(words) -> list[str]:
    """10,000 strings mixing Korean (NFC and NFD), English, code, CJK, Thai, emoji ZWJ, whitespace, digits."""
    return make_fuzz(10_000, *words)
