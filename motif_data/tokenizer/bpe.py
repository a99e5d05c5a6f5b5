"""Plain-Python byte-pair encoding with tiktoken's rule, for the few jobs tiktoken does not expose.

tiktoken merges the adjacent pair whose concatenation has the lowest rank, leftmost on ties. Run on a
token's own bytes with only lower ranks, that rule ends in the two parts the token was merged from, which
is how the HF merges list is recovered and how a token is checked to be reachable.
"""

from __future__ import annotations

__all__ = ["bpe", "merge_parts"]


def bpe(data: bytes, ranks: dict[bytes, int], limit: int | None = None) -> list[bytes]:
    """``data`` split by tiktoken's merge rule using only ranks below ``limit`` (all if None)."""
    parts = [data[i : i + 1] for i in range(len(data))]
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if (
                rank is not None
                and (limit is None or rank < limit)
                and (best_rank is None or rank < best_rank)
            ):
                best_rank, best_i = rank, i
        if best_rank is None:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def merge_parts(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    """The pair a multi-byte token is merged from, or None if lower ranks cannot build it (unreachable)."""
    parts = bpe(token, ranks, ranks[token])
    return (parts[0], parts[1]) if len(parts) == 2 else None
