"""RoPE base schedule: the short-context base (10k) until the long-context switch, then 500k (Motif-2.6B)."""

from __future__ import annotations

__all__ = ["rope_base"]


def rope_base(tokens: float, switch_at: float, short: float = 10_000.0, long: float = 500_000.0) -> float:
    """RoPE base for the step that starts at training token ``tokens``; switches at ``switch_at``."""
    if not (short > 0 and long > 0):
        raise ValueError(f"RoPE bases must be > 0, got short={short}, long={long}")
    return long if tokens >= switch_at else short
