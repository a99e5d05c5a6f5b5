"""Differential attention: softmax(Q₁K₁ᵀ·s)V − λ·softmax(Q₂K₂ᵀ·s)V with flash-style tiled Triton kernels.

q, k: (B, 2H, S, D), maps 2h and 2h+1 belong to differential head h; v: (B, H, S, Dv); λ a 0-dim tensor.
Optionally masked to documents (``documents``: `motif_data.kernels.documents`), whole blocks skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

from motif_data.kernels._device import launch, precision, tuned, use_triton
from motif_data.kernels.documents import document_mask
from motif_data.kernels.rmsnorm import RMSNorm

__all__ = [
    "diff_attention",
    "grouped_diff_attention",
    "reference_diff_attention",
    "reference_grouped_diff_attention",
    "DifferentialAttention",
    "lambda_init",
]


# ---------------------------------------------------------------------------------------------------------
# Pure-PyTorch reference (the CPU path and the tests' ground truth): two scaled_dot_product_attention calls
# ---------------------------------------------------------------------------------------------------------
def reference_grouped_diff_attention(
    q_signal: torch.Tensor,
    k_signal: torch.Tensor,
    q_noise: torch.Tensor,
    k_noise: torch.Tensor,
    v: torch.Tensor,
    lambda_: torch.Tensor,
    *,
    causal: bool = True,
    sm_scale: float | None = None,
    documents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Two SDPA calls over every signal head, the noise map repeated for each head of its group (so computed r
    times, as r separate differential-attention calls would); K/V heads repeated to their query maps. With
    ``documents`` (causal only) the calls take the dense document mask."""
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q_signal.shape[-1])
    heads = q_signal.shape[1]
    ratio = heads // q_noise.shape[1]

    def rep(t, n):
        return t.repeat_interleave(n, dim=1) if n > 1 else t

    values = rep(v, heads // v.shape[1])
    mask = {"is_causal": causal} if documents is None else {"attn_mask": document_mask(documents)}
    o1 = F.scaled_dot_product_attention(
        q_signal, rep(k_signal, heads // k_signal.shape[1]), values, scale=scale, **mask
    )
    o2 = F.scaled_dot_product_attention(
        rep(q_noise, ratio), rep(k_noise, heads // k_noise.shape[1]), values, scale=scale, **mask
    )
    lam = lambda_.view(1, -1, 1, 1) if lambda_.ndim == 1 else lambda_
    return o1 - lam.to(o2.dtype) * o2


def reference_diff_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lambda_: torch.Tensor,
    *,
    causal: bool = True,
    sm_scale: float | None = None,
    documents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Two SDPA calls, one per softmax map, sharing V; result (B, H, S, Dv) in v.dtype."""
    return reference_grouped_diff_attention(
        q[:, 0::2], k[:, 0::2], q[:, 1::2], k[:, 1::2], v, lambda_, causal=causal, sm_scale=sm_scale,
        documents=documents,
    )  # fmt: skip


def reference_max_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = True,
    sm_scale: float | None = None,
    documents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each query map's largest pre-softmax logit q·k·s over batch, positions and (causal) keys: (maps,) fp32.
    k may have fewer heads than q (each serving a run of query maps). Materialises the scores: CPU/tests."""
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    keys = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1) if k.shape[1] != q.shape[1] else k
    scores = (q.float() @ keys.float().transpose(-1, -2)) * scale
    if documents is not None:
        scores = scores.masked_fill(~document_mask(documents), float("-inf"))
    elif causal:
        s = q.shape[2]
        scores = scores.masked_fill(
            torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1), float("-inf")
        )
    return scores.amax(dim=(0, 2, 3))


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
    # The grouped kernels' key-block loop over the maps sharing a key: the 16 × 128 tiles overflow the 64 KiB LDS
    # of gfx90a and gfx942 there (128 KiB, `kernels check`, 2026-12-02), though the paired kernel's fit.
    "map_bwd_kv": (_CUDA_BWD_KV, _AMD_BWD_KV, {"gfx90a": [0, 1, 2, 11], "gfx942": [0, 1, 2, 11],
                                               "gfx950": [0, 1, 2, 3, 10, 11, 12]}),
    "bwd_q": (_CUDA_BWD_Q, _AMD_BWD_Q, {"gfx90a": [0, 1, 2, 3, 10, 11, 12], "gfx942": [0, 1, 2, 3, 8, 10, 11, 12],
                                        "gfx950": [0, 1, 2, 3, 4, 8, 10, 11, 12]}),
    # Document masking (DOC) holds each row's document start and one more masked loop: at D = 128, Dv = 256 these
    # tiles of the lists above then spill (`kernels check`, 2026-12-02): the forward's 128 × 64 at 8 warps on
    # gfx950; the paired dK/dV's 32 × 32 (all three) and 32 × 64 (gfx950); the paired dQ's 64 × 32 at two stages
    # (gfx942, gfx950) and 32 × 64 (gfx950). The grouped kernels' DOC variants fit in their lists.
    "fwd_doc": (_CUDA_FWD, _AMD_FWD, {"gfx90a": [0, 1, 2, 3, 4, 6, 7], "gfx942": [0, 1, 2, 3, 4, 6, 7, 8],
                                      "gfx950": [0, 1, 2, 3, 4, 6, 7, 8]}),
    "bwd_kv_doc": (_CUDA_BWD_KV, _AMD_BWD_KV, {"gfx90a": [1, 2, 10, 11, 12], "gfx942": [1, 2, 10, 11, 12],
                                               "gfx950": [1, 2, 10, 11, 12]}),
    "bwd_q_doc": (_CUDA_BWD_Q, _AMD_BWD_Q, {"gfx90a": [0, 1, 2, 3, 10, 11, 12], "gfx942": [0, 1, 2, 3, 10, 11, 12],
                                            "gfx950": [0, 1, 2, 3, 10, 11, 12]}),
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
def _value_tile(V_B, head, offs_n, offs_w, stride_vh, stride_vs, DV: tl.constexpr, NV: tl.constexpr):
    # Pointers to a (BLOCK_N, NV·Dv) tile: NV value heads from `head` on, side by side. With one head the plain
    # form keeps the compiler's contiguity analysis (and 16-byte loads) intact.
    if NV == 1:
        return V_B + head * stride_vh + offs_n[:, None] * stride_vs + offs_w[None, :]
    else:
        heads = head + offs_w // DV
        return V_B + heads[None, :] * stride_vh + offs_n[:, None] * stride_vs + (offs_w % DV)[None, :]


@triton.jit
def _batch_head(H):
    # Grid axis 1 walks (batch, head) pairs; offsets from them are int64 (B·H·S·D can pass 2³¹).
    bh = tl.program_id(1)
    return bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64)


