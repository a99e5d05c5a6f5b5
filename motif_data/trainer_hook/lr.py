"""Warmup-stable-decay learning rate (Motif-2.6B): linear warmup, a long plateau at the peak, then a decay
to a fraction of the peak (25 % in the report) over the final part of the run.

Pure functions of the position, in whatever unit the caller counts (optimizer steps or tokens), so a
resumed run needs nothing but the position.
"""

from __future__ import annotations

import math

__all__ = ["wsd_lr", "wsd_scheduler"]

_SHAPES = ("inv_sqrt", "linear")


def _check(peak: float, warmup: float, total: float, decay: float, final_ratio: float, shape: str) -> None:
    problems = []
    if not peak > 0:
        problems.append(f"peak must be > 0, got {peak}")
    if warmup < 0 or decay < 0:
        problems.append(f"warmup and decay must be >= 0, got warmup={warmup}, decay={decay}")
    if warmup + decay > total:
        problems.append(f"warmup + decay ({warmup} + {decay}) must not exceed total ({total})")
    if not 0 < final_ratio <= 1:
        problems.append(f"final_ratio must be in (0, 1], got {final_ratio}")
    if shape not in _SHAPES:
        problems.append(f"shape must be one of {_SHAPES}, got {shape!r}")
    if problems:
        raise ValueError("invalid WSD schedule: " + "; ".join(problems))


def wsd_lr(
    position: float,
    *,
    peak: float,
    warmup: float,
    total: float,
    decay: float,
    final_ratio: float = 0.25,
    shape: str = "inv_sqrt",
) -> float:
    """Learning rate at ``position`` (step or tokens; ``warmup``, ``total``, ``decay`` in the same unit).

    Decay over ``[total - decay, total]`` with x going 0 → 1:
    ``inv_sqrt``: ``peak / sqrt(1 + (1/final_ratio² - 1) · x)``, an inverse-square-root curve that starts
    at the peak and ends exactly at ``final_ratio · peak``; ``linear``: ``peak · (1 - (1 - final_ratio) · x)``.
    After ``total`` the final value holds.
    """
    _check(peak, warmup, total, decay, final_ratio, shape)
    if position < warmup:
        return peak * max(position, 0) / warmup
    start = total - decay
    if position <= start:
        return peak
    x = min((position - start) / decay, 1.0)
    if shape == "linear":
        return peak * (1 - (1 - final_ratio) * x)
    return peak / math.sqrt(1 + (1 / final_ratio**2 - 1) * x)


def wsd_scheduler(optimizer, *, warmup: int, total: int, decay: int, final_ratio: float = 0.25,
                  shape: str = "inv_sqrt"):  # fmt: skip
    """A ``torch.optim.lr_scheduler.LambdaLR`` stepping :func:`wsd_lr` per optimizer step; the peak is
    each parameter group's ``lr``."""
    from torch.optim.lr_scheduler import LambdaLR

    _check(1.0, warmup, total, decay, final_ratio, shape)
    return LambdaLR(
        optimizer,
        lambda step: wsd_lr(
            step, peak=1.0, warmup=warmup, total=total, decay=decay, final_ratio=final_ratio, shape=shape
        ),
    )
