"""Keyed bijections of ``range(n)`` without O(n) memory: a Feistel network with cycle-walking.

The loader uses one per (seed, domain, epoch) to decide which packed sequence is the k-th drawn, so the
order is reproducible from three integers and reshuffles every epoch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["hash64", "permute"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
_ROUNDS = 6


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array (wrapping arithmetic is intended)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def hash64(*values: int) -> int:
    """A 64-bit hash of a tuple of non-negative integers, stable across processes and platforms."""
    h = 0
    with np.errstate(over="ignore"):
        for v in values:
            h = int(_mix(np.array([(h ^ (int(v) & _MASK64)) + _GOLDEN & _MASK64], dtype=np.uint64))[0])
    return h


def permute(x: np.ndarray, n: int, key: int) -> np.ndarray:
    """Image of each ``x`` (0 <= x < n) under the bijection of ``range(n)`` selected by ``key``."""
    x = np.asarray(x, dtype=np.uint64)
    if n <= 1:
        return np.zeros_like(x)
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)
    keys = [np.uint64(hash64(key, r)) for r in range(_ROUNDS)]

    def encrypt(v: np.ndarray) -> np.ndarray:
        left, right = v >> shift, v & mask
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & mask)
        return (left << shift) | right

    with np.errstate(over="ignore"):
        y = encrypt(x)
        # The network permutes [0, 4^half) ⊇ [0, n); walking the cycle until we land back in range keeps it a
        # bijection of [0, n). Fewer than 4 steps on average since 4^half < 4n.
        out = y >= n
        while out.any():
            y[out] = encrypt(y[out])
            out = y >= n
    return y
