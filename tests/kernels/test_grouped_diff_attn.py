"""Grouped differential attention: the Triton kernels (interpreted on the CPU) against float64 SDPA calls that
compute each noise map once per signal head (the r-separate-calls reference), and against diff_attention."""

from __future__ import annotations

import math

import pytest
import torch

from motif_data.kernels import diff_attention, grouped_diff_attention
from motif_data.kernels import diff_attn as da
from motif_data.kernels._device import pinned_config

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
NAMES = ("q_signal", "k_signal", "q_noise", "k_noise", "v", "lambda")


def _inputs(b, heads, s, d, dv, dtype, device, *, seed=0, per_head=True):
    """heads = (signal, noise, signal-key, noise-key, value) head counts."""
    hs, hn, hks, hkn, hv = heads
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype).requires_grad_()

    tensors = [
        rand(b, hs, s, d),
        rand(b, hks, s, d),
        rand(b, hn, s, d),
        rand(b, hkn, s, d),
        rand(b, hv, s, dv),
    ]
    lam = torch.rand(hs, generator=g) * 0.8 + 0.1 if per_head else torch.tensor(0.55)
    return (*tensors, lam.to(device).requires_grad_())


def _max_logits_by_hand(q, k, causal, scale):
    # Independent of the module's reference: one (query map, key map) pair at a time, in float64.
    out = []
    for h in range(q.shape[1]):
        kh = k[:, h // (q.shape[1] // k.shape[1])]
        scores = q[:, h].double() @ kh.double().transpose(-1, -2) * scale
        if causal:
            scores = scores.masked_fill(torch.ones_like(scores[0], dtype=torch.bool).triu(1), float("-inf"))
        out.append(scores.max())
    return torch.stack(out)


def _check_against_reference(heads, seq, dtype, causal, device, rel_err, *, per_head=True):
    d, dv = 16, 32
    inputs = _inputs(2, heads, seq, d, dv, dtype, device, per_head=per_head)
    scale = 1.0 / math.sqrt(d)
    out, maxima = da._GroupedDiffAttnFn.apply(*inputs, causal, scale, True)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    got = torch.autograd.grad(out, inputs, dout)
    ref_in = [t.detach().double().cpu().requires_grad_() for t in inputs]
    ref = da.reference_grouped_diff_attention(*ref_in, causal=causal)
    want = torch.autograd.grad(ref, ref_in, dout.double().cpu())
    assert out.shape == (2, heads[0], seq, dv) and out.dtype == dtype
    assert rel_err(out, ref) < TOL[dtype]
    for name, g_got, g_want in zip(NAMES, got, want, strict=True):
        assert g_got.shape == g_want.shape, name
        assert rel_err(g_got, g_want) < TOL[dtype], f"grad of {name}"
    q_s, k_s, q_n, k_n = (t.detach().cpu() for t in inputs[:4])
    by_hand = torch.cat(
        (_max_logits_by_hand(q_s, k_s, causal, scale), _max_logits_by_hand(q_n, k_n, causal, scale))
    )
    assert maxima.shape == (heads[0] + heads[1],)
    # The kernel's scores come from the same operands (bf16-rounded where bf16) with fp32 products.
    torch.testing.assert_close(maxima.double().cpu(), by_hand, rtol=1e-5 if dtype == torch.float32 else 1e-2,
                               atol=1e-5 if dtype == torch.float32 else 5e-2)  # fmt: skip


# r ∈ {1, 2, 4} over 8 signal heads, one value head per signal head; S = 37 and 70 are not multiples of any
# block size (70 spans several query and key blocks).
@pytest.mark.parametrize("seq", [37, 70])
@pytest.mark.parametrize("ratio", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_output_gradients_and_max_logits_match_the_reference(seq, ratio, dtype, device, rel_err):
    hs = 8
    hn = hs // ratio
    _check_against_reference((hs, hn, hs, hn, hs), seq, dtype, True, device, rel_err)


@pytest.mark.parametrize(
    "heads",
    [(8, 2, 4, 1, 8), (8, 2, 2, 2, 2), (8, 2, 2, 1, 1)],
    ids=["gqa-keys", "groups-share-a-value", "one-value-head"],
)
def test_grouped_keys_and_values(heads, device, rel_err):
    _check_against_reference(heads, 37, torch.float32, True, device, rel_err)


def test_full_attention_and_a_layer_wide_lambda(device, rel_err):
    _check_against_reference((4, 1, 4, 1, 4), 37, torch.float32, False, device, rel_err, per_head=False)


def test_ratio_one_equals_diff_attention(device, rel_err):
    # The interleaved (B, 2H, S, D) maps of diff_attention, handed over as strided signal and noise views: the
    # grouped kernels (one backward per kind of map) against the paired ones (one dO·Vᵀ for both maps).
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, 8, 45, 16, generator=g).to(device).requires_grad_() for _ in range(2))
    v = torch.randn(2, 4, 45, 32, generator=g).to(device).requires_grad_()
    lam = torch.tensor(0.4, device=device, requires_grad=True)
    dout = torch.randn(2, 4, 45, 32, generator=g).to(device)
    paired = diff_attention(q, k, v, lam)
    grouped = da._GroupedDiffAttnFn.apply(
        q[:, 0::2], k[:, 0::2], q[:, 1::2], k[:, 1::2], v, lam, True, 0.25, False
    )[0]
    # fp32 both: the two only differ in the order of their sums.
    assert rel_err(grouped, paired) < 1e-6
    for a, b in zip(torch.autograd.grad(grouped, (q, k, v, lam), dout),
                    torch.autograd.grad(paired, (q, k, v, lam), dout), strict=True):  # fmt: skip
        assert rel_err(a, b) < 1e-5


