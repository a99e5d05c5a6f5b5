"""PolyNorm (Motif's activation) and PolyNorm(x) ⊙ y (the gated MLP's hot spot) as one-pass Triton kernels.

PolyNorm(x) = w0·norm(x³) + w1·norm(x²) + w2·norm(x) + b, norm(u) = u / sqrt(mean(u², last dim) + eps), in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import nn

from motif_data.kernels._device import launch, tuned, use_triton
from motif_data.kernels.targets import AMD_ARCHS

__all__ = [
    "poly_norm",
    "poly_norm_mul",
    "reference_poly_norm",
    "reference_poly_norm_mul",
    "PolyNorm",
    "PolyNormGatedMLP",
]

# Past this width a row no longer fits the registers of one program even in chunks worth tuning; wider rows take
# the reference path.
MAX_TRITON_WIDTH = 65536


# Two shapes of program, chosen by width (`_program_shape`), each with its own autotune list:
# - CHUNK = 0: one or two whole rows live in registers, so x is read from memory exactly once;
# - CHUNK > 0: a row is walked in CHUNK-wide slices twice (sums, then outputs; the second read hits L2). Few
#   registers a thread means many programs resident per SM and more bytes in flight, which is what keeps a
#   memory-bound kernel at copy speed on wide rows (a whole 8,192-wide row leaves ~2 programs per SM).
# num_warps ≤ 16 keeps every config valid on AMD (64-wide wavefronts, 1,024 threads a block) and NVIDIA.
# On AMD, two whole rows a program spill VGPRs at 16,384 columns on gfx90a, gfx942 and gfx950 (12–468 bytes a
# lane in the forward or backward, `motif-data kernels check`), so AMD lists hold one row a program.
def _whole_row_configs(family: str = "cuda") -> list[triton.Config]:
    shapes = ((1, 4), (1, 8), (1, 16), (2, 8), (2, 16)) if family == "cuda" else ((1, 4), (1, 8), (1, 16))
    return [triton.Config({"BLOCK_M": m, "CHUNK": 0}, num_warps=w) for m, w in shapes]


def _chunked_configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": m, "CHUNK": c}, num_warps=w)
        for m, c, w in ((1, 1024, 4), (1, 2048, 4), (1, 2048, 8), (2, 1024, 4))
    ]


# Up to this width a whole row fits the registers of one program and is read once; past it chunks are the only
# shape that does not spill. Offering both everywhere let the autotuner's short timings pick a chunked program at
# 8,192 columns in one run (fwd+bwd 0.66 ms against 0.49 ms whole-row), so each width gets its own shape.
_WHOLE_ROW_MAX = 16384


def _program_shape(block_n: int) -> int:
    """0: whole rows, 1: chunked rows; indexes the (whole-row, chunked) autotuners of each kernel."""
    return int(block_n > _WHOLE_ROW_MAX)


def _autotuned(kernel) -> dict[str, tuple]:
    # Per target family (targets.py), one autotuner per program shape, each with its own config list, picked
    # in Python by width. Not one autotuner with prune_configs_by: torch.compile (PyTorch ≤ 2.11) fails to
    # trace two launches of such a kernel in one graph ("ListVariable ... is already tracked for mutation",
    # pytorch/pytorch#177600).
    return {
        family: tuple(
            triton.autotune(configs=configs, key=["N", "BLOCK_N", "HAS_GATE"])(kernel)
            for configs in (_whole_row_configs(family), _chunked_configs())
        )
        for family in ("cuda", *AMD_ARCHS)
    }


# ---------------------------------------------------------------------------------------------------------
# Pure-PyTorch reference (the CPU path and the tests' ground truth)
# ---------------------------------------------------------------------------------------------------------
def _reference_fp32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    # fp32 at least; float64 inputs stay float64 so tests can use it as a high-precision ground truth.
    dtype = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(dtype)
    w = weight.to(dtype)

    def norm(u: torch.Tensor) -> torch.Tensor:
        return u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + eps)

    return w[0] * norm(xf.pow(3)) + w[1] * norm(xf.pow(2)) + w[2] * norm(xf) + bias.to(dtype)


def reference_poly_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """PolyNorm in plain PyTorch: fp32 arithmetic, result in x.dtype."""
    return _reference_fp32(x, weight, bias, eps).to(x.dtype)


def reference_poly_norm_mul(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """PolyNorm(x) ⊙ y in plain PyTorch, the product taken in fp32 before the one rounding to x.dtype."""
    p = _reference_fp32(x, weight, bias, eps)
    return (p * y.to(p.dtype)).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _add3(a1, a2, a3, b1, b2, b3):
    return a1 + b1, a2 + b2, a3 + b3


@triton.jit
def _add4(a1, a2, a3, a4, b1, b2, b3, b4):
    return a1 + b1, a2 + b2, a3 + b3, a4 + b4


@triton.jit
def _tile(ptr, stride, rows, cols, mask):
    return tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _coefficients(W, B):
    return (
        tl.load(W).to(tl.float32),
        tl.load(W + 1).to(tl.float32),
        tl.load(W + 2).to(tl.float32),
        tl.load(B).to(tl.float32),
    )


@triton.jit
def _even_powers(x):
    x2 = x * x
    x4 = x2 * x2
    return x2, x4, x4 * x2


@triton.jit
def _poly(x, r1, r2, r3, w0, w1, w2, b):
    x2 = x * x
    return (w0 * r3)[:, None] * (x2 * x) + (w1 * r2)[:, None] * x2 + (w2 * r1)[:, None] * x + b


@triton.jit
def _poly_fwd_tile(X, G, OUT, stride_x, stride_g, stride_o, rows, cols, mask, r1, r2, r3, w0, w1, w2, b,
                   HAS_GATE: tl.constexpr):  # fmt: skip
    out = _poly(_tile(X, stride_x, rows, cols, mask), r1, r2, r3, w0, w1, w2, b)
    if HAS_GATE:
        out = out * _tile(G, stride_g, rows, cols, mask)
    tl.store(OUT + rows[:, None] * stride_o + cols[None, :], out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _poly_norm_fwd(
    X, G, W, B, OUT, RSTD,
    stride_x, stride_g, stride_o,
    M, N, eps,
    BLOCK_N: tl.constexpr, HAS_GATE: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    w0, w1, w2, b = _coefficients(W, B)
    if CHUNK == 0:
        cols = tl.arange(0, BLOCK_N)
        mask = row_ok[:, None] & (cols[None, :] < N)
        x = _tile(X, stride_x, rows, cols, mask)
        if HAS_GATE:
            # Issued before the reductions so both row loads are in flight at once.
            g = _tile(G, stride_g, rows, cols, mask)
        # One three-way reduction: a single pass of shuffles and barriers instead of three.
        s1, s2, s3 = tl.reduce(_even_powers(x), 1, _add3)
    else:
        a1 = tl.zeros([BLOCK_M, CHUNK], tl.float32)
        a2 = tl.zeros([BLOCK_M, CHUNK], tl.float32)
        a3 = tl.zeros([BLOCK_M, CHUNK], tl.float32)
        for start in range(0, N, CHUNK):
            cols = start + tl.arange(0, CHUNK)
            p1, p2, p3 = _even_powers(_tile(X, stride_x, rows, cols, row_ok[:, None] & (cols[None, :] < N)))
            a1 += p1
            a2 += p2
            a3 += p3
        s1, s2, s3 = tl.reduce((a1, a2, a3), 1, _add3)
    r1 = tl.rsqrt(s1 / N + eps)
    r2 = tl.rsqrt(s2 / N + eps)
    r3 = tl.rsqrt(s3 / N + eps)
    if CHUNK == 0:
        out = _poly(x, r1, r2, r3, w0, w1, w2, b)
        if HAS_GATE:
            out = out * g
        tl.store(OUT + rows[:, None] * stride_o + cols[None, :], out.to(OUT.dtype.element_ty), mask=mask)
    else:
        for start in range(0, N, CHUNK):
            cols = start + tl.arange(0, CHUNK)
            _poly_fwd_tile(
                X, G, OUT, stride_x, stride_g, stride_o, rows, cols, row_ok[:, None] & (cols[None, :] < N),
                r1, r2, r3, w0, w1, w2, b, HAS_GATE,
            )  # fmt: skip
    tl.store(RSTD + rows * 3, r1, mask=row_ok)
    tl.store(RSTD + rows * 3 + 1, r2, mask=row_ok)
    tl.store(RSTD + rows * 3 + 2, r3, mask=row_ok)


@triton.jit
def _gated_dy(X, G, DOUT, DG, stride_x, stride_g, stride_do, stride_dg, rows, cols, mask,
              r1, r2, r3, w0, w1, w2, b, HAS_GATE: tl.constexpr, STORE_DG: tl.constexpr):  # fmt: skip
    """x and the gradient reaching PolyNorm's output (dout, or dout ⊙ y with the gate) for one tile; with
    STORE_DG the tile of dy = dout ⊙ PolyNorm(x) is written on the way."""
    x = _tile(X, stride_x, rows, cols, mask)
    dy = _tile(DOUT, stride_do, rows, cols, mask)
    if HAS_GATE:
        g = _tile(G, stride_g, rows, cols, mask)
        if STORE_DG:
            dg = dy * _poly(x, r1, r2, r3, w0, w1, w2, b)
            tl.store(DG + rows[:, None] * stride_dg + cols[None, :], dg.to(DG.dtype.element_ty), mask=mask)
        dy = dy * g
    return x, dy


@triton.jit
def _grad_terms(x, dy):
    # The row sums the backward needs: Σ dy·x, Σ dy·x², Σ dy·x³ (dx's mean terms, dw) and Σ dy (db).
    x2 = x * x
    return dy * x, dy * x2, dy * x2 * x, dy


@triton.jit
def _poly_dx(x, dy, c1, c2, c3, r1, r2, r3, w0, w1, w2):
    # d/du Σ g·u·r = r·g − r³·u·mean(g·u) for each of u = x, x², x³, chained through du/dx = 1, 2x, 3x²;
    # c1..c3 hold the r³·mean(g·u) terms with the chain factors.
    x2 = x * x
    scale = (w2 * r1)[:, None] + (2.0 * w1 * r2)[:, None] * x + (3.0 * w0 * r3)[:, None] * x2
    return dy * scale - x * (c1 + x2 * (c2 + c3 * x2))


@triton.jit
def _poly_norm_bwd(
    X, G, DOUT, W, B, RSTD, DX, DG, PART,
    stride_x, stride_g, stride_do, stride_dx, stride_dg,
    M, N,
    BLOCK_N: tl.constexpr, HAS_GATE: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    # Each row also writes its four terms of the weight and bias gradients to PART[row], so dw/db cost one
    # small (M, 4) sum afterwards instead of atomics, and every row is written once whatever BLOCK_M is.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    r1 = tl.load(RSTD + rows * 3, mask=row_ok, other=0.0)
    r2 = tl.load(RSTD + rows * 3 + 1, mask=row_ok, other=0.0)
    r3 = tl.load(RSTD + rows * 3 + 2, mask=row_ok, other=0.0)
    w0, w1, w2, b = _coefficients(W, B)
    if CHUNK == 0:
        cols = tl.arange(0, BLOCK_N)
        mask = row_ok[:, None] & (cols[None, :] < N)
        x, dy = _gated_dy(
            X, G, DOUT, DG, stride_x, stride_g, stride_do, stride_dg, rows, cols, mask,
            r1, r2, r3, w0, w1, w2, b, HAS_GATE, True,
        )  # fmt: skip
        s1, s2, s3, sb = tl.reduce(_grad_terms(x, dy), 1, _add4)
    else:
        a1 = tl.zeros([BLOCK_M, CHUNK], tl.float32)
        a2 = tl.zeros([BLOCK_M, CHUNK], tl.float32)
        a3 = tl.zeros([BLOCK_M, CHUNK], tl.float32)
        ab = tl.zeros([BLOCK_M, CHUNK], tl.float32)
        for start in range(0, N, CHUNK):
            cols = start + tl.arange(0, CHUNK)
            x, dy = _gated_dy(
                X, G, DOUT, DG, stride_x, stride_g, stride_do, stride_dg, rows, cols,
                row_ok[:, None] & (cols[None, :] < N), r1, r2, r3, w0, w1, w2, b, HAS_GATE, True,
            )  # fmt: skip
            t1, t2, t3, tb = _grad_terms(x, dy)
            a1 += t1
            a2 += t2
            a3 += t3
            ab += tb
        s1, s2, s3, sb = tl.reduce((a1, a2, a3, ab), 1, _add4)
    c1 = (w2 * r1 * r1 * r1 * s1 / N)[:, None]
    c2 = (2.0 * w1 * r2 * r2 * r2 * s2 / N)[:, None]
    c3 = (3.0 * w0 * r3 * r3 * r3 * s3 / N)[:, None]
    if CHUNK == 0:
        dx = _poly_dx(x, dy, c1, c2, c3, r1, r2, r3, w0, w1, w2)
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    else:
        for start in range(0, N, CHUNK):
            cols = start + tl.arange(0, CHUNK)
            mask = row_ok[:, None] & (cols[None, :] < N)
            x, dy = _gated_dy(
                X, G, DOUT, DG, stride_x, stride_g, stride_do, stride_dg, rows, cols, mask,
                r1, r2, r3, w0, w1, w2, b, HAS_GATE, False,
            )  # fmt: skip
            dx = _poly_dx(x, dy, c1, c2, c3, r1, r2, r3, w0, w1, w2)
            tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(PART + rows * 4, s3 * r3, mask=row_ok)
    tl.store(PART + rows * 4 + 1, s2 * r2, mask=row_ok)
    tl.store(PART + rows * 4 + 2, s1 * r1, mask=row_ok)
    tl.store(PART + rows * 4 + 3, sb, mask=row_ok)


_POLY_NORM_FWD = _autotuned(_poly_norm_fwd)
_POLY_NORM_BWD = _autotuned(_poly_norm_bwd)


def _rows(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


class _PolyNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gate, weight, bias, eps):
        shape = x.shape
        x2d = _rows(x)
        g2d = _rows(gate) if gate is not None else x2d
        m, n = x2d.shape
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
        rstd = torch.empty((m, 3), dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(n)
        launch(
            tuned(_POLY_NORM_FWD, x.device)[_program_shape(block)], lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),),
            x2d, g2d, weight, bias, out, rstd,
            x2d.stride(0), g2d.stride(0), out.stride(0),
            m, n, eps,
            BLOCK_N=block, HAS_GATE=gate is not None,
        )  # fmt: skip
        ctx.save_for_backward(x2d, gate if gate is not None else None, weight, bias, rstd)
        ctx.has_gate = gate is not None
        ctx.shape = shape
        return out.view(shape)

    @staticmethod
    def backward(ctx, dout):
        x2d, gate, weight, bias, rstd = ctx.saved_tensors
        m, n = x2d.shape
        do2d = _rows(dout)
        g2d = _rows(gate) if ctx.has_gate else x2d
        dx = torch.empty_like(x2d)
        dg = torch.empty_like(g2d) if ctx.has_gate else dx
        part = torch.empty((m, 4), dtype=torch.float32, device=x2d.device)
        block = triton.next_power_of_2(n)
        launch(
            tuned(_POLY_NORM_BWD, x2d.device)[_program_shape(block)], lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),),
            x2d, g2d, do2d, weight, bias, rstd, dx, dg, part,
            x2d.stride(0), g2d.stride(0), do2d.stride(0), dx.stride(0), dg.stride(0),
            m, n,
            BLOCK_N=block, HAS_GATE=ctx.has_gate,
        )  # fmt: skip
        sums = part.sum(0)
        dw = sums[:3].to(weight.dtype)
        db = sums[3:].to(bias.dtype)
        dgate = dg.view(ctx.shape) if ctx.has_gate else None
        return dx.view(ctx.shape), dgate, dw, db, None


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, y: torch.Tensor | None = None) -> None:
    problems = []
    if weight.shape != (3,):
        problems.append(f"weight must have shape (3,), got {tuple(weight.shape)}")
    if bias.shape != (1,):
        problems.append(f"bias must have shape (1,), got {tuple(bias.shape)}")
    if x.ndim == 0 or x.shape[-1] == 0:
        problems.append(f"x needs a non-empty last dim, got shape {tuple(x.shape)}")
    if y is not None and y.shape != x.shape:
        problems.append(f"y must have x's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    if problems:
        raise ValueError("poly_norm: " + "; ".join(problems))


def _triton_ok(x: torch.Tensor, *others: torch.Tensor) -> bool:
    return use_triton(x, *others) and x.shape[-1] <= MAX_TRITON_WIDTH and x.numel() > 0


def poly_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """PolyNorm over the last dim of x; weight (3,), bias (1,); fp32 inside, result in x.dtype."""
    _check(x, weight, bias)
    if _triton_ok(x, weight, bias):
        return _PolyNormFn.apply(x, None, weight, bias, eps)
    return reference_poly_norm(x, weight, bias, eps)


def poly_norm_mul(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """PolyNorm(x) ⊙ y in one pass (x is the gate projection, y the up projection); result in x.dtype."""
    _check(x, weight, bias, y)
    if _triton_ok(x, y, weight, bias):
        return _PolyNormFn.apply(x, y, weight, bias, eps)
    return reference_poly_norm_mul(x, y, weight, bias, eps)


class PolyNorm(nn.Module):
    """PolyNorm activation with learnable weight (3,) = 1/3 and bias (1,) = 0."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((3,), 1.0 / 3.0))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return poly_norm(x, self.weight, self.bias, self.eps)


class PolyNormGatedMLP(nn.Module):
    """Motif's MLP: down_proj(PolyNorm(gate_proj(x)) ⊙ up_proj(x)), the activation and product fused.
    Parameter names are Motif's (``gate_proj``, ``up_proj``, ``down_proj``, ``act_fn``); ``reference=True``
    runs the pure-PyTorch activation instead of the Triton kernel."""

    def __init__(
        self, hidden_size: int, intermediate_size: int, eps: float = 1e-6, *, reference: bool = False
    ) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn = PolyNorm(eps)
        self.reference = reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.act_fn
        gated = (reference_poly_norm_mul if self.reference else poly_norm_mul)(
            self.gate_proj(x), self.up_proj(x), act.weight, act.bias, act.eps
        )
        return self.down_proj(gated)
