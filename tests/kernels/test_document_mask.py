"""Document masking in the differential-attention kernels (interpreted on the CPU): output, every gradient and
the per-map largest logit against attention computed one document at a time in float64 — an independent
reference, since it never builds a mask — and the bounds helpers against loops over the tokens."""

from __future__ import annotations

import math

import pytest
import torch

from motif_data.kernels import diff_attn as da
from motif_data.kernels._device import pinned_config
from motif_data.kernels.documents import (
    document_bounds,
    document_bounds_from_cu_seqlens,
    document_mask,
)

D, DV = 16, 32
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
# Per row, document lengths summing to S = 128. The interpreter runs each kernel's first config: query blocks of
# 64 and key blocks of 32 in the forward, 32 × 32 in the backward. Row 0: one-token documents, a document of
# exactly one 32-block on a block boundary, documents crossing blocks; row 1: one long document crossing every
# block, then short ones; row 2 (where a third row is used): one document (plain causal attention).
LAYOUTS = ([1, 1, 30, 32, 1, 40, 23], [97, 1, 2, 28], [128])
SEQ = 128


def _positions(layouts) -> torch.Tensor:
    return torch.stack([torch.cat([torch.arange(n) for n in lengths]) for lengths in layouts])


def _bounds_by_loop(layouts) -> torch.Tensor:
    out = torch.zeros(2, len(layouts), SEQ, dtype=torch.int32)
    for row, lengths in enumerate(layouts):
        at = 0
        for n in lengths:
            out[0, row, at : at + n], out[1, row, at : at + n] = at, at + n
            at += n
    return out


def test_bounds_from_positions_and_cu_seqlens_match_a_loop_over_tokens():
    want = _bounds_by_loop(LAYOUTS)
    assert torch.equal(document_bounds(_positions(LAYOUTS)), want)
    cu = torch.tensor([0] + [SEQ * r + sum(lengths[: i + 1]) for r, lengths in enumerate(LAYOUTS)
                             for i in range(len(lengths))])  # fmt: skip
    assert torch.equal(document_bounds_from_cu_seqlens(cu, len(LAYOUTS), SEQ), want)
    # A row that begins inside a document (positions not from 0) starts a document at the row's first token;
    # a position that does not count on from its predecessor starts one too.
    pos = torch.tensor([[7, 8, 9, 0, 1, 5, 6]])
    assert document_bounds(pos).tolist() == [[[0, 0, 0, 3, 3, 5, 5]], [[3, 3, 3, 5, 5, 7, 7]]]
    # A document running over a row's end is cut at the row boundary.
    assert document_bounds_from_cu_seqlens(torch.tensor([0, 3, 8]), 2, 4).tolist() == [
        [[0, 0, 0, 3], [0, 0, 0, 0]],
        [[3, 3, 3, 4], [4, 4, 4, 4]],
    ]


def test_document_mask_is_causal_within_documents():
    mask = document_mask(_bounds_by_loop(LAYOUTS))
    for row, lengths in enumerate(LAYOUTS):
        doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        i, j = torch.meshgrid(torch.arange(SEQ), torch.arange(SEQ), indexing="ij")
        assert torch.equal(mask[row, 0], (j <= i) & (doc[i] == doc[j]))


def _per_document(fn, tensors, layouts):
    """Run ``fn`` (plain causal attention over (B=1, heads, n, ·) slices) on each document alone and put the
    results back in place: attention restricted to documents, without any mask."""
    rows = []
    for row, lengths in enumerate(layouts):
        parts, at = [], 0
        for n in lengths:
            parts.append(fn(*(t[row : row + 1, :, at : at + n] for t in tensors)))
            at += n
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows)


def _rand(shape, dtype, device, gen):
    return torch.randn(*shape, generator=gen).to(device, dtype).requires_grad_()


def _compare(out, got_grads, ref, ref_in, dout, dtype, rel_err, names):
    want = torch.autograd.grad(ref, ref_in, dout.double().cpu())
    assert rel_err(out, ref) < TOL[dtype]
    for name, g_got, g_want in zip(names, got_grads, want, strict=True):
        assert rel_err(g_got, g_want) < TOL[dtype], f"grad of {name}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_differential_attention_within_documents(dtype, device, rel_err):
    layouts = LAYOUTS
    gen = torch.Generator().manual_seed(0)
    b, heads = len(layouts), 2
    q, k = (
        _rand((b, 2 * heads, SEQ, D), dtype, device, gen),
        _rand((b, 2 * heads, SEQ, D), dtype, device, gen),
    )
    v = _rand((b, heads, SEQ, DV), dtype, device, gen)
    lam = torch.tensor(0.6, device=device, requires_grad=True)
    docs = document_bounds(_positions(layouts)).to(device)
    scale = 1.0 / math.sqrt(D)
    out, maxima = da._DiffAttnFn.apply(q, k, v, lam, True, scale, True, docs)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    got = torch.autograd.grad(out, (q, k, v, lam), dout)
    ref_in = [t.detach().double().cpu().requires_grad_() for t in (q, k, v, lam)]
    ref = _per_document(
        lambda q_, k_, v_: da.reference_diff_attention(q_, k_, v_, ref_in[3]), ref_in[:3], layouts
    )
    _compare(out, got, ref, ref_in, dout, dtype, rel_err, ("q", "k", "v", "lambda"))
    # The masked reference (what the model's reference path runs) agrees with the per-document one.
    masked = da.reference_diff_attention(*ref_in, documents=docs.cpu())
    assert rel_err(masked, ref) < 1e-12
    # Each map's largest logit, by hand over each document's causal scores.
    qd, kd = q.detach().double().cpu(), k.detach().double().cpu()
    by_hand = []
    for m in range(2 * heads):
        best = -math.inf
        for row, lengths in enumerate(layouts):
            at = 0
            for n in lengths:
                s = qd[row, m, at : at + n] @ kd[row, m, at : at + n].T * scale
                best = max(
                    best, s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf).max().item()
                )
                at += n
        by_hand.append(best)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(
        maxima.double().cpu(), torch.tensor(by_hand, dtype=torch.float64), rtol=tol, atol=tol
    )


