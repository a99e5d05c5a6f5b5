"""Shared test fixtures: where the real text samples and the o200k rank file live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ../shared beside the project root holds real text of all eight domains and the o200k rank file.
SHARED = Path(os.environ.get("MOTIF_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
DATA = SHARED / "data"
O200K_PATH = SHARED / "tokenizers" / "o200k_base.tiktoken"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert DATA.is_dir(), f"real text samples not found at {DATA}; set MOTIF_SHARED"
    return DATA


@pytest.fixture(scope="session")
def o200k_path() -> Path:
    assert O200K_PATH.is_file(), f"o200k_base.tiktoken not found at {O200K_PATH}; set MOTIF_SHARED"
    return O200K_PATH


@pytest.fixture(scope="session")
def o200k(o200k_path):
    from motif_data.tokenizer import load_base

    return load_base(o200k_path)
