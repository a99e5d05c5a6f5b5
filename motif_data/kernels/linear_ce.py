"""Fused linear cross-entropy for a tied embedding: the (tokens × vocab) logits never exist in full.

On a GPU it hands the work to a maintained library (cut-cross-entropy or Liger-Kernel); on the CPU a chunked
pure-PyTorch function computes the same loss and gradients a slab of tokens at a time.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["linear_cross_entropy", "reference_linear_cross_entropy", "LinearCrossEntropy", "BACKENDS"]

BACKENDS = ("cce", "liger", "chunked")
_REDUCTIONS = ("mean", "sum", "none")
# Logit elements per chunk of the fallback: 2**24 fp32 values (64 MiB) on the CPU; on a GPU without either
# library, 2**27 (512 MiB), since narrow chunks leave the matrix units idle.
_CHUNK_ELEMENTS = 1 << 24
_CHUNK_ELEMENTS_GPU = 1 << 27


def reference_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Plain logits → cross_entropy: the full (N, V) logits tensor, as an unfused model computes it."""
    logits = hidden @ weight.t()
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction=reduction)


class _ChunkedLinearCE(torch.autograd.Function):
    """Loss per token from chunks of logits; backward recomputes each chunk, so memory stays O(chunk × V)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk):
        n = hidden.shape[0]
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            logits = (hidden[sl] @ weight.t()).float()
            lse[sl] = torch.logsumexp(logits, dim=-1)
            target_logit = logits.gather(1, safe_targets[sl, None]).squeeze(1)
            losses[sl] = torch.where(valid[sl], lse[sl] - target_logit, torch.zeros_like(target_logit))
        ctx.save_for_backward(hidden, weight, safe_targets, valid, lse)
        ctx.chunk = chunk
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        hidden, weight, targets, valid, lse = ctx.saved_tensors
        chunk = ctx.chunk
        coeff = torch.where(valid, grad_losses.float(), torch.zeros_like(grad_losses, dtype=torch.float32))
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, hidden.shape[0], chunk):
            sl = slice(start, start + chunk)
            logits = (hidden[sl] @ weight.t()).float()
            # d loss_i / d logits_i = softmax_i − onehot(target_i), scaled by the upstream gradient of token i.
            grad_logits = torch.exp(logits - lse[sl, None])
            grad_logits[torch.arange(grad_logits.shape[0], device=grad_logits.device), targets[sl]] -= 1.0
            grad_logits *= coeff[sl, None]
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[sl] = grad_logits @ weight
            grad_weight += (grad_logits.t() @ hidden[sl]).float()
        return grad_hidden, grad_weight.to(weight.dtype), None, None, None


def _reduce(losses: torch.Tensor, targets: torch.Tensor, ignore_index: int, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "sum":
        return total
    # F.cross_entropy's "mean": over the tokens that are not ignored (NaN when every token is ignored).
    return total / (targets != ignore_index).sum()


def _chunked(hidden, weight, targets, ignore_index, reduction, chunk=None):
    if chunk is None:
        budget = _CHUNK_ELEMENTS_GPU if hidden.device.type == "cuda" else _CHUNK_ELEMENTS
        chunk = max(1, budget // max(1, weight.shape[0]))
    losses = _ChunkedLinearCE.apply(hidden, weight, targets, ignore_index, chunk)
    return _reduce(losses, targets, ignore_index, reduction)


def _cce(hidden, weight, targets, ignore_index, reduction):
    from cut_cross_entropy import linear_cross_entropy as cce_linear_cross_entropy

    return cce_linear_cross_entropy(hidden, weight, targets, ignore_index=ignore_index, reduction=reduction)


def _liger(hidden, weight, targets, ignore_index, reduction):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(
        hidden, weight, targets, ignore_index=ignore_index, reduction=reduction
    )


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def default_backend(device: torch.device) -> str:
    """The fastest backend that runs here: cut-cross-entropy on NVIDIA, Liger-Kernel on ROCm (where
    cut-cross-entropy is not validated), the chunked PyTorch function on the CPU or when neither is installed."""
    if device.type != "cuda":
        return "chunked"
    if torch.version.hip is None and _installed("cut_cross_entropy"):
        return "cce"
    if _installed("liger_kernel"):
        return "liger"
    return "chunked"


_IMPLS = {"cce": _cce, "liger": _liger, "chunked": _chunked}


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets) without the full logits.

    hidden (N, d), weight (V, d), targets (N,) int64; reduction "mean" (over non-ignored tokens), "sum" or
    "none" (per-token losses, 0 where ignored). backend: "cce", "liger", "chunked" or None for the default.
    """
    problems = []
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        problems.append(
            f"need hidden (N, d) and weight (V, d), got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if targets.shape != hidden.shape[:1]:
        problems.append(f"targets must have shape ({hidden.shape[0]},), got {tuple(targets.shape)}")
    if targets.dtype != torch.int64:
        problems.append(f"targets must be int64, got {targets.dtype}")
    if reduction not in _REDUCTIONS:
        problems.append(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if backend is not None and backend not in BACKENDS:
        problems.append(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if problems:
        raise ValueError("linear_cross_entropy: " + "; ".join(problems))
    name = backend or default_backend(hidden.device)
    return _IMPLS[name](hidden, weight, targets, ignore_index, reduction)


class LinearCrossEntropy(nn.Module):
    """Loss head for a tied embedding: forward(hidden, weight, targets) → loss, weight being the embedding's."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", backend: str | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.backend = backend

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(
            hidden,
            weight,
            targets,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            backend=self.backend,
        )
