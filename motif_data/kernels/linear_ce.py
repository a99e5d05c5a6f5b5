"""Fused linear cross-entropy for a tied embedding: the (tokens × vocab) logits never exist in full.

Backends: two maintained libraries (cut-cross-entropy, Liger-Kernel); "dense", ours, which computes the
gradient during the forward with three cuBLAS GEMMs and one Triton pass a chunk of tokens; and a chunked
pure-PyTorch function that computes the same loss and gradients a slab of tokens at a time on any device.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

from motif_data.kernels._device import interpreting, launch, use_triton

__all__ = ["linear_cross_entropy", "reference_linear_cross_entropy", "LinearCrossEntropy", "BACKENDS"]

BACKENDS = ("cce", "liger", "dense", "chunked")
_REDUCTIONS = ("mean", "sum", "none")
# Logit elements per chunk of the fallback: 2**24 fp32 values (64 MiB) on the CPU; on a GPU without either
# library, 2**27 (512 MiB), since narrow chunks leave the matrix units idle.
_CHUNK_ELEMENTS = 1 << 24
_CHUNK_ELEMENTS_GPU = 1 << 27
# The dense backend's logits buffer: 1 GiB (~2,400 tokens at 219,520 ids in bf16). Each chunk reads and writes
# the fp32 weight gradient once, so fewer, larger chunks are faster: on an H100 at 32,768 x 768 x 219,520,
# 69.8 ms with 1 GiB, 77.7 ms with 512 MiB, 97.8 ms with 256 MiB.
_DENSE_LOGITS_BYTES = 1 << 30
_DENSE_BLOCK = 4096  # vocab columns a step of the softmax pass; fp32, 16 a thread at 8 warps


def reference_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Plain logits → cross_entropy: the full (N, V) logits tensor, as an unfused model computes it."""
    logits = hidden @ weight.to(hidden.dtype).t()
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction=reduction)


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out ← (hidden @ weightᵀ) in fp32, written into the reused buffer (fresh chunk-sized tensors cost the
    CPU a page fault per 4 KiB each time: the in-place version is ~35 % faster at 219,520 ids)."""
    if hidden.dtype == out.dtype:
        return torch.mm(hidden, weight.t(), out=out)
    return out.copy_(hidden @ weight.t())


class _ChunkedLinearCE(torch.autograd.Function):
    """Loss per token from chunks of logits; backward recomputes each chunk, so memory stays O(chunk × V).
    Any upstream gradient (per-token weights included), unlike the dense backend."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk):
        n = hidden.shape[0]
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, 0)
        buffer = torch.empty((min(chunk, n), weight.shape[0]), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            logits = _chunk_logits(hidden[sl], weight, buffer[: len(safe_targets[sl])])
            target_logit = logits.gather(1, safe_targets[sl, None]).squeeze(1)
            top = logits.amax(dim=1, keepdim=True)
            lse[sl] = top.squeeze(1) + logits.sub_(top).exp_().sum(dim=1).log()  # overwrites the chunk
            losses[sl] = torch.where(valid[sl], lse[sl] - target_logit, 0.0)
        ctx.save_for_backward(hidden, weight, safe_targets, valid, lse)
        ctx.chunk = chunk
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        hidden, weight, targets, valid, lse = ctx.saved_tensors
        chunk, n = ctx.chunk, hidden.shape[0]
        coeff = torch.where(valid, grad_losses.float(), 0.0)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        buffer = torch.empty((min(chunk, n), weight.shape[0]), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            grad_logits = _chunk_logits(hidden[sl], weight, buffer[: len(targets[sl])])
            # d loss_i / d logits_i = softmax_i − onehot(target_i), scaled by the upstream gradient of token i.
            grad_logits.sub_(lse[sl, None]).exp_()
            grad_logits[torch.arange(grad_logits.shape[0], device=grad_logits.device), targets[sl]] -= 1.0
            grad_logits.mul_(coeff[sl, None])
            grad_logits = grad_logits.to(hidden.dtype)  # the products run in the activations' dtype
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[sl])
            _accumulate(grad_weight, grad_logits.t(), hidden[sl])
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


@triton.jit
def _softmax_minus_onehot_kernel(LOGITS, TARGETS, LOSS, stride, V, ignore_index, WRITE_GRAD: tl.constexpr,
                                 BLOCK: tl.constexpr):  # fmt: skip
    # A row a program: its log-sum-exp by an online max/sum over the vocab, the loss, then (WRITE_GRAD) the row
    # overwritten in place by d loss / d logits = softmax − onehot(target), zero for an ignored token.
    row = tl.program_id(0)
    ptr = LOGITS + row.to(tl.int64) * stride
    target = tl.load(TARGETS + row)
    valid = target != ignore_index
    safe_target = tl.where(valid, target, 0)
    m = tl.full([], float("-inf"), tl.float32)
    s = tl.zeros([], tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(s)
    x_target = tl.load(ptr + safe_target).to(tl.float32)
    tl.store(LOSS + row, tl.where(valid, lse - x_target, 0.0))
    if WRITE_GRAD:
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < V
            x = tl.load(ptr + cols, mask=mask, other=0.0).to(tl.float32)
            g = tl.exp(x - lse) - tl.where(cols == safe_target, 1.0, 0.0)
            tl.store(ptr + cols, tl.where(valid, g, 0.0).to(LOGITS.dtype.element_ty), mask=mask)


@functools.cache
def gemm_sums_in_fp32(device: torch.device) -> bool:
    """Whether `addmm(out_dtype=float32)` of half-precision operands runs on `device` and gives the fp32 sum.

    Proven once per device, not assumed: PyTorch documents it for CUDA; on ROCm it goes to hipBLASLt, which no
    run of ours has seen yet. The probe sums a product of random bf16 operands into a random fp32 matrix and
    compares with the same sum in float64 (exact bf16 products, fp32 accumulation: ~1e-6 relative).
    """
    if device.type != "cuda":
        return False  # the CPU has no addmm.dtype kernel; the meta device (kernels check) needs no answer
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(128, 256, device=device, generator=g).bfloat16()
    b = torch.randn(256, 96, device=device, generator=g).bfloat16()
    acc = torch.randn(128, 96, device=device, generator=g)
    want = acc.double() + a.double() @ b.double()
    try:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    except (RuntimeError, NotImplementedError):
        return False
    return bool(((acc.double() - want).norm() / want.norm()) < 1e-4)


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b inside the GEMM (beta = 1): no (V, d) temporary a chunk. An fp32 acc of half-precision
    operands uses addmm's out_dtype where `gemm_sums_in_fp32` proved it, so the running sum is never rounded
    to bf16; elsewhere each chunk's product is rounded once to the operands' dtype and added in fp32."""
    if acc.dtype == a.dtype:
        torch.addmm(acc, a, b, out=acc)
    elif gemm_sums_in_fp32(acc.device):
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:
        acc.add_(a @ b)


class _DenseLinearCE(torch.autograd.Function):
    """Gradient in the forward: the loss is the last op of the graph, so per chunk of tokens the logits are
    formed once (cuBLAS), turned into their gradient in place (Triton), and used at once for dH = G·W and
    dW += Gᵀ·H. Three GEMMs a token and no data-dependent skipping: the same cost at every stage of training.
    The backward only scales the stored gradients, which is exact for a uniform upstream gradient (a mean or a
    sum of the losses, the training case) and refused otherwise."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk, grad_of):
        # grad_of: (hidden, weight) flags, decided by the caller (grad mode is off inside forward).
        n, vocab = hidden.shape[0], weight.shape[0]
        want_grad = any(grad_of)
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if grad_of[0] else None
        # The weight gradient is summed over the chunks in the weight's own dtype: fp32 master weights (the
        # training case) get an exact fp32 sum with nothing to cast; bf16 weights a bf16 one, as Liger-Kernel.
        grad_w = torch.zeros_like(weight) if grad_of[1] else None
        weight = weight.to(hidden.dtype)  # the products run in the activations' dtype, as under autocast
        logits = torch.empty((min(chunk, n), vocab), dtype=hidden.dtype, device=hidden.device)
        for start in range(0, n, chunk):
            h = hidden[start : start + chunk]
            g = logits[: h.shape[0]]
            torch.mm(h, weight.t(), out=g)
            launch(
                _softmax_minus_onehot_kernel, (h.shape[0],),
                g, targets[start : start + chunk], losses[start : start + chunk], g.stride(0), vocab,
                ignore_index, WRITE_GRAD=want_grad, BLOCK=min(_DENSE_BLOCK, triton.next_power_of_2(vocab)),
                num_warps=8,
            )  # fmt: skip
            if grad_h is not None:
                torch.mm(g, weight, out=grad_h[start : start + chunk])
            if grad_w is not None:
                _accumulate(grad_w, g.t(), h)
        ctx.grads = (grad_h, grad_w)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        if ctx.grads is None:
            raise RuntimeError(
                "linear_cross_entropy(backend='dense') supports one backward through its losses"
            )
        (grad_h, grad_w), ctx.grads = ctx.grads, None  # scaled in place below: a second pass would be wrong
        # A mean or a sum reaches here as one value expanded over the tokens (stride 0): uniform without
        # looking. Anything else is checked on the device, which costs a host sync.
        if grad_losses.stride(0) != 0 and grad_losses.numel() > 1:
            if not bool(torch.all(grad_losses == grad_losses[:1])):
                raise ValueError(
                    "linear_cross_entropy(backend='dense') needs a uniform upstream gradient (a mean or sum of "
                    "the losses); mask tokens with ignore_index, or use another backend"
                )
        scale = grad_losses[:1]
        dh = grad_h.mul_(scale.to(grad_h.dtype)) if grad_h is not None else None
        dw = grad_w.mul_(scale.to(grad_w.dtype)) if grad_w is not None else None
        return dh, dw, None, None, None, None


@torch.compiler.disable  # eager between compiled graphs: its chunk loop and in-place GEMMs are not for tracing
def _dense(hidden, weight, targets, ignore_index, reduction, chunk=None):
    if not (use_triton(hidden, weight, targets) or interpreting()):
        raise RuntimeError(
            "linear_cross_entropy(backend='dense') needs a GPU with Triton (or TRITON_INTERPRET=1)"
        )
    if chunk is None:
        chunk = max(128, _DENSE_LOGITS_BYTES // (weight.shape[0] * hidden.element_size()) // 128 * 128)
    grad_on = torch.is_grad_enabled()
    grad_of = (grad_on and hidden.requires_grad, grad_on and weight.requires_grad)
    losses = _DenseLinearCE.apply(hidden, weight, targets, ignore_index, chunk, grad_of)
    return _reduce(losses, targets, ignore_index, reduction)


def _cce(hidden, weight, targets, ignore_index, reduction):
    from cut_cross_entropy import linear_cross_entropy as cce_linear_cross_entropy

    return cce_linear_cross_entropy(hidden, weight, targets, ignore_index=ignore_index, reduction=reduction)


def _liger(hidden, weight, targets, ignore_index, reduction):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(
        hidden, weight, targets, ignore_index=ignore_index, reduction=reduction
    )


def default_backend(device: torch.device) -> str:
    """The fastest backend that runs here. On a GPU, NVIDIA or AMD: dense, ours (measured against both
    libraries on an H100: 68.7 ms vs cut-cross-entropy 81.5 ms and Liger-Kernel 185.6 ms on the small model's
    real hidden states at step 200; docs/kernels.md). It is plain Triton (its pass compiles for gfx90a, gfx942
    and gfx950: `motif-data kernels check`) and BLAS calls whose one vendor-specific feature, the fp32 sum of
    bf16 GEMMs, is proven on the device before use (`gemm_sums_in_fp32`). CPU: the chunked PyTorch function."""
    return "dense" if device.type == "cuda" else "chunked"


_IMPLS = {"cce": _cce, "liger": _liger, "dense": _dense, "chunked": _chunked}


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

    hidden (N, d), weight (V, d) of hidden's dtype or wider (fp32 master weights; the products run in hidden's
    dtype), targets (N,) int64; reduction "mean" (over non-ignored tokens), "sum" or
    "none" (per-token losses, 0 where ignored). backend: "cce", "liger", "dense", "chunked" or None for the
    default. "dense" takes only a uniform upstream gradient: reduce its "none" losses by a mean or a sum.
    """
    problems = []
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        problems.append(
            f"need hidden (N, d) and weight (V, d), got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if torch.promote_types(hidden.dtype, weight.dtype) != weight.dtype:
        problems.append(f"weight ({weight.dtype}) must be of hidden's dtype ({hidden.dtype}) or wider")
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
    if name != "dense":  # dense casts per use and returns the weight's gradient in the weight's dtype
        weight = weight.to(hidden.dtype)
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