def test_diff_attention_max_logits_are_per_map_in_q_order(device):
    g = torch.Generator().manual_seed(4)
    q, k = (torch.randn(1, 4, 33, 16, generator=g).to(device) for _ in range(2))
    v = torch.randn(1, 2, 33, 32, generator=g).to(device)
    q[:, 3] *= 4  # a map with larger logits, so the order is visible
    _, maxima = diff_attention(q, k, v, torch.tensor(0.5, device=device), return_max_logits=True)
    torch.testing.assert_close(maxima.double().cpu(), _max_logits_by_hand(q.cpu(), k.cpu(), True, 0.25),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert maxima.argmax().item() == 3


def test_cpu_dispatch_is_the_reference():
    inputs = _inputs(1, (4, 2, 4, 2, 4), 9, 8, 16, torch.float32, "cpu")
    torch.testing.assert_close(
        grouped_diff_attention(*inputs), da.reference_grouped_diff_attention(*inputs), rtol=0, atol=0
    )


def test_shape_errors_name_the_input_and_the_fix():
    inputs = list(_inputs(1, (4, 2, 4, 2, 4), 9, 8, 16, torch.float32, "cpu"))
    with pytest.raises(ValueError, match="do not split into groups over 3 noise maps"):
        grouped_diff_attention(
            inputs[0], inputs[1], torch.randn(1, 3, 9, 8), torch.randn(1, 3, 9, 8), *inputs[4:]
        )
    with pytest.raises(ValueError, match="k_signal has 3 heads"):
        grouped_diff_attention(inputs[0], torch.randn(1, 3, 9, 8), *inputs[2:])
    with pytest.raises(ValueError, match="value sharing a multiple of the ratio"):
        bad_v = torch.randn(1, 2, 9, 16)  # a value head per 2 signal heads, but groups of 4
        grouped_diff_attention(inputs[0], inputs[1], torch.randn(1, 1, 9, 8), torch.randn(1, 1, 9, 8), bad_v,
                               inputs[5])  # fmt: skip
    with pytest.raises(ValueError, match=r"lambda_ must be 0-dim or \(4,\)"):
        grouped_diff_attention(*inputs[:5], torch.rand(2))


def _assert_gpu_matches_reference(inputs, tol, rel_err, *, track=False):
    """The op on the GPU (under whatever config is pinned) against float64 SDPA: output and q/k/v grads.
    ``track`` runs the max-logit path of the forward as well."""
    out = grouped_diff_attention(*inputs, return_max_logits=track)
    out = out[0] if track else out
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(
        out
    )  # not the run order's RNG state
    got = torch.autograd.grad(out, inputs, dout)
    ref_in = [t.detach().double().requires_grad_() for t in inputs]
    ref = da.reference_grouped_diff_attention(*ref_in)
    want = torch.autograd.grad(ref, ref_in, dout.double())
    assert rel_err(out, ref) < tol
    for name, g_got, g_want in zip(NAMES[:5], got, want, strict=False):
        assert rel_err(g_got, g_want) < tol, f"grad of {name}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_gpu_motif_2_12_7b_head_shape_matches_reference(dtype, rel_err):
    from motif_data.train.config import MODEL_PRESETS

    cfg = MODEL_PRESETS["motif-2-12.7b"]  # 32 signal heads, 8 noise maps, 8 K/V pairs: Dv = 256
    heads = (cfg.diff_heads, cfg.noise_maps, cfg.kv_pairs, cfg.kv_pairs, cfg.kv_pairs)
    inputs = _inputs(1, heads, 333, cfg.head_dim, 2 * cfg.head_dim, dtype, "cuda", seed=5)
    _assert_gpu_matches_reference(inputs, TOL[dtype], rel_err, track=True)


@pytest.mark.gpu
@pytest.mark.parametrize("config", range(da.N_CONFIGS))
@pytest.mark.parametrize("heads", [(8, 2, 2, 2, 2), (8, 2, 4, 1, 2)], ids=["motif-layout", "gqa-noise-keys"])
def test_gpu_every_autotune_config_is_correct(config, heads, rel_err):
    # The layouts the model produces: each K/V pair serves whole groups, so a noise map reads one value head.
    inputs = _inputs(1, heads, 333, 128, 256, torch.bfloat16, "cuda", seed=6)
    with pinned_config(config):
        _assert_gpu_matches_reference(inputs, 2e-2, rel_err)


@pytest.mark.gpu
def test_gpu_a_value_head_per_signal_head(rel_err):
    # The op's other value layout (each noise map's tile r·Dv wide) on the first config, which fits it.
    inputs = _inputs(1, (8, 2, 8, 2, 8), 333, 64, 128, torch.bfloat16, "cuda", seed=7)
    _assert_gpu_matches_reference(inputs, 2e-2, rel_err)