# (signal, noise, signal-key, noise-key, value) heads: r = 2 with a value head per signal head, and Motif-2-12.7B's
# shape in small (r = 4, keys and values shared by whole groups).
@pytest.mark.parametrize("heads", [(4, 2, 4, 2, 4), (8, 2, 2, 2, 2)], ids=["r2", "r4-gqa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_grouped_differential_attention_within_documents(heads, dtype, device, rel_err):
    layouts = LAYOUTS[:2]
    gen = torch.Generator().manual_seed(2)
    b = len(layouts)
    hs, hn, hks, hkn, hv = heads
    tensors = [
        _rand((b, n, SEQ, width), dtype, device, gen)
        for n, width in ((hs, D), (hks, D), (hn, D), (hkn, D), (hv, DV))
    ]
    lam = (torch.rand(hs, generator=gen) * 0.8 + 0.1).to(device).requires_grad_()
    docs = document_bounds(_positions(layouts)).to(device)
    out, _ = da._GroupedDiffAttnFn.apply(*tensors, lam, True, 1.0 / math.sqrt(D), False, docs)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    got = torch.autograd.grad(out, (*tensors, lam), dout)
    ref_in = [t.detach().double().cpu().requires_grad_() for t in (*tensors, lam)]
    ref = _per_document(lambda *t: da.reference_grouped_diff_attention(*t, ref_in[5]), ref_in[:5], layouts)
    _compare(out, got, ref, ref_in, dout, dtype, rel_err, ("q_s", "k_s", "q_n", "k_n", "v", "lambda"))


@pytest.mark.parametrize("config", [1, 2, 3, 4])
def test_other_block_shapes_within_documents(config, device, rel_err):
    """The other autotune configs (other block sizes, so other documents cross and fill blocks)."""
    layouts = LAYOUTS[:2]
    gen = torch.Generator().manual_seed(4)
    tensors = [
        _rand((2, n, SEQ, width), torch.float32, device, gen)
        for n, width in ((4, D), (4, D), (2, D), (2, D), (4, DV))
    ]
    lam = torch.tensor(0.5, device=device, requires_grad=True)
    docs = document_bounds(_positions(layouts)).to(device)
    pair_q = torch.stack((tensors[0][:, :2], tensors[2]), 2).flatten(1, 2).detach().requires_grad_()
    pair_k = torch.stack((tensors[1][:, :2], tensors[3]), 2).flatten(1, 2).detach().requires_grad_()
    v = tensors[4][:, :2].detach().requires_grad_()
    with pinned_config(config):
        grouped, _ = da._GroupedDiffAttnFn.apply(*tensors, lam, True, 1.0 / math.sqrt(D), False, docs)
        paired, _ = da._DiffAttnFn.apply(pair_q, pair_k, v, lam, True, 1.0 / math.sqrt(D), False, docs)
    dout = torch.randn(grouped.shape, generator=torch.Generator().manual_seed(5)).to(device)
    got = torch.autograd.grad(grouped, tensors, dout)
    got_pair = torch.autograd.grad(paired, (pair_q, pair_k, v), dout[:, :2])
    ref_in = [t.detach().double().cpu().requires_grad_() for t in tensors]
    ref = _per_document(lambda *t: da.reference_grouped_diff_attention(*t, lam.detach().double().cpu()),
                        ref_in, layouts)  # fmt: skip
    _compare(grouped, got, ref, ref_in, dout, torch.float32, rel_err, ("q_s", "k_s", "q_n", "k_n", "v"))
    pair_in = [t.detach().double().cpu().requires_grad_() for t in (pair_q, pair_k, v)]
    pair_ref = _per_document(
        lambda *t: da.reference_diff_attention(*t, lam.detach().double().cpu()), pair_in, layouts
    )
    _compare(paired, got_pair, pair_ref, pair_in, dout[:, :2], torch.float32, rel_err, ("q", "k", "v"))


def test_bad_documents_are_refused_naming_the_fix():
    q = torch.randn(2, 4, 8, D)
    v = torch.randn(2, 2, 8, DV)
    lam = torch.tensor(0.5)
    with pytest.raises(ValueError, match=r"documents must be the \(2, 2, 8\) integer bounds"):
        da.diff_attention(q, q, v, lam, documents=torch.zeros(2, 2, 7, dtype=torch.int32))
    with pytest.raises(ValueError, match="pass causal=True"):
        da.diff_attention(q, q, v, lam, causal=False, documents=torch.zeros(2, 2, 8, dtype=torch.int32))
