"""Differential attention: softmax(Q₁K₁ᵀ·s)V − λ·softmax(Q₂K₂ᵀ·s)V with flash-style tiled Triton kernels.

q, k: (B, 2H, S, D), maps 2h and 2h+1 belong to differential head h; v: (B, H, S, Dv); λ a 0-dim tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

from motif_data.kernels._device import launch, precision, tuned, use_triton
from motif_data.kernels.rmsnorm import RMSNorm

__all__ = ["diff_attention", "reference_diff_attention", "DifferentialAttention", "lambda_init"]


# ---------------------------------------------------------------------------------------------------------
# Pure-PyTorch reference (the CPU path and the tests' ground truth): two scaled_dot_product_attention calls
# ---------------------------------------------------------------------------------------------------------
def reference_diff_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lambda_: torch.Tensor,
    *,
    causal: bool = True,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """Two SDPA calls, one per softmax map, sharing V; result (B, H, S, Dv) in v.dtype."""
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    q1, q2 = q[:, 0::2], q[:, 1::2]
    k1, k2 = k[:, 0::2], k[:, 1::2]
    o1 = F.scaled_dot_product_attention(q1, k1, v, is_causal=causal, scale=scale)
    o2 = F.scaled_dot_product_attention(q2, k2, v, is_causal=causal, scale=scale)
    return o1 - lambda_.to(o2.dtype) * o2


# ---------------------------------------------------------------------------------------------------------
# Triton kernels. Scores live in the log2 domain (qk_scale = s·log2 e) so the softmax uses exp2; each program
# walks its key (or query) blocks in two stages: blocks that need no mask, then the diagonal / ragged tail.
# Block sizes come from an autotune list per target family (targets.py); num_warps ≤ 16 everywhere.
# ---------------------------------------------------------------------------------------------------------
def _configs(entries):
    # (BLOCK_M, BLOCK_N, num_warps, num_stages[, HIP options such as waves_per_eu])
    return [
        triton.Config({"BLOCK_M": e[0], "BLOCK_N": e[1], **(e[4] if len(e) > 4 else {})}, num_warps=e[2],
                      num_stages=e[3])
        for e in entries
    ]  # fmt: skip


# NVIDIA: measured on an H100 (docs/kernels.md); the first entry is the interpreter's choice.
_CUDA_FWD = [(64, 32, 4, 1), (128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (128, 64, 16, 2),
             (128, 128, 16, 2)]  # fmt: skip
_CUDA_BWD_KV = [(32, 32, 4, 1), (64, 64, 8, 2), (32, 64, 4, 2), (32, 128, 8, 2), (32, 64, 8, 2)]
_CUDA_BWD_Q = [(32, 32, 4, 1), (64, 64, 8, 2), (64, 32, 4, 2), (128, 32, 8, 3), (128, 64, 8, 1)]
# AMD: what each arch's autotuner may offer. `motif-data kernels check --candidates` compiles every candidate
# below with the HIP backend and reports LDS, VGPRs, scratch and occupancy; an arch lists the candidates that
# fit its LDS and do not spill at head dims 64/128 and 128/256 (bf16), and CI's check fails if one stops fitting.
_WPE2 = {"waves_per_eu": 2}
_AMD_FWD = [(64, 32, 4, 1), (64, 64, 4, 1), (128, 32, 4, 1), (128, 64, 4, 1), (128, 32, 8, 1), (128, 64, 8, 1),
            (64, 32, 4, 2), (64, 64, 4, 2), (128, 32, 8, 2), (128, 64, 8, 2), (128, 64, 4, 1, _WPE2),
            (64, 64, 4, 1, _WPE2)]  # fmt: skip
_AMD_BWD_KV = [(32, 32, 4, 1), (16, 32, 4, 1), (16, 64, 4, 1), (32, 64, 4, 1), (64, 32, 4, 1), (32, 64, 8, 1),
               (64, 64, 8, 1), (32, 128, 8, 1), (32, 64, 4, 2), (64, 64, 8, 2), (16, 128, 4, 1), (16, 64, 8, 1),
               (16, 128, 8, 1)]  # fmt: skip
_AMD_BWD_Q = [(32, 32, 4, 1), (32, 16, 4, 1), (64, 16, 4, 1), (64, 32, 4, 1), (32, 64, 4, 1), (64, 32, 8, 1),
              (64, 64, 8, 1), (128, 32, 8, 1), (64, 32, 4, 2), (128, 64, 8, 1), (128, 16, 4, 1), (128, 16, 8, 1),
              (64, 16, 8, 1)]  # fmt: skip
# Indexes into the candidates, per arch, read off `kernels check --candidates` (Triton 3.9, 2026-12-01). What
# the report showed: at 8 warps a 512-lane workgroup caps a lane at 256 VGPRs, and there the 128 × 64 forward
# tiles (gfx950's at one stage excepted) and the backward tiles of 32 × 64 and up spill; at 4 warps the dK/dV
# tiles of 32 × 64 and up and the dQ tile 32 × 64 spill on gfx90a and gfx942 (dK/dV 64 × 32 on gfx950 too);
# waves_per_eu = 2 made no config spill-free that was not already and raised no occupancy, so no list has it.
_LISTS = {
    "fwd": (_CUDA_FWD, _AMD_FWD, {"gfx90a": [0, 1, 2, 3, 4, 6, 7], "gfx942": [0, 1, 2, 3, 4, 6, 7, 8],
                                  "gfx950": [0, 1, 2, 3, 4, 5, 6, 7, 8]}),
    "bwd_kv": (_CUDA_BWD_KV, _AMD_BWD_KV, {"gfx90a": [0, 1, 2, 10, 11, 12], "gfx942": [0, 1, 2, 10, 11, 12],
                                           "gfx950": [0, 1, 2, 3, 10, 11, 12]}),
    "bwd_q": (_CUDA_BWD_Q, _AMD_BWD_Q, {"gfx90a": [0, 1, 2, 3, 10, 11, 12], "gfx942": [0, 1, 2, 3, 8, 10, 11, 12],
                                        "gfx950": [0, 1, 2, 3, 4, 8, 10, 11, 12]}),
}  # fmt: skip


def _per_target(name):
    cuda, amd, picks = _LISTS[name]
    lists = {"cuda": _configs(cuda)}
    for arch, pick in picks.items():
        lists[arch] = _configs([amd[i] for i in pick])
    return lists, _configs(amd)


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    # "upcast" serves the CPU interpreter, whose bf16 tl.dot is wrong (Triton 3.9): the operands are still
    # rounded to bf16 as on the GPU, only the product runs in fp32.
    if PREC == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _batch_head(H):
    # Grid axis 1 walks (batch, head) pairs; offsets from them are int64 (B·H·S·D can pass 2³¹).
    bh = tl.program_id(1)
    return bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64)


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_m, lo, hi, stride_ks, stride_vs, S, qk_scale,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASKED:
            k = tl.load(k_ptrs + start_n * stride_ks, mask=offs_n[None, :] < S, other=0.0)
        else:
            k = tl.load(k_ptrs + start_n * stride_ks)
        s = _dot(q, k, PREC)
        if MASKED:
            valid = offs_n[None, :] < S
            if CAUSAL:
                valid = valid & (offs_m[:, None] >= offs_n[None, :])
            s = tl.where(valid, s, float("-inf"))
        # The scale is applied inside exp2's argument (one FMA per score) rather than to every score first.
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs + start_n * stride_vs, mask=offs_n[:, None] < S, other=0.0)
        else:
            v = tl.load(v_ptrs + start_n * stride_vs)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PREC)
        m_i = m_new
    return acc, l_i, m_i


# One softmax map a launch, launched twice: the second map (MAP = 1) first, which writes O2 (the backward needs
# it) and its log-sum-exp; then the first (MAP = 0), whose epilogue reads its O2 tile and writes O = O1 − λ·O2.
# Computing both maps in one program over one pass of K/V (V loaded once) needs two BLOCK_M × Dv fp32
# accumulators, 128 × 256 each at Motif's shape: they do not fit the registers, and splitting Dv over two
# programs instead computes every QKᵀ twice. H100, B = 4, S = 4,096, same run: that one-pass kernel 1.287 ms,
# this one 0.951 ms, two SDPA calls 1.075 ms.
@triton.jit
def _diff_attn_fwd_kernel(
    Q, K, V, LAM, OUT, OUT2, LSE,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os,
    H, S, qk_scale,
    D: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr, MAP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # torch.compile (Inductor) passes Python floats as fp64 scalars; keep the softmax math in fp32.
    qk_scale = tl.full([], qk_scale, tl.float32)
    pid_m = tl.program_id(0)
    bh, b, h = _batch_head(H)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    row_ok = offs_m[:, None] < S
    q_ptrs = Q + b * stride_qb + (2 * h + MAP) * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok, other=0.0)
    # K tiles are read transposed: (D, BLOCK_N).
    k_ptrs = K + b * stride_kb + (2 * h + MAP) * stride_kh + offs_n[None, :] * stride_ks + offs_d[:, None]
    v_ptrs = V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vs + offs_dv[None, :]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DV], tl.float32)
    if CAUSAL:
        mid = (pid_m * BLOCK_M // BLOCK_N) * BLOCK_N
        hi = tl.minimum((pid_m + 1) * BLOCK_M, S)
    else:
        mid = (S // BLOCK_N) * BLOCK_N
        hi = S
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_m, 0, mid,
        stride_ks, stride_vs, S, qk_scale, BLOCK_N, False, CAUSAL, PREC,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_m, mid, hi,
        stride_ks, stride_vs, S, qk_scale, BLOCK_N, True, CAUSAL, PREC,
    )  # fmt: skip
    o = acc / l_i[:, None]
    o2_off = (bh.to(tl.int64) * S + offs_m[:, None]) * DV + offs_dv[None, :]
    if MAP == 1:
        tl.store(OUT2 + o2_off, o.to(OUT2.dtype.element_ty), mask=row_ok)
    else:
        # O2 as stored (rounded to v's dtype), as the two-SDPA reference subtracts it.
        o2 = tl.load(OUT2 + o2_off, mask=row_ok, other=0.0).to(tl.float32)
        out = o - tl.load(LAM).to(tl.float32) * o2
        o_off = b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_dv[None, :]
        tl.store(OUT + o_off, out.to(OUT.dtype.element_ty), mask=row_ok)
    tl.store(LSE + (bh.to(tl.int64) * S + offs_m) * 2 + MAP, m_i + tl.math.log2(l_i), mask=offs_m < S)


@triton.jit
def _diff_attn_bwd_delta_kernel(
    OUT, OUT2, DO, LAM, DELTA,
    stride_ob, stride_oh, stride_os,
    stride_dob, stride_doh, stride_dos,
    ROWS, H, S,
    DV: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    # δ1 = rowsum(dO ⊙ O1), δ2 = rowsum(dO ⊙ O2) with O1 = O + λ·O2: the softmax-backward row terms.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_DV)
    mask = (rows[:, None] < ROWS) & (cols[None, :] < DV)
    r64 = rows.to(tl.int64)
    b, h, s = r64 // (H * S), (r64 // S) % H, r64 % S
    o_off = (b * stride_ob + h * stride_oh + s * stride_os)[:, None] + cols[None, :]
    do_off = (b * stride_dob + h * stride_doh + s * stride_dos)[:, None] + cols[None, :]
    do = tl.load(DO + do_off, mask=mask, other=0.0).to(tl.float32)
    o = tl.load(OUT + o_off, mask=mask, other=0.0).to(tl.float32)
    o2 = tl.load(OUT2 + r64[:, None] * DV + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    lam = tl.load(LAM).to(tl.float32)
    d2 = tl.sum(do * o2, 1)
    d1 = tl.sum(do * o, 1) + lam * d2
    tl.store(DELTA + rows * 2, d1, mask=rows < ROWS)
    tl.store(DELTA + rows * 2 + 1, d2, mask=rows < ROWS)


@triton.jit
def _bwd_kv_inner(
    dk1, dk2, dv, k1, k2, v, q1_ptrs, q2_ptrs, do_ptrs, LSE_BH, DELTA_BH, offs_n, lo, hi,
    stride_qs, stride_dos, S, qk_scale, lam,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, PREC: tl.constexpr, PART: tl.constexpr,
):  # fmt: skip
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < S
        # Rows past S load as zeros (q, dO, lse, δ): their terms vanish, so only loads need the mask.
        q1 = tl.load(q1_ptrs + start_m * stride_qs, mask=row_ok[:, None], other=0.0)
        q2 = tl.load(q2_ptrs + start_m * stride_qs, mask=row_ok[:, None], other=0.0)
        do = tl.load(do_ptrs + start_m * stride_dos, mask=row_ok[:, None], other=0.0)
        lse1 = tl.load(LSE_BH + offs_m * 2, mask=row_ok, other=0.0)
        lse2 = tl.load(LSE_BH + offs_m * 2 + 1, mask=row_ok, other=0.0)
        # Transposed scores (BLOCK_N, BLOCK_M): this program owns the keys.
        p1 = tl.math.exp2(_dot(k1, tl.trans(q1), PREC) * qk_scale - lse1[None, :])
        p2 = tl.math.exp2(_dot(k2, tl.trans(q2), PREC) * qk_scale - lse2[None, :])
        if MASKED:
            valid = offs_m[None, :] >= offs_n[:, None]
            p1 = tl.where(valid, p1, 0.0)
            p2 = tl.where(valid, p2, 0.0)
        if PART == "dv":
            dv += _dot((p1 - lam * p2).to(do.dtype), do, PREC)
        else:
            d1 = tl.load(DELTA_BH + offs_m * 2, mask=row_ok, other=0.0)
            d2 = tl.load(DELTA_BH + offs_m * 2 + 1, mask=row_ok, other=0.0)
            dp = _dot(v, tl.trans(do), PREC)
            ds1 = p1 * (dp - d1[None, :])
            ds2 = (-lam) * p2 * (dp - d2[None, :])
            dk1 += _dot(ds1.to(q1.dtype), q1, PREC)
            dk2 += _dot(ds2.to(q2.dtype), q2, PREC)
    return dk1, dk2, dv


# One key block a program, launched twice: PART "dk" accumulates dK1 and dK2, PART "dv" accumulates dV. One launch
# doing all three would hold BLOCK_N × (2·D + Dv) fp32 accumulators (512 wide at D = 128, Dv = 256), which spills
# registers; the split recomputes both maps' probabilities once more but each launch holds half as much, and
# runs 1.3× faster in all (H100, B = 4, S = 4,096: fwd+bwd 5.66 → 4.38 ms).
@triton.jit
def _diff_attn_bwd_kv_kernel(
    Q, K, V, DO, LAM, LSE, DELTA, DK, DVAL,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos,
    H, S, qk_scale, sm_scale,
    D: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr, PART: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # fp32 scales, as in the forward (Inductor hands Python floats over as fp64).
    qk_scale, sm_scale = tl.full([], qk_scale, tl.float32), tl.full([], sm_scale, tl.float32)
    pid_n = tl.program_id(0)
    bh, b, h = _batch_head(H)
    bh64 = bh.to(tl.int64)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    n_ok = offs_n[:, None] < S
    k_base = K + b * stride_kb + (2 * h) * stride_kh
    k_off = offs_n[:, None] * stride_ks + offs_d[None, :]
    k1 = tl.load(k_base + k_off, mask=n_ok, other=0.0)
    k2 = tl.load(k_base + stride_kh + k_off, mask=n_ok, other=0.0)
    v = tl.load(
        V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vs + offs_dv[None, :],
        mask=n_ok,
        other=0.0,
    )
    q_base = Q + b * stride_qb + (2 * h) * stride_qh
    q_off = offs_m[:, None] * stride_qs + offs_d[None, :]
    q1_ptrs = q_base + q_off
    q2_ptrs = q_base + stride_qh + q_off
    do_ptrs = DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dos + offs_dv[None, :]
    lse_bh = LSE + bh64 * S * 2
    delta_bh = DELTA + bh64 * S * 2
    lam = tl.load(LAM).to(tl.float32)

    dk1 = tl.zeros([BLOCK_N, D], tl.float32)
    dk2 = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, DV], tl.float32)
    if CAUSAL:
        # Query blocks that straddle this key block need the causal mask; later ones see all its keys.
        lo = (start_n // BLOCK_M) * BLOCK_M
        mid = lo + ((start_n + BLOCK_N - lo + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
        dk1, dk2, dv = _bwd_kv_inner(
            dk1, dk2, dv, k1, k2, v, q1_ptrs, q2_ptrs, do_ptrs, lse_bh, delta_bh, offs_n, lo, mid,
            stride_qs, stride_dos, S, qk_scale, lam, BLOCK_M, True, PREC, PART,
        )  # fmt: skip
    else:
        mid = 0
    dk1, dk2, dv = _bwd_kv_inner(
        dk1, dk2, dv, k1, k2, v, q1_ptrs, q2_ptrs, do_ptrs, lse_bh, delta_bh, offs_n, mid, S,
        stride_qs, stride_dos, S, qk_scale, lam, BLOCK_M, False, PREC, PART,
    )  # fmt: skip
    if PART == "dk":
        dk_off = ((b * 2 * H + 2 * h) * S + offs_n[:, None]) * D + offs_d[None, :]
        tl.store(DK + dk_off, (dk1 * sm_scale).to(DK.dtype.element_ty), mask=n_ok)
        tl.store(DK + dk_off + S * D, (dk2 * sm_scale).to(DK.dtype.element_ty), mask=n_ok)
    else:
        dv_off = (bh64 * S + offs_n[:, None]) * DV + offs_dv[None, :]
        tl.store(DVAL + dv_off, dv.to(DVAL.dtype.element_ty), mask=n_ok)


@triton.jit
def _bwd_q_inner(
    dq1, dq2, q1, q2, do, lse1, lse2, d1, d2, k1_ptrs, k2_ptrs, v_ptrs, offs_m, lo, hi,
    stride_ks, stride_vs, S, qk_scale, lam,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASKED:
            n_ok = offs_n[:, None] < S
            k1 = tl.load(k1_ptrs + start_n * stride_ks, mask=n_ok, other=0.0)
            k2 = tl.load(k2_ptrs + start_n * stride_ks, mask=n_ok, other=0.0)
            v = tl.load(v_ptrs + start_n * stride_vs, mask=n_ok, other=0.0)
        else:
            k1 = tl.load(k1_ptrs + start_n * stride_ks)
            k2 = tl.load(k2_ptrs + start_n * stride_ks)
            v = tl.load(v_ptrs + start_n * stride_vs)
        p1 = tl.math.exp2(_dot(q1, tl.trans(k1), PREC) * qk_scale - lse1[:, None])
        p2 = tl.math.exp2(_dot(q2, tl.trans(k2), PREC) * qk_scale - lse2[:, None])
        if MASKED:
            valid = offs_n[None, :] < S
            if CAUSAL:
                valid = valid & (offs_m[:, None] >= offs_n[None, :])
            p1 = tl.where(valid, p1, 0.0)
            p2 = tl.where(valid, p2, 0.0)
        dp = _dot(do, tl.trans(v), PREC)
        ds1 = p1 * (dp - d1[:, None])
        ds2 = (-lam) * p2 * (dp - d2[:, None])
        dq1 += _dot(ds1.to(k1.dtype), k1, PREC)
        dq2 += _dot(ds2.to(k2.dtype), k2, PREC)
    return dq1, dq2


@triton.jit
def _diff_attn_bwd_q_kernel(
    Q, K, V, DO, LAM, LSE, DELTA, DQ,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos,
    H, S, qk_scale, sm_scale,
    D: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # fp32 scales, as in the forward (Inductor hands Python floats over as fp64).
    qk_scale, sm_scale = tl.full([], qk_scale, tl.float32), tl.full([], sm_scale, tl.float32)
    pid_m = tl.program_id(0)
    bh, b, h = _batch_head(H)
    bh64 = bh.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    m_ok = offs_m < S
    q_base = Q + b * stride_qb + (2 * h) * stride_qh
    q_off = offs_m[:, None] * stride_qs + offs_d[None, :]
    q1 = tl.load(q_base + q_off, mask=m_ok[:, None], other=0.0)
    q2 = tl.load(q_base + stride_qh + q_off, mask=m_ok[:, None], other=0.0)
    do_off = b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dos + offs_dv[None, :]
    do = tl.load(DO + do_off, mask=m_ok[:, None], other=0.0)
    lse1 = tl.load(LSE + (bh64 * S + offs_m) * 2, mask=m_ok, other=0.0)
    lse2 = tl.load(LSE + (bh64 * S + offs_m) * 2 + 1, mask=m_ok, other=0.0)
    d1 = tl.load(DELTA + (bh64 * S + offs_m) * 2, mask=m_ok, other=0.0)
    d2 = tl.load(DELTA + (bh64 * S + offs_m) * 2 + 1, mask=m_ok, other=0.0)
    k_base = K + b * stride_kb + (2 * h) * stride_kh
    k_off = offs_n[:, None] * stride_ks + offs_d[None, :]
    k1_ptrs = k_base + k_off
    k2_ptrs = k_base + stride_kh + k_off
    v_ptrs = V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vs + offs_dv[None, :]
    lam = tl.load(LAM).to(tl.float32)

    dq1 = tl.zeros([BLOCK_M, D], tl.float32)
    dq2 = tl.zeros([BLOCK_M, D], tl.float32)
    if CAUSAL:
        mid = (pid_m * BLOCK_M // BLOCK_N) * BLOCK_N
        hi = tl.minimum((pid_m + 1) * BLOCK_M, S)
    else:
        mid = (S // BLOCK_N) * BLOCK_N
        hi = S
    dq1, dq2 = _bwd_q_inner(
        dq1, dq2, q1, q2, do, lse1, lse2, d1, d2, k1_ptrs, k2_ptrs, v_ptrs, offs_m, 0, mid,
        stride_ks, stride_vs, S, qk_scale, lam, BLOCK_N, False, CAUSAL, PREC,
    )  # fmt: skip
    dq1, dq2 = _bwd_q_inner(
        dq1, dq2, q1, q2, do, lse1, lse2, d1, d2, k1_ptrs, k2_ptrs, v_ptrs, offs_m, mid, hi,
        stride_ks, stride_vs, S, qk_scale, lam, BLOCK_N, True, CAUSAL, PREC,
    )  # fmt: skip
    dq_off = ((b * 2 * H + 2 * h) * S + offs_m[:, None]) * D + offs_d[None, :]
    tl.store(DQ + dq_off, (dq1 * sm_scale).to(DQ.dtype.element_ty), mask=m_ok[:, None])
    tl.store(DQ + dq_off + S * D, (dq2 * sm_scale).to(DQ.dtype.element_ty), mask=m_ok[:, None])


def _autotuners(kernel, name, key):
    """One autotuner per target family over the same kernel; `candidates` is what `kernels check
    --candidates` compiles on AMD."""
    lists, candidates = _per_target(name)
    tuners = {family: triton.autotune(configs=configs, key=key)(kernel) for family, configs in lists.items()}
    for family, tuner in tuners.items():
        tuner.candidates = candidates if family != "cuda" else tuner.configs
    return tuners


_FWD = _autotuners(_diff_attn_fwd_kernel, "fwd", ["S", "D", "DV", "CAUSAL", "PREC"])
_BWD_KV = _autotuners(_diff_attn_bwd_kv_kernel, "bwd_kv", ["S", "D", "DV", "CAUSAL", "PREC", "PART"])
_BWD_Q = _autotuners(_diff_attn_bwd_q_kernel, "bwd_q", ["S", "D", "DV", "CAUSAL", "PREC"])
N_CONFIGS = max(len(t.configs) for t in (_FWD["cuda"], _BWD_KV["cuda"], _BWD_Q["cuda"]))

_LOG2E = 1.4426950408889634


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


class _DiffAttnFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, lambda_, causal, sm_scale):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        bsz, two_h, seq, d = q.shape
        heads, dv = two_h // 2, v.shape[-1]
        lam = lambda_.detach().float().reshape(1)
        # O is laid out (B, S, H, Dv) and returned as a (B, H, S, Dv) view: the model's next step reads it as
        # (B, S, H·Dv), which then needs no transposing copy. O2 (kept for the backward only) is plain.
        out = torch.empty((bsz, seq, heads, dv), dtype=v.dtype, device=v.device).transpose(1, 2)
        o2 = torch.empty((bsz, heads, seq, dv), dtype=v.dtype, device=v.device)
        lse = torch.empty((bsz, heads, seq, 2), dtype=torch.float32, device=v.device)
        prec = precision(q.dtype, q.device)

        for map_index in (1, 0):  # O2 first: the MAP = 0 epilogue subtracts it
            launch(
                tuned(_FWD, q.device),
                lambda meta: (triton.cdiv(seq, meta["BLOCK_M"]), bsz * heads),
                q, k, v, lam, out, o2, lse,
                *_strides(q), *_strides(k), *_strides(v), *_strides(out),
                heads, seq, sm_scale * _LOG2E,
                D=d, DV=dv, CAUSAL=causal, PREC=prec, MAP=map_index,
            )  # fmt: skip
        ctx.save_for_backward(q, k, v, lam, out, o2, lse)
        ctx.causal, ctx.sm_scale, ctx.prec = causal, sm_scale, prec
        ctx.lambda_dtype = lambda_.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, lam, out, o2, lse = ctx.saved_tensors
        bsz, two_h, seq, d = q.shape
        heads, dv = two_h // 2, v.shape[-1]
        dout = _last_dim_contiguous(dout)
        delta = torch.empty_like(lse)
        rows = bsz * heads * seq
        block_r = 16
        launch(
            _diff_attn_bwd_delta_kernel, (triton.cdiv(rows, block_r),),
            out, o2, dout, lam, delta, *_strides(out), *_strides(dout), rows, heads, seq,
            DV=dv, BLOCK_DV=triton.next_power_of_2(dv), BLOCK_R=block_r,
        )  # fmt: skip
        dq = torch.empty((bsz, two_h, seq, d), dtype=q.dtype, device=q.device)
        dk = torch.empty((bsz, two_h, seq, d), dtype=k.dtype, device=k.device)
        dval = torch.empty((bsz, heads, seq, dv), dtype=v.dtype, device=v.device)
        common = dict(D=d, DV=dv, CAUSAL=ctx.causal, PREC=ctx.prec)
        args = (
            *_strides(q), *_strides(k), *_strides(v), *_strides(dout),
            heads, seq, ctx.sm_scale * _LOG2E, ctx.sm_scale,
        )  # fmt: skip
        for part in ("dk", "dv"):
            launch(
                tuned(_BWD_KV, q.device),
                lambda meta: (triton.cdiv(seq, meta["BLOCK_N"]), bsz * heads),
                q, k, v, dout, lam, lse, delta, dk, dval, *args, **common, PART=part,
            )  # fmt: skip
        launch(
            tuned(_BWD_Q, q.device),
            lambda meta: (triton.cdiv(seq, meta["BLOCK_M"]), bsz * heads),
            q, k, v, dout, lam, lse, delta, dq, *args, **common,
        )  # fmt: skip
        # out = O1 − λ·O2, so d out / d λ = −O2 and dλ = −Σ rowsum(dO ⊙ O2) = −Σ δ2.
        dlambda = -delta[..., 1].sum()
        return dq, dk, dval, dlambda.to(ctx.lambda_dtype), None, None


def _triton_ok(q: torch.Tensor, v: torch.Tensor) -> bool:
    d, dv = q.shape[-1], v.shape[-1]
    pow2 = d == triton.next_power_of_2(d) and dv == triton.next_power_of_2(dv)
    return pow2 and 16 <= d <= 256 and 16 <= dv <= 512 and q.dtype == v.dtype


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lambda_: torch.Tensor) -> None:
    problems = []
    if q.ndim != 4 or k.shape != q.shape:
        problems.append(f"q and k must both be (B, 2H, S, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    elif q.shape[1] % 2:
        problems.append(f"q has {q.shape[1]} maps; differential heads need an even number (2H)")
    elif v.ndim != 4 or v.shape[0] != q.shape[0] or 2 * v.shape[1] != q.shape[1] or v.shape[2] != q.shape[2]:
        problems.append(
            f"v must be (B, H, S, Dv) = ({q.shape[0]}, {q.shape[1] // 2}, {q.shape[2]}, Dv), got {tuple(v.shape)}"
        )
    if lambda_.ndim != 0:
        problems.append(f"lambda_ must be a 0-dim tensor, got shape {tuple(lambda_.shape)}")
    if problems:
        raise ValueError("diff_attention: " + "; ".join(problems))


def diff_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lambda_: torch.Tensor,
    *,
    causal: bool = True,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """softmax(q_{2h}k_{2h}ᵀ·s)v_h − λ·softmax(q_{2h+1}k_{2h+1}ᵀ·s)v_h for each differential head h.

    s = sm_scale or 1/√D. Gradients flow to q, k, v and lambda_. No sub-layer norm here (the module does it).
    """
    _check(q, k, v, lambda_)
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if use_triton(q, k, v) and _triton_ok(q, v):
        return _DiffAttnFn.apply(q, k, v, lambda_, causal, scale)
    return reference_diff_attention(q, k, v, lambda_, causal=causal, sm_scale=scale)


def lambda_init(layer_idx: int) -> float:
    """λ_init = 0.8 − 0.6·exp(−0.3·(l − 1)) for the 1-based layer index l (Differential Transformer)."""
    return 0.8 - 0.6 * math.exp(-0.3 * (layer_idx - 1))


class DifferentialAttention(nn.Module):
    """The attention core of a differential-attention layer: λ from its four learned vectors, the two-map
    attention, a per-head RMSNorm over the value dim, and the (1 − λ_init) scale.

    num_heads is the number of differential heads H (q and k carry 2H maps of head_dim each); the value dim of
    each head is 2·head_dim. forward(q, k, v) takes q, k (B, 2H, S, head_dim), v (B, H, S, 2·head_dim) and
    returns (B, H, S, 2·head_dim). The projections belong to the layer that extends this module (the model's
    attention layer does, so its parameter names are Motif's: ``lambda_q1`` … ``lambda_k2``, ``subln``).
    ``reference=True`` runs the pure-PyTorch attention instead of the Triton kernel.
    """

    def __init__(
        self, layer_idx: int, num_heads: int, head_dim: int, eps: float = 1e-5, *, reference: bool = False
    ) -> None:
        super().__init__()
        if layer_idx < 1 or num_heads < 1 or head_dim < 1:
            raise ValueError(
                f"DifferentialAttention: layer_idx (1-based), num_heads and head_dim must be ≥ 1, "
                f"got {layer_idx}, {num_heads}, {head_dim}"
            )
        self.layer_idx = layer_idx
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.reference = reference
        # A 0-dim buffer, not a Python float: torch.compile guards on a module's float attributes, so with a
        # float per layer the code after the attention op's graph break recompiled for each layer and, past
        # its limit of 8, ran eagerly (seen on the 12-layer `small`). Not saved: it follows from layer_idx.
        self.register_buffer("lambda_init", torch.tensor(lambda_init(layer_idx)), persistent=False)
        self.lambda_q1 = nn.Parameter(torch.empty(head_dim))
        self.lambda_k1 = nn.Parameter(torch.empty(head_dim))
        self.lambda_q2 = nn.Parameter(torch.empty(head_dim))
        self.lambda_k2 = nn.Parameter(torch.empty(head_dim))
        self.subln = RMSNorm(2 * head_dim, eps=eps, elementwise_affine=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(p, mean=0.0, std=0.1)
        self.subln.reset_parameters()

    def lambda_full(self) -> torch.Tensor:
        """λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init, a 0-dim fp32 tensor that carries gradients."""
        l1 = torch.exp(torch.dot(self.lambda_q1.float(), self.lambda_k1.float()))
        l2 = torch.exp(torch.dot(self.lambda_q2.float(), self.lambda_k2.float()))
        return l1 - l2 + self.lambda_init

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if (
            q.shape[1] != 2 * self.num_heads
            or q.shape[-1] != self.head_dim
            or v.shape[-1] != 2 * self.head_dim
        ):
            raise ValueError(
                f"DifferentialAttention expects q, k (B, {2 * self.num_heads}, S, {self.head_dim}) and "
                f"v (B, {self.num_heads}, S, {2 * self.head_dim}); got q {tuple(q.shape)}, v {tuple(v.shape)}"
            )
        attend = reference_diff_attention if self.reference else diff_attention
        # Normed in (B, S, H, Dv), the kernel's memory order, and handed back as a (B, H, S, Dv) view: a
        # caller that transposes back for its output projection then copies nothing.
        out = self.subln(attend(q, k, v, self.lambda_full()).transpose(1, 2))
        return (out * (1.0 - self.lambda_init)).transpose(1, 2)