@triton.jit
def _document_window(STARTS, pid_m, offs_m, mid, S, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     DOC: tl.constexpr):  # fmt: skip
    # A query block's keys under document masking (causal): none before the key block holding its first row's
    # document start (lo); all, for every row, from its last row's document start up to the diagonal (full).
    # Without DOC: every key from 0, none masked before the diagonal. Returns (row starts, lo, full).
    row_start, lo, full = offs_m, 0, 0
    if DOC:
        row_start = tl.load(STARTS + offs_m, mask=offs_m < S, other=0)
        lo = (tl.load(STARTS + pid_m * BLOCK_M) // BLOCK_N) * BLOCK_N
        last = tl.load(STARTS + tl.minimum((pid_m + 1) * BLOCK_M, S) - 1)
        full = tl.minimum((last + BLOCK_N - 1) // BLOCK_N * BLOCK_N, mid)
    return row_start, lo, full


@triton.jit
def _key_window(ENDS, start_n, mid, S, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # A key block's queries under document masking (causal), from `mid` (past the diagonal blocks) on: all of
    # its keys, for every query before the end of its first key's document, rounded down to a query block
    # (full: a boundary inside the key block ends that document before `mid`, so the range is then empty);
    # none from the end of its last key's document on (hi).
    full = tl.maximum((tl.load(ENDS + start_n) // BLOCK_M) * BLOCK_M, mid)
    hi = tl.load(ENDS + tl.minimum(start_n + BLOCK_N, S) - 1)
    return full, hi


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_m, row_start, lo, hi, stride_ks, stride_vs, S, qk_scale,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, DOC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    # DOC (with MASKED): keys before each row's document start (row_start) are masked too.
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
            if DOC:
                valid = valid & (offs_n[None, :] >= row_start[:, None])
            s = tl.where(valid, s, float("-inf"))
        # The scale is applied inside exp2's argument (one FMA per score) rather than to every score first.
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_use = m_new
        if DOC:
            if MASKED:
                # A row may have met no key of its document yet (max −inf): exp2(−inf − −inf) would be NaN.
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s * qk_scale - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs + start_n * stride_vs, mask=offs_n[:, None] < S, other=0.0)
        else:
            v = tl.load(v_ptrs + start_n * stride_vs)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PREC)
        m_i = m_new
    return acc, l_i, m_i


# One launch a kind of map: the noise maps first (SIGNAL = False), each writing its output O2 (the backward needs
# it) and its log-sum-exp; then the signal maps (SIGNAL = True), whose epilogue reads their group's O2 tile and
# writes O = O1 − λ_h·O2. A program owns one (batch, map, query block). Differential attention is the case of one
# signal map per noise map; in grouped differential attention a noise program's value tile spans the NV value
# heads of its group (NV·Dv wide), so the group's noise map is computed once for all its R signal heads.
# Computing both kinds of maps in one program over one pass of K/V (V loaded once) needs two BLOCK_M × Dv fp32
# accumulators, 128 × 256 each at Motif's shape: they do not fit the registers, and splitting Dv over two
# programs instead computes every QKᵀ twice. H100, B = 4, S = 4,096, same run: that one-pass kernel 1.287 ms,
# this one 0.951 ms, two SDPA calls 1.075 ms.
@triton.jit
def _diff_attn_fwd_kernel(
    Q, K, V, LAM, OUT, O2, LSE, MAXL, DSTART,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os,
    stride_nb, stride_nh, stride_ns,
    H, S, qk_scale, K_GROUP, V_MUL, V_DIV, R, stride_lam,
    D: tl.constexpr, DV: tl.constexpr, NV: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
    SIGNAL: tl.constexpr, LSE_STRIDE: tl.constexpr, TRACK_MAX: tl.constexpr, DOC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Map h reads key head h // K_GROUP and the NV value heads from (h·V_MUL) // V_DIV on; O2 is (B, H_noise, S,
    # NV·Dv). torch.compile (Inductor) passes Python floats as fp64 scalars; keep the softmax math in fp32.
    qk_scale = tl.full([], qk_scale, tl.float32)
    pid_m = tl.program_id(0)
    bh, b, h = _batch_head(H)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    offs_w = tl.arange(0, NV * DV)
    row_ok = offs_m[:, None] < S
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok, other=0.0)
    # K tiles are read transposed: (D, BLOCK_N).
    k_ptrs = K + b * stride_kb + (h // K_GROUP) * stride_kh + offs_n[None, :] * stride_ks + offs_d[:, None]
    v_ptrs = _value_tile(
        V + b * stride_vb, (h * V_MUL) // V_DIV, offs_n, offs_w, stride_vh, stride_vs, DV, NV
    )

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, NV * DV], tl.float32)
    if CAUSAL:
        mid = (pid_m * BLOCK_M // BLOCK_N) * BLOCK_N
        hi = tl.minimum((pid_m + 1) * BLOCK_M, S)
    else:
        mid = (S // BLOCK_N) * BLOCK_N
        hi = S
    row_start, lo, full = _document_window(DSTART + b * S, pid_m, offs_m, mid, S, BLOCK_M, BLOCK_N, DOC)
    if DOC:  # the key blocks across the rows' document starts, then the blocks every row sees whole
        acc, l_i, m_i = _fwd_inner(
            acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_m, row_start, lo, full,
            stride_ks, stride_vs, S, qk_scale, BLOCK_N, True, CAUSAL, True, PREC,
        )  # fmt: skip
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_m, row_start, full, mid,
        stride_ks, stride_vs, S, qk_scale, BLOCK_N, False, CAUSAL, False, PREC,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_m, row_start, mid, hi,
        stride_ks, stride_vs, S, qk_scale, BLOCK_N, True, CAUSAL, DOC, PREC,
    )  # fmt: skip
    o = acc / l_i[:, None]
    if SIGNAL:
        # This head's columns of its group's O2: 0 where the whole group reads one value head.
        g = h // R
        col = ((h // V_DIV) - (g * R) // V_DIV) * DV
        o2_ptrs = O2 + b * stride_nb + g * stride_nh + offs_m[:, None] * stride_ns + col + offs_w[None, :]
        # O2 as stored (rounded to v's dtype), as the two-SDPA reference subtracts it.
        o2 = tl.load(o2_ptrs, mask=row_ok, other=0.0).to(tl.float32)
        out = o - tl.load(LAM + h * stride_lam).to(tl.float32) * o2
        o_off = b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_w[None, :]
        tl.store(OUT + o_off, out.to(OUT.dtype.element_ty), mask=row_ok)
    else:
        o2_off = b * stride_nb + h * stride_nh + offs_m[:, None] * stride_ns + offs_w[None, :]
        tl.store(O2 + o2_off, o.to(O2.dtype.element_ty), mask=row_ok)
    tl.store(LSE + (bh.to(tl.int64) * S + offs_m) * LSE_STRIDE, m_i + tl.math.log2(l_i), mask=offs_m < S)
    if TRACK_MAX:
        # Each row's largest score (log2 domain), for QK-clip; the caller reduces the rows.
        tl.store(MAXL + bh.to(tl.int64) * S + offs_m, m_i, mask=offs_m < S)


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
    dk1, dk2, dv, k1, k2, v, q1_ptrs, q2_ptrs, do_ptrs, LSE_BH, DELTA_BH, STARTS, offs_n, lo, hi,
    stride_qs, stride_dos, S, qk_scale, lam,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, DOC: tl.constexpr, PREC: tl.constexpr, PART: tl.constexpr,
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
            if DOC:  # and each query sees keys from its document's start on
                valid = valid & (tl.load(STARTS + offs_m, mask=row_ok, other=S)[None, :] <= offs_n[:, None])
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
    Q, K, V, DO, LAM, LSE, DELTA, DK, DVAL, DSTART, DEND,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos,
    H, S, qk_scale, sm_scale,
    D: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr, PART: tl.constexpr,
    DOC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
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
    starts = DSTART + b * S
    full, hi = S, S
    if CAUSAL:
        # Query blocks that straddle this key block need the causal mask; later ones see all its keys.
        lo = (start_n // BLOCK_M) * BLOCK_M
        mid = lo + ((start_n + BLOCK_N - lo + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
        if DOC:
            full, hi = _key_window(DEND + b * S, start_n, mid, S, BLOCK_M, BLOCK_N)
        dk1, dk2, dv = _bwd_kv_inner(
            dk1, dk2, dv, k1, k2, v, q1_ptrs, q2_ptrs, do_ptrs, lse_bh, delta_bh, starts, offs_n, lo,
            tl.minimum(mid, hi), stride_qs, stride_dos, S, qk_scale, lam, BLOCK_M, True, DOC, PREC, PART,
        )  # fmt: skip
    else:
        mid = 0
    dk1, dk2, dv = _bwd_kv_inner(
        dk1, dk2, dv, k1, k2, v, q1_ptrs, q2_ptrs, do_ptrs, lse_bh, delta_bh, starts, offs_n, mid, full,
        stride_qs, stride_dos, S, qk_scale, lam, BLOCK_M, False, False, PREC, PART,
    )  # fmt: skip
    if DOC:  # the query blocks across the keys' document ends
        dk1, dk2, dv = _bwd_kv_inner(
            dk1, dk2, dv, k1, k2, v, q1_ptrs, q2_ptrs, do_ptrs, lse_bh, delta_bh, starts, offs_n, full, hi,
            stride_qs, stride_dos, S, qk_scale, lam, BLOCK_M, True, True, PREC, PART,
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
    dq1, dq2, q1, q2, do, lse1, lse2, d1, d2, k1_ptrs, k2_ptrs, v_ptrs, offs_m, row_start, lo, hi,
    stride_ks, stride_vs, S, qk_scale, lam,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, DOC: tl.constexpr, PREC: tl.constexpr,
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
            if DOC:
                valid = valid & (offs_n[None, :] >= row_start[:, None])
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
    Q, K, V, DO, LAM, LSE, DELTA, DQ, DSTART,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos,
    H, S, qk_scale, sm_scale,
    D: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr, DOC: tl.constexpr,
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
    row_start, lo, full = _document_window(DSTART + b * S, pid_m, offs_m, mid, S, BLOCK_M, BLOCK_N, DOC)
    if DOC:
        dq1, dq2 = _bwd_q_inner(
            dq1, dq2, q1, q2, do, lse1, lse2, d1, d2, k1_ptrs, k2_ptrs, v_ptrs, offs_m, row_start, lo, full,
            stride_ks, stride_vs, S, qk_scale, lam, BLOCK_N, True, CAUSAL, True, PREC,
        )  # fmt: skip
    dq1, dq2 = _bwd_q_inner(
        dq1, dq2, q1, q2, do, lse1, lse2, d1, d2, k1_ptrs, k2_ptrs, v_ptrs, offs_m, row_start, full, mid,
        stride_ks, stride_vs, S, qk_scale, lam, BLOCK_N, False, CAUSAL, False, PREC,
    )  # fmt: skip
    dq1, dq2 = _bwd_q_inner(
        dq1, dq2, q1, q2, do, lse1, lse2, d1, d2, k1_ptrs, k2_ptrs, v_ptrs, offs_m, row_start, mid, hi,
        stride_ks, stride_vs, S, qk_scale, lam, BLOCK_N, True, CAUSAL, DOC, PREC,
    )  # fmt: skip
    dq_off = ((b * 2 * H + 2 * h) * S + offs_m[:, None]) * D + offs_d[None, :]
    tl.store(DQ + dq_off, (dq1 * sm_scale).to(DQ.dtype.element_ty), mask=m_ok[:, None])
    tl.store(DQ + dq_off + S * D, (dq2 * sm_scale).to(DQ.dtype.element_ty), mask=m_ok[:, None])


# ---------------------------------------------------------------------------------------------------------
# Backward of one kind of map (grouped differential attention). A signal map's gradient is that of plain
# attention with dO_h; a noise map's is that of plain attention over its group's value tile (NV·Dv wide) with
# dO_n = −[λ_h·dO_h] side by side (summed where the group shares one value head), computed once for the group.
# The paired kernels above instead share one dO·Vᵀ product between the two maps of a head, which only exists
# when each noise map serves one signal map (differential attention, r = 1).
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _map_bwd_kv_inner(
    dk, dv, k, v, q_ptrs, do_ptrs, LSE_BH, DELTA_BH, STARTS, offs_n, lo, hi, stride_qs, stride_dos, S, qk_scale,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, DOC: tl.constexpr, PREC: tl.constexpr, PART: tl.constexpr,
):  # fmt: skip
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < S
        # Rows past S load as zeros (q, dO, lse, δ): their terms vanish, so only loads need the mask.
        q = tl.load(q_ptrs + start_m * stride_qs, mask=row_ok[:, None], other=0.0)
        do = tl.load(do_ptrs + start_m * stride_dos, mask=row_ok[:, None], other=0.0)
        lse = tl.load(LSE_BH + offs_m, mask=row_ok, other=0.0)
        p = tl.math.exp2(_dot(k, tl.trans(q), PREC) * qk_scale - lse[None, :])  # (BLOCK_N, BLOCK_M)
        if MASKED:
            valid = offs_m[None, :] >= offs_n[:, None]
            if DOC:  # and each query sees keys from its document's start on
                valid = valid & (tl.load(STARTS + offs_m, mask=row_ok, other=S)[None, :] <= offs_n[:, None])
            p = tl.where(valid, p, 0.0)
        if PART == "dv":
            dv += _dot(p.to(do.dtype), do, PREC)
        else:
            delta = tl.load(DELTA_BH + offs_m, mask=row_ok, other=0.0)
            ds = p * (_dot(v, tl.trans(do), PREC) - delta[None, :])
            dk += _dot(ds.to(q.dtype), q, PREC)
    return dk, dv


@triton.jit
def _map_bwd_kv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DVAL, DV_NOISE, DSTART, DEND,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos,
    stride_dkb, stride_dkh, stride_dks,
    stride_dvb, stride_dvh, stride_dvs,
    UNITS, MAPS, S, qk_scale, sm_scale, K_GROUP, V_MUL, V_DIV,
    D: tl.constexpr, DV: tl.constexpr, NV: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
    PART: tl.constexpr, ADD_NOISE: tl.constexpr, DOC: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    # One key block of one key head (PART "dk") or value unit (PART "dv") a program, summing over the MAPS maps
    # that read it (h = unit·MAPS + t): GQA's sharing summed in registers, written once in the input's dtype.
    # ADD_NOISE: the signal pass's dV also takes the noise maps' share, which the noise pass left in DV_NOISE.
    qk_scale, sm_scale = tl.full([], qk_scale, tl.float32), tl.full([], sm_scale, tl.float32)
    pid_n = tl.program_id(0)
    bu, b, u = _batch_head(UNITS)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    offs_w = tl.arange(0, NV * DV)
    n_ok = offs_n[:, None] < S
    heads = UNITS * MAPS
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, NV * DV], tl.float32)
    # The query ranges, the same for every map: [lo, mid) straddles the diagonal; [mid, full) sees all keys;
    # [full, hi) crosses the keys' document ends (DOC only).
    starts = DSTART + b * S
    lo, mid, full, hi = 0, 0, S, S
    if CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M
        mid = lo + ((start_n + BLOCK_N - lo + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
        if DOC:
            full, hi = _key_window(DEND + b * S, start_n, mid, S, BLOCK_M, BLOCK_N)
    for t in range(0, MAPS):
        h = u * MAPS + t
        bh64 = b * heads + h
        k_ptrs = (
            K + b * stride_kb + (h // K_GROUP) * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :]
        )
        k = tl.load(k_ptrs, mask=n_ok, other=0.0)
        v_base = V + b * stride_vb
        v = tl.load(_value_tile(v_base, (h * V_MUL) // V_DIV, offs_n, offs_w, stride_vh, stride_vs, DV, NV),
                    mask=n_ok, other=0.0)  # fmt: skip
        q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :]
        do_ptrs = DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dos + offs_w[None, :]
        lse_bh, delta_bh = LSE + bh64 * S, DELTA + bh64 * S
        if CAUSAL:  # query blocks that straddle this key block need the causal mask
            dk, dv = _map_bwd_kv_inner(
                dk, dv, k, v, q_ptrs, do_ptrs, lse_bh, delta_bh, starts, offs_n, lo, tl.minimum(mid, hi),
                stride_qs, stride_dos, S, qk_scale, BLOCK_M, True, DOC, PREC, PART,
            )  # fmt: skip
        dk, dv = _map_bwd_kv_inner(
            dk, dv, k, v, q_ptrs, do_ptrs, lse_bh, delta_bh, starts, offs_n, mid, full,
            stride_qs, stride_dos, S, qk_scale, BLOCK_M, False, False, PREC, PART,
        )  # fmt: skip
        if DOC:
            dk, dv = _map_bwd_kv_inner(
                dk, dv, k, v, q_ptrs, do_ptrs, lse_bh, delta_bh, starts, offs_n, full, hi,
                stride_qs, stride_dos, S, qk_scale, BLOCK_M, True, True, PREC, PART,
            )  # fmt: skip
    if PART == "dk":
        dk_off = b * stride_dkb + u * stride_dkh + offs_n[:, None] * stride_dks + offs_d[None, :]
        tl.store(DK + dk_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=n_ok)
    else:
        v_head = (u * MAPS * V_MUL) // V_DIV
        if ADD_NOISE:
            noise_ptrs = _value_tile(
                DV_NOISE + b * stride_dvb, v_head, offs_n, offs_w, stride_dvh, stride_dvs, DV, NV
            )
            dv += tl.load(noise_ptrs, mask=n_ok, other=0.0)
        dv_ptrs = _value_tile(DVAL + b * stride_dvb, v_head, offs_n, offs_w, stride_dvh, stride_dvs, DV, NV)
        tl.store(dv_ptrs, dv.to(DVAL.dtype.element_ty), mask=n_ok)


@triton.jit
def _grouped_bwd_delta_kernel(
    OUT, O2, DO, LAM, DELTA_S, RS, DO_N, DELTA_N,
    stride_ob, stride_oh, stride_os,
    stride_nb, stride_nh, stride_ns,
    stride_dob, stride_doh, stride_dos,
    HN, S, stride_lam,
    R: tl.constexpr, NV: tl.constexpr, DV: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    # For the rows of one group (b, g): rs_h = rowsum(dO_h ⊙ O2_h) (dλ and both δs come from it), the signal
    # maps' δ_h = rowsum(dO_h ⊙ O_h) + λ_h·rs_h, the noise map's dO_n = −[λ_h·dO_h] (side by side, or summed
    # where the group shares one value head) and δ_n = rowsum(dO_n ⊙ O2) = −Σ_h λ_h·rs_h.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    bg, b, g = _batch_head(HN)
    bg64 = bg.to(tl.int64)
    cols = tl.arange(0, DV)
    ok = rows[:, None] < S
    delta_n = tl.zeros([BLOCK_R], tl.float32)
    do_n = tl.zeros([BLOCK_R, DV], tl.float32)
    for i in tl.static_range(R):
        h = g * R + i
        do = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dos + cols[None, :],
                     mask=ok, other=0.0).to(tl.float32)  # fmt: skip
        o = tl.load(OUT + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + cols[None, :],
                    mask=ok, other=0.0).to(tl.float32)  # fmt: skip
        if NV > 1:
            col = i * DV
        else:
            col = 0
        o2_off = b * stride_nb + g * stride_nh + rows[:, None] * stride_ns + col + cols[None, :]
        o2 = tl.load(O2 + o2_off, mask=ok, other=0.0).to(tl.float32)
        lam = tl.load(LAM + h * stride_lam).to(tl.float32)
        rs = tl.sum(do * o2, 1)
        row = (b * (HN * R) + h) * S + rows
        tl.store(RS + row, rs, mask=rows < S)
        tl.store(DELTA_S + row, tl.sum(do * o, 1) + lam * rs, mask=rows < S)
        delta_n -= lam * rs
        if NV > 1:
            tl.store(DO_N + (bg64 * S + rows[:, None]) * (NV * DV) + col + cols[None, :],
                     (-lam * do).to(DO_N.dtype.element_ty), mask=ok)  # fmt: skip
        else:
            do_n -= lam * do
    if NV == 1:
        tl.store(
            DO_N + (bg64 * S + rows[:, None]) * DV + cols[None, :], do_n.to(DO_N.dtype.element_ty), mask=ok
        )
    tl.store(DELTA_N + bg64 * S + rows, delta_n, mask=rows < S)


@triton.jit
def _map_bwd_q_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, DSTART,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos,
    H, S, qk_scale, sm_scale, K_GROUP, V_MUL, V_DIV,
    D: tl.constexpr, DV: tl.constexpr, NV: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
    DOC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    qk_scale, sm_scale = tl.full([], qk_scale, tl.float32), tl.full([], sm_scale, tl.float32)
    pid_m = tl.program_id(0)
    bh, b, h = _batch_head(H)
    bh64 = bh.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    offs_w = tl.arange(0, NV * DV)
    m_ok = offs_m < S
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=m_ok[:, None], other=0.0)  # fmt: skip
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dos + offs_w[None, :],
                 mask=m_ok[:, None], other=0.0)  # fmt: skip
    lse = tl.load(LSE + bh64 * S + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + bh64 * S + offs_m, mask=m_ok, other=0.0)
    k_ptrs = K + b * stride_kb + (h // K_GROUP) * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :]
    v_ptrs = _value_tile(
        V + b * stride_vb, (h * V_MUL) // V_DIV, offs_n, offs_w, stride_vh, stride_vs, DV, NV
    )
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    if CAUSAL:
        mid = (pid_m * BLOCK_M // BLOCK_N) * BLOCK_N
        hi = tl.minimum((pid_m + 1) * BLOCK_M, S)
    else:
        mid = (S // BLOCK_N) * BLOCK_N
        hi = S
    row_start, lo, full = _document_window(DSTART + b * S, pid_m, offs_m, mid, S, BLOCK_M, BLOCK_N, DOC)
    for start_n in range(lo, hi, BLOCK_N):
        offs_kn = start_n + offs_n
        # Only the blocks from `mid` on (and, DOC, those before `full`) need masks; the loop is one so that the
        # kernel stays short.
        n_ok = offs_kn[:, None] < S
        k = tl.load(k_ptrs + start_n * stride_ks, mask=n_ok, other=0.0)
        v = tl.load(v_ptrs + start_n * stride_vs, mask=n_ok, other=0.0)
        p = tl.math.exp2(_dot(q, tl.trans(k), PREC) * qk_scale - lse[:, None])
        if (start_n >= mid) | (start_n < full):
            valid = offs_kn[None, :] < S
            if CAUSAL:
                valid = valid & (offs_m[:, None] >= offs_kn[None, :])
            if DOC:
                valid = valid & (offs_kn[None, :] >= row_start[:, None])
            p = tl.where(valid, p, 0.0)
        ds = p * (_dot(do, tl.trans(v), PREC) - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, PREC)
    tl.store(DQ + (bh64 * S + offs_m[:, None]) * D + offs_d[None, :], dq * sm_scale, mask=m_ok[:, None])


def _autotuners(kernel, name, key):
    """One autotuner per target family over the same kernel; `candidates` is what `kernels check
    --candidates` compiles on AMD."""
    lists, candidates = _per_target(name)
    tuners = {family: triton.autotune(configs=configs, key=key)(kernel) for family, configs in lists.items()}
    for family, tuner in tuners.items():
        tuner.candidates = candidates if family != "cuda" else tuner.configs
    return tuners


_FWD = _autotuners(_diff_attn_fwd_kernel, "fwd", ["S", "D", "DV", "NV", "CAUSAL", "PREC", "DOC"])
_BWD_KV = _autotuners(_diff_attn_bwd_kv_kernel, "bwd_kv", ["S", "D", "DV", "CAUSAL", "PREC", "PART", "DOC"])
_BWD_Q = _autotuners(_diff_attn_bwd_q_kernel, "bwd_q", ["S", "D", "DV", "CAUSAL", "PREC", "DOC"])
# The same kernels under document masking, from the lists without the tiles that spill there.
_FWD_DOC = _autotuners(_diff_attn_fwd_kernel, "fwd_doc", ["S", "D", "DV", "NV", "CAUSAL", "PREC", "DOC"])
_BWD_KV_DOC = _autotuners(
    _diff_attn_bwd_kv_kernel, "bwd_kv_doc", ["S", "D", "DV", "CAUSAL", "PREC", "PART", "DOC"]
)
_BWD_Q_DOC = _autotuners(_diff_attn_bwd_q_kernel, "bwd_q_doc", ["S", "D", "DV", "CAUSAL", "PREC", "DOC"])
_MAP_BWD_KV = _autotuners(
    _map_bwd_kv_kernel, "map_bwd_kv", ["S", "D", "DV", "NV", "CAUSAL", "PREC", "PART", "ADD_NOISE", "DOC"]
)
_MAP_BWD_Q = _autotuners(_map_bwd_q_kernel, "bwd_q", ["S", "D", "DV", "NV", "CAUSAL", "PREC", "DOC"])
N_CONFIGS = max(len(t["cuda"].configs) for t in (_FWD, _BWD_KV, _BWD_Q, _MAP_BWD_KV, _MAP_BWD_Q))

_LOG2E = 1.4426950408889634


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _forward_pass(
    q,
    k,
    v,
    lam,
    out,
    o2,
    lse,
    max_rows,
    *,
    signal,
    heads,
    k_group,
    v_mul,
    v_div,
    ratio,
    nv,
    causal,
    sm_scale,
    documents=None,
    lse_stride=1,
) -> None:
    """One launch of the forward kernel over ``heads`` maps of one kind (see _diff_attn_fwd_kernel)."""
    bsz, _, seq, d = q.shape
    launch(
        tuned(_FWD if documents is None else _FWD_DOC, q.device),
        lambda meta: (triton.cdiv(seq, meta["BLOCK_M"]), bsz * heads),
        q, k, v, lam, out, o2, lse, max_rows if max_rows is not None else lse,
        documents[0] if documents is not None else lse,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(o2),
        heads, seq, sm_scale * _LOG2E, k_group, v_mul, v_div, ratio, 0 if lam.numel() == 1 else 1,
        D=d, DV=v.shape[-1], NV=nv, CAUSAL=causal, PREC=precision(q.dtype, q.device), SIGNAL=signal,
        LSE_STRIDE=lse_stride, TRACK_MAX=max_rows is not None, DOC=documents is not None,
    )  # fmt: skip


def _max_logits(max_rows: torch.Tensor) -> torch.Tensor:
    # Rows' largest scores (B, maps, S) in the log2 domain → each map's largest logit q·k·s.
    return max_rows.amax(dim=(0, 2)) / _LOG2E


class _DiffAttnFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, lambda_, causal, sm_scale, track_max, documents=None):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        bsz, two_h, seq, d = q.shape
        heads, dv = two_h // 2, v.shape[-1]
        lam = lambda_.detach().float().reshape(1)
        # O is laid out (B, S, H, Dv) and returned as a (B, H, S, Dv) view: the model's next step reads it as
        # (B, S, H·Dv), which then needs no transposing copy. O2 (kept for the backward only) is plain.
        out = torch.empty((bsz, seq, heads, dv), dtype=v.dtype, device=v.device).transpose(1, 2)
        o2 = torch.empty((bsz, heads, seq, dv), dtype=v.dtype, device=v.device)
        lse = torch.empty((bsz, heads, seq, 2), dtype=torch.float32, device=v.device)
        rows = torch.empty((2, bsz, heads, seq), dtype=torch.float32, device=v.device) if track_max else None
        # Maps 2h (signal) and 2h + 1 (noise) of head h: two strided views; O2 first, the signal epilogue reads it.
        for signal, first in ((False, 1), (True, 0)):
            _forward_pass(
                q[:, first::2], k[:, first::2], v, lam, out, o2, lse[..., first:],
                None if rows is None else rows[first], signal=signal, heads=heads, k_group=1, v_mul=1,
                v_div=1, ratio=1, nv=1, causal=causal, sm_scale=sm_scale, documents=documents, lse_stride=2,
            )  # fmt: skip
        ctx.save_for_backward(q, k, v, lam, out, o2, lse, documents)
        ctx.causal, ctx.sm_scale, ctx.prec = causal, sm_scale, precision(q.dtype, q.device)
        ctx.lambda_dtype = lambda_.dtype
        if rows is None:
            return out, None
        # Per map in q's order: signal and noise maps of each head interleaved, as q and k hold them.
        maxima = torch.stack((_max_logits(rows[0]), _max_logits(rows[1])), dim=1).reshape(two_h)
        ctx.mark_non_differentiable(maxima)
        return out, maxima

    @staticmethod
    def backward(ctx, dout, _dmaxima):
        q, k, v, lam, out, o2, lse, documents = ctx.saved_tensors
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
        common = dict(D=d, DV=dv, CAUSAL=ctx.causal, PREC=ctx.prec, DOC=documents is not None)
        bounds = (documents[0], documents[1]) if documents is not None else (lse, lse)
        args = (
            *_strides(q), *_strides(k), *_strides(v), *_strides(dout),
            heads, seq, ctx.sm_scale * _LOG2E, ctx.sm_scale,
        )  # fmt: skip
        for part in ("dk", "dv"):
            launch(
                tuned(_BWD_KV if documents is None else _BWD_KV_DOC, q.device),
                lambda meta: (triton.cdiv(seq, meta["BLOCK_N"]), bsz * heads),
                q, k, v, dout, lam, lse, delta, dk, dval, *bounds, *args, **common, PART=part,
            )  # fmt: skip
        launch(
            tuned(_BWD_Q if documents is None else _BWD_Q_DOC, q.device),
            lambda meta: (triton.cdiv(seq, meta["BLOCK_M"]), bsz * heads),
            q, k, v, dout, lam, lse, delta, dq, bounds[0], *args, **common,
        )  # fmt: skip
        # out = O1 − λ·O2, so d out / d λ = −O2 and dλ = −Σ rowsum(dO ⊙ O2) = −Σ δ2.
        dlambda = -delta[..., 1].sum()
        return dq, dk, dval, dlambda.to(ctx.lambda_dtype), None, None, None, None


class _GroupedDiffAttnFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_s, k_s, q_n, k_n, v, lambda_, causal, sm_scale, track_max, documents=None):
        q_s, k_s, q_n, k_n, v = (_last_dim_contiguous(t) for t in (q_s, k_s, q_n, k_n, v))
        bsz, hs, seq, _ = q_s.shape
        hn, dv = q_n.shape[1], v.shape[-1]
        g = _Grouping.of(q_s, k_s, q_n, k_n, v)
        lam = lambda_.detach().float().reshape(-1)
        out = torch.empty((bsz, seq, hs, dv), dtype=v.dtype, device=v.device).transpose(1, 2)
        o2 = torch.empty((bsz, hn, seq, g.nv * dv), dtype=v.dtype, device=v.device)
        lse_s = torch.empty((bsz, hs, seq), dtype=torch.float32, device=v.device)
        lse_n = torch.empty((bsz, hn, seq), dtype=torch.float32, device=v.device)
        rows_s, rows_n = (torch.empty_like(lse_s), torch.empty_like(lse_n)) if track_max else (None, None)
        common = dict(v_div=g.v_group, ratio=g.ratio, causal=causal, sm_scale=sm_scale, documents=documents)
        _forward_pass(q_n, k_n, v, lam, out, o2, lse_n, rows_n, signal=False, heads=hn, k_group=g.kn_group,
                      v_mul=g.ratio, nv=g.nv, **common)  # fmt: skip
        _forward_pass(q_s, k_s, v, lam, out, o2, lse_s, rows_s, signal=True, heads=hs, k_group=g.ks_group,
                      v_mul=1, nv=1, **common)  # fmt: skip
        ctx.save_for_backward(q_s, k_s, q_n, k_n, v, lam, out, o2, lse_s, lse_n, documents)
        ctx.causal, ctx.sm_scale, ctx.grouping, ctx.lambda_shape = causal, sm_scale, g, lambda_.shape
        ctx.lambda_dtype = lambda_.dtype
        if rows_s is None:
            return out, None
        maxima = torch.cat((_max_logits(rows_s), _max_logits(rows_n)))  # signal maps, then noise maps
        ctx.mark_non_differentiable(maxima)
        return out, maxima

    @staticmethod
    def backward(ctx, dout, _dmaxima):
        q_s, k_s, q_n, k_n, v, lam, out, o2, lse_s, lse_n, documents = ctx.saved_tensors
        g: _Grouping = ctx.grouping
        bsz, hs, seq, _ = q_s.shape
        hn, dv = q_n.shape[1], v.shape[-1]
        dout = _last_dim_contiguous(dout)
        f32 = dict(dtype=torch.float32, device=v.device)
        delta_s, rs = torch.empty((bsz, hs, seq), **f32), torch.empty((bsz, hs, seq), **f32)
        delta_n = torch.empty((bsz, hn, seq), **f32)
        do_n = torch.empty((bsz, hn, seq, g.nv * dv), dtype=dout.dtype, device=v.device)
        block_r = 16
        launch(
            _grouped_bwd_delta_kernel, (triton.cdiv(seq, block_r), bsz * hn),
            out, o2, dout, lam, delta_s, rs, do_n, delta_n, *_strides(out), *_strides(o2), *_strides(dout),
            hn, seq, 0 if lam.numel() == 1 else 1, R=g.ratio, NV=g.nv, DV=dv, BLOCK_R=block_r,
        )  # fmt: skip
        # out = O1 − λ_h·O2_h, so dλ_h = −Σ rowsum(dO_h ⊙ O2_h).
        dlambda = -rs.sum(dim=(0, 2)) if lam.numel() > 1 else -rs.sum()
        # The noise maps first: their share of dV (fp32, per value head) is added by the signal maps' dV pass.
        dv_noise = torch.empty((bsz, v.shape[1], seq, dv), **f32)
        dq_n, dk_n, _ = _map_backward(
            q_n, k_n, v, do_n, lse_n, delta_n, dv_noise, None, k_group=g.kn_group, v_mul=g.ratio,
            v_div=g.v_group, nv=g.nv, dv_maps=max(1, g.v_group // g.ratio) if g.nv == 1 else 1,
            documents=documents, ctx=ctx,
        )  # fmt: skip
        dq_s, dk_s, dval = _map_backward(
            q_s, k_s, v, dout, lse_s, delta_s, torch.empty(v.shape, dtype=v.dtype, device=v.device), dv_noise, k_group=g.ks_group, v_mul=1,
            v_div=g.v_group, nv=1, dv_maps=g.v_group, documents=documents, ctx=ctx,
        )  # fmt: skip
        return (
            dq_s, dk_s, dq_n, dk_n, dval, dlambda.reshape(ctx.lambda_shape).to(ctx.lambda_dtype),
            None, None, None, None,
        )  # fmt: skip


def _map_backward(q, k, v, do, lse, delta, dval, dv_noise, *, k_group, v_mul, v_div, nv, dv_maps, documents,
                  ctx):  # fmt: skip
    """dQ, dK and dV of one kind of map (k_group maps a key head, dv_maps a value unit of nv value heads),
    in the inputs' dtypes; dV is written into ``dval`` (plus ``dv_noise`` where given)."""
    bsz, heads, seq, d = q.shape
    dq = torch.empty((bsz, heads, seq, d), dtype=q.dtype, device=q.device)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    common = dict(D=d, DV=v.shape[-1], NV=nv, CAUSAL=ctx.causal, PREC=precision(q.dtype, q.device),
                  DOC=documents is not None)  # fmt: skip
    bounds = (documents[0], documents[1]) if documents is not None else (lse, lse)
    scales = (ctx.sm_scale * _LOG2E, ctx.sm_scale, k_group, v_mul, v_div)
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dval))
    for part, units, maps in (("dk", k.shape[1], k_group), ("dv", heads // dv_maps, dv_maps)):
        launch(
            tuned(_MAP_BWD_KV, q.device),
            lambda meta, units=units: (triton.cdiv(seq, meta["BLOCK_N"]), bsz * units),
            q, k, v, do, lse, delta, dk, dval, dv_noise if dv_noise is not None else dval, *bounds,
            *strides, units, maps, seq, *scales, **common, PART=part, ADD_NOISE=dv_noise is not None,
        )  # fmt: skip
    launch(
        tuned(_MAP_BWD_Q, q.device),
        lambda meta: (triton.cdiv(seq, meta["BLOCK_M"]), bsz * heads),
        q, k, v, do, lse, delta, dq, bounds[0], *_strides(q), *_strides(k), *_strides(v), *_strides(do),
        heads, seq, *scales, **common,
    )  # fmt: skip
    return dq, dk, dval


def _triton_ok(q: torch.Tensor, v: torch.Tensor) -> bool:
    d, dv = q.shape[-1], v.shape[-1]
    pow2 = d == triton.next_power_of_2(d) and dv == triton.next_power_of_2(dv)
    return pow2 and 16 <= d <= 256 and 16 <= dv <= 512 and q.dtype == v.dtype


@dataclass(frozen=True)
class _Grouping:
    """How the maps of a grouped differential attention call share heads."""

    ratio: int  # r: signal heads a noise map serves
    ks_group: int  # signal maps per signal key head
    kn_group: int  # noise maps per noise key head
    v_group: int  # signal heads per value head
    nv: int  # value heads in a noise map's tile: r (none shared within a group) or 1 (the group shares one)

    @classmethod
    def of(cls, q_s, k_s, q_n, k_n, v) -> _Grouping:
        hs, hn = q_s.shape[1], q_n.shape[1]
        ratio, v_group = hs // hn, hs // v.shape[1]
        return cls(ratio, hs // k_s.shape[1], hn // k_n.shape[1], v_group, ratio if v_group == 1 else 1)


def _check_grouped(q_s, k_s, q_n, k_n, v, lambda_, op: str = "grouped_diff_attention") -> None:
    problems = []
    tensors = {"q_signal": q_s, "k_signal": k_s, "q_noise": q_n, "k_noise": k_n, "v": v}
    if any(t.ndim != 4 for t in tensors.values()):
        problems.append("every input must be (B, heads, S, dim): " +
                        ", ".join(f"{n} {tuple(t.shape)}" for n, t in tensors.items()))  # fmt: skip
    else:
        b, hs, s, d = q_s.shape
        for name, t in tensors.items():
            if t.shape[0] != b or t.shape[2] != s or (name != "v" and t.shape[3] != d):
                problems.append(
                    f"{name} must be ({b}, heads, {s}, {d if name != 'v' else 'Dv'}), got {tuple(t.shape)}"
                )
        hn = q_n.shape[1]
        if hs % hn:
            problems.append(f"{hs} signal heads do not split into groups over {hn} noise maps")
        for name, t, over in (("k_signal", k_s, hs), ("k_noise", k_n, hn), ("v", v, hs)):
            if over % t.shape[1]:
                problems.append(
                    f"{name} has {t.shape[1]} heads, which do not divide the {over} maps that read it"
                )
        if not problems:
            g = _Grouping.of(q_s, k_s, q_n, k_n, v)
            if g.v_group != 1 and g.v_group % g.ratio:
                problems.append(
                    f"a value head serves {g.v_group} signal heads and a noise map {g.ratio}: use one value head "
                    "per signal head, or let whole groups share one (value sharing a multiple of the ratio)"
                )
        if lambda_.ndim > 1 or (lambda_.ndim == 1 and lambda_.shape[0] != hs):
            problems.append(
                f"lambda_ must be 0-dim or ({hs},) (one per signal head), got {tuple(lambda_.shape)}"
            )
    if problems:
        raise ValueError(f"{op}: " + "; ".join(problems))


def _check_documents(documents, batch: int, seq: int, causal: bool, op: str) -> torch.Tensor | None:
    """The (2, B, S) int32 bounds the kernels read, or None; a clear error for anything else."""
    if documents is None:
        return None
    if not causal:
        raise ValueError(f"{op}: document masking is causal attention within documents: pass causal=True")
    if (
        not isinstance(documents, torch.Tensor)
        or documents.shape != (2, batch, seq)
        or documents.is_floating_point()
    ):
        got = tuple(documents.shape) if isinstance(documents, torch.Tensor) else type(documents).__name__
        raise ValueError(
            f"{op}: documents must be the (2, {batch}, {seq}) integer bounds of "
            f"motif_data.kernels.documents.document_bounds(position_ids), got {got}"
        )
    return documents.to(torch.int32).contiguous()


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
    return_max_logits: bool = False,
    documents: torch.Tensor | None = None,
):
    """softmax(q_{2h}k_{2h}ᵀ·s)v_h − λ·softmax(q_{2h+1}k_{2h+1}ᵀ·s)v_h for each differential head h.

    s = sm_scale or 1/√D. Gradients flow to q, k, v and lambda_. No sub-layer norm here (the module does it).
    ``return_max_logits``: also return each map's largest logit q·k·s, (2H,) fp32 in q's map order (QK-clip).
    ``documents``: (2, B, S) document bounds (`motif_data.kernels.documents.document_bounds`): each query
    attends to the earlier keys of its own document only; key blocks no query of a block can see are skipped.
    """
    _check(q, k, v, lambda_)
    documents = _check_documents(documents, q.shape[0], q.shape[2], causal, "diff_attention")
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if use_triton(q, k, v) and _triton_ok(q, v):
        out, maxima = _DiffAttnFn.apply(q, k, v, lambda_, causal, scale, return_max_logits, documents)
    else:
        out, maxima = _reference_diff(q, k, v, lambda_, causal, scale, return_max_logits, documents)
    return (out, maxima) if return_max_logits else out


def _reference_diff(q, k, v, lambda_, causal=True, scale=None, track=False, documents=None):
    out = reference_diff_attention(q, k, v, lambda_, causal=causal, sm_scale=scale, documents=documents)
    maxima = reference_max_logits(q, k, causal=causal, sm_scale=scale, documents=documents) if track else None
    return out, maxima


def _reference_grouped(q_s, k_s, q_n, k_n, v, lambda_, causal=True, scale=None, track=False, documents=None):
    out = reference_grouped_diff_attention(
        q_s, k_s, q_n, k_n, v, lambda_, causal=causal, sm_scale=scale, documents=documents
    )
    if not track:
        return out, None
    maxima = (
        reference_max_logits(q, k, causal=causal, sm_scale=scale, documents=documents)
        for q, k in ((q_s, k_s), (q_n, k_n))
    )
    return out, torch.cat(tuple(maxima))  # signal maps, then noise maps


def grouped_diff_attention(
    q_signal: torch.Tensor,
    k_signal: torch.Tensor,
    q_noise: torch.Tensor,
    k_noise: torch.Tensor,
    v: torch.Tensor,
    lambda_: torch.Tensor,
    *,
    causal: bool = True,
    sm_scale: float | None = None,
    return_max_logits: bool = False,
    documents: torch.Tensor | None = None,
):
    """Grouped differential attention: for signal head h of H_s, with g = h // r and r = H_s / H_n,
    softmax(Qs_h Ks_hᵀ·s)·V_h − λ_h·softmax(Qn_g Kn_gᵀ·s)·V_h, each noise map computed once for its r heads.

    q_signal (B, H_s, S, D); q_noise (B, H_n, S, D); k_signal, k_noise and v may have fewer heads (GQA: a key or
    value head serves a run of consecutive maps); v (B, H_v, S, Dv) with one value head per signal head or one
    per whole group(s); λ 0-dim or (H_s,). Returns (B, H_s, S, Dv), and with ``return_max_logits`` also each
    map's largest logit q·k·s: (H_s + H_n,) fp32, the signal maps then the noise maps. ``documents``: as in
    `diff_attention`.
    """
    _check_grouped(q_signal, k_signal, q_noise, k_noise, v, lambda_)
    documents = _check_documents(
        documents, q_signal.shape[0], q_signal.shape[2], causal, "grouped_diff_attention"
    )
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q_signal.shape[-1])
    tensors = (q_signal, k_signal, q_noise, k_noise, v)
    if use_triton(*tensors) and _triton_ok(q_signal, v) and _triton_ok(q_signal, q_noise):
        out, maxima = _GroupedDiffAttnFn.apply(*tensors, lambda_, causal, scale, return_max_logits, documents)
    else:
        out, maxima = _reference_grouped(*tensors, lambda_, causal, scale, return_max_logits, documents)
    return (out, maxima) if return_max_logits else out


def lambda_init(layer_idx: int) -> float:
    """λ_init = 0.8 − 0.6·exp(−0.3·(l − 1)) for the 1-based layer index l (Differential Transformer)."""
    return 0.8 - 0.6 * math.exp(-0.3 * (layer_idx - 1))


class DifferentialAttention(nn.Module):
    """The attention core of a (grouped) differential-attention layer: λ from its four learned vectors, the
    attention, a per-head RMSNorm over the value dim, and the (1 − λ_init) scale.

    Heads are laid out as Motif's checkpoints hold them. num_heads is the number of (signal) heads H_s;
    noise_heads H_n (default H_s: differential attention, one noise map per head; fewer: grouped differential
    attention, each noise map serving r = H_s / H_n heads); kv_pairs P (default H_s) the key/value head pairs.
    forward(q, k, v) takes q (B, H_s + H_n, S, head_dim) in groups of r signal maps then their noise map
    (r = 1: maps 2h, 2h + 1), k (B, 2P, S, head_dim) as (signal key, noise key) pairs, and v (B, P, S,
    2·head_dim), and returns (B, H_s, S, 2·head_dim). The projections belong to the layer that extends this
    module (the model's attention layer does, so its parameter names are Motif's: ``lambda_q1`` … ``lambda_k2``,
    ``subln``). ``reference=True`` runs the pure-PyTorch attention instead of the Triton kernels.

    QK-clip support: while ``track_max_logits`` is True, each forward folds every query map's largest logit
    into ``max_logits`` ((H_s + H_n,) fp32, q's map order), until ``reset_max_logits()``.
    """

    def __init__(
        self,
        layer_idx: int,
        num_heads: int,
        head_dim: int,
        eps: float = 1e-5,
        *,
        noise_heads: int | None = None,
        kv_pairs: int | None = None,
        reference: bool = False,
    ) -> None:
        super().__init__()
        noise_heads = num_heads if noise_heads is None else noise_heads
        kv_pairs = num_heads if kv_pairs is None else kv_pairs
        if layer_idx < 1 or min(num_heads, head_dim, noise_heads, kv_pairs) < 1:
            raise ValueError(
                f"DifferentialAttention: layer_idx (1-based), num_heads, head_dim, noise_heads and kv_pairs must "
                f"be ≥ 1, got {layer_idx}, {num_heads}, {head_dim}, {noise_heads}, {kv_pairs}"
            )
        if num_heads % noise_heads or num_heads % kv_pairs or noise_heads % kv_pairs:
            raise ValueError(
                f"DifferentialAttention: {num_heads} signal heads, {noise_heads} noise maps and {kv_pairs} "
                "key/value pairs must nest (noise maps and pairs dividing the signal heads, pairs the noise maps)"
            )
        self.layer_idx = layer_idx
        self.num_heads = num_heads
        self.noise_heads = noise_heads
        self.kv_pairs = kv_pairs
        self.head_dim = head_dim
        self.reference = reference
        self.track_max_logits = False
        self.max_logits: torch.Tensor | None = None
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

    @property
    def ratio(self) -> int:
        """r: the signal heads one noise map serves."""
        return self.num_heads // self.noise_heads

    def reset_parameters(self) -> None:
        for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(p, mean=0.0, std=0.1)
        self.subln.reset_parameters()

    def lambda_full(self) -> torch.Tensor:
        """λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init, a 0-dim fp32 tensor that carries gradients."""
        l1 = torch.exp(torch.dot(self.lambda_q1.float(), self.lambda_k1.float()))
        l2 = torch.exp(torch.dot(self.lambda_q2.float(), self.lambda_k2.float()))
        return l1 - l2 + self.lambda_init

    def map_layout(self) -> tuple[list[int], list[int]]:
        """For each query map in q's order, its key head in k (0 … 2P − 1) and how many maps read that key."""
        r, maps = self.ratio, self.num_heads + self.noise_heads
        signal_per_key, noise_per_key = self.num_heads // self.kv_pairs, self.noise_heads // self.kv_pairs
        keys, sharing = [], []
        for m in range(maps):
            group, member = divmod(m, r + 1)
            if member < r:  # signal head group·r + member
                keys.append(2 * ((group * r + member) // signal_per_key))
                sharing.append(signal_per_key)
            else:
                keys.append(2 * (group // noise_per_key) + 1)
                sharing.append(noise_per_key)
        return keys, sharing

    def reset_max_logits(self) -> None:
        self.max_logits = None

    def _attend(self, q, k, v, lam, documents) -> tuple[torch.Tensor, torch.Tensor | None]:
        track = self.track_max_logits
        if self.ratio == 1 and self.kv_pairs == self.num_heads:  # differential attention: maps 2h, 2h + 1
            if self.reference:
                return _reference_diff(q, k, v, lam, track=track, documents=documents)
            return (
                diff_attention(q, k, v, lam, return_max_logits=True, documents=documents)
                if track
                else (diff_attention(q, k, v, lam, documents=documents), None)
            )
        # Grouped: split q's groups into signal maps (a copy: they are not one strided view) and noise maps.
        groups = q.unflatten(1, (self.noise_heads, self.ratio + 1))
        q_s, q_n = groups[:, :, : self.ratio].flatten(1, 2), groups[:, :, self.ratio]
        inputs = (q_s, k[:, 0::2], q_n, k[:, 1::2], v, lam)
        if self.reference:
            out, maxima = _reference_grouped(*inputs, track=track, documents=documents)
        else:
            out, maxima = (
                grouped_diff_attention(*inputs, return_max_logits=True, documents=documents)
                if track
                else (grouped_diff_attention(*inputs, documents=documents), None)
            )
        if maxima is not None:  # (signal maps, noise maps) → q's order
            r = self.ratio
            maxima = torch.cat(
                (maxima[: self.num_heads].view(-1, r), maxima[self.num_heads :].view(-1, 1)), 1
            )
            maxima = maxima.flatten()
        return out, maxima

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, documents: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``documents``: optional (2, B, S) document bounds, attention then within documents only."""
        maps, dv = self.num_heads + self.noise_heads, 2 * self.head_dim
        if (
            q.shape[1] != maps
            or k.shape[1] != 2 * self.kv_pairs
            or v.shape[1] != self.kv_pairs
            or q.shape[-1] != self.head_dim
            or v.shape[-1] != dv
        ):
            raise ValueError(
                f"DifferentialAttention expects q (B, {maps}, S, {self.head_dim}), k (B, {2 * self.kv_pairs}, S, "
                f"{self.head_dim}) and v (B, {self.kv_pairs}, S, {dv}); got q {tuple(q.shape)}, "
                f"k {tuple(k.shape)}, v {tuple(v.shape)}"
            )
        out, maxima = self._attend(q, k, v, self.lambda_full(), documents)
        if maxima is not None:
            maxima = maxima.detach()
            self.max_logits = maxima if self.max_logits is None else torch.maximum(self.max_logits, maxima)
        # Normed in (B, S, H, Dv), the kernel's memory order, and handed back as a (B, H, S, Dv) view: a
        # caller that transposes back for its output projection then copies nothing.
        out = self.subln(out.transpose(1, 2))
        return (out * (1.0 - self.lambda_init)).transpose(1, 2)
