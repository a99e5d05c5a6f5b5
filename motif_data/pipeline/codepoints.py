"""Per-code-point tables of regex character classes, so that text is classified by NumPy indexing instead of
regex passes (the word splitter for MinHash, script ratios)."""

from __future__ import annotations

from functools import cache

import numpy as np
import regex

__all__ = ["UNICODE", "codepoints", "matching"]

UNICODE = 0x110000


def codepoints(text: str) -> np.ndarray:
    """The code points of ``text`` as uint32 (lone surrogates included, as Python strings may hold them)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


@cache
def _every() -> str:
    return np.arange(UNICODE, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")


@cache
def matching(pattern: str) -> np.ndarray:
    """Which code points the one-character ``regex`` class ``pattern`` matches (≈ 0.1 s, once per process)."""
    # every match becomes NUL; NUL itself, which the class must not match, is NUL already
    if regex.match(pattern, "\0"):
        raise ValueError(f"{pattern!r} matches NUL: the table cannot mark it")
    table = codepoints(regex.sub(pattern, "\0", _every())) == 0
    table[0] = False
    return table
