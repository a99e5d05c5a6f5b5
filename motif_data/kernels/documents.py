"""Packed documents for attention: where each token's document starts and ends in its row.

A packed sequence holds several documents back to back; with document masking a query attends only to the
earlier keys of its own document. The attention kernels take the boundaries as one int32 tensor ``(2, B, S)``:
``[0]`` the index of the first token of each token's document, ``[1]`` one past its last. Both are
non-decreasing along a row, which is what lets a kernel skip whole key blocks: a query block needs no key
before its first row's document start, a key block no query from its last key's document end on.
"""

from __future__ import annotations

import torch

__all__ = ["document_bounds", "document_bounds_from_cu_seqlens", "document_mask"]


def _bounds(starts_here: torch.Tensor) -> torch.Tensor:
    # starts_here (B, S) bool, True where a document begins (always at 0) → (2, B, S) int32.
    b, s = starts_here.shape
    index = torch.arange(s, device=starts_here.device).expand(b, s)
    start = torch.where(starts_here, index, 0).cummax(dim=1).values
    # The end of i's document is the first start after i (S if none): a running minimum from the right.
    following = torch.where(starts_here, index, s)[:, 1:]
    following = torch.cat((following, torch.full((b, 1), s, device=index.device, dtype=index.dtype)), 1)
    end = following.flip(1).cummin(dim=1).values.flip(1)
    return torch.stack((start, end)).to(torch.int32)


def document_bounds(position_ids: torch.Tensor) -> torch.Tensor:
    """``(2, B, S)`` int32 document bounds from ``position_ids`` (B, S) that count up within a document: a
    document begins at each row's first token and wherever a position is not its predecessor's plus one (a
    restart at 0, as `MixtureDataset` yields them). No host synchronisation."""
    if position_ids.ndim != 2:
        raise ValueError(f"position_ids must be (batch, seq), got shape {tuple(position_ids.shape)}")
    starts_here = torch.ones_like(position_ids, dtype=torch.bool)
    starts_here[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return _bounds(starts_here)


def document_bounds_from_cu_seqlens(cu_seqlens: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor:
    """``(2, B, S)`` int32 document bounds from FlashAttention's ``cu_seqlens`` over the flattened batch (the
    cumulative document lengths, from 0 to ``batch · seq_len``); a document that runs past a row's end is cut
    there (each row starts a document)."""
    cu = cu_seqlens.long()
    if cu.ndim != 1 or cu.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with at least two entries, got shape {tuple(cu.shape)}")
    starts_here = torch.zeros(batch * seq_len + 1, dtype=torch.bool, device=cu.device)
    starts_here[cu] = True
    starts_here = starts_here[:-1].view(batch, seq_len)
    starts_here[:, 0] = True
    return _bounds(starts_here)


def document_mask(documents: torch.Tensor) -> torch.Tensor:
    """The boolean attention mask ``(B, 1, S, S)`` of causal attention within documents (True: attend), for the
    pure-PyTorch references: key j is visible to query i when ``start[i] ≤ j ≤ i``."""
    start = documents[0].long()
    s = start.shape[1]
    keys = torch.arange(s, device=documents.device)
    return ((keys[None, None, :] <= keys[None, :, None]) & (keys[None, None, :] >= start[:, :, None]))[
        :, None
    ]
