"""PolyNorm and PolyNorm ⊙ y: the Triton kernels (interpreted on the CPU) against the PyTorch reference."""

from __future__ import annotations

import pytest
import torch

from motif_data.kernels import PolyNorm, PolyNormGatedMLP, poly_norm, poly_norm_mul, polynorm
from motif_data.kernels._device import pinned_config
from motif_data.kernels.polynorm import reference_poly_norm, reference_poly_norm_mul

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _inputs(shape, dtype, device, gate, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(device, dtype).requires_grad_()
    y = torch.randn(shape, generator=g).to(device, dtype).requires_grad_() if gate else None
    w = torch.tensor([0.4, -0.7, 1.3], device=device, requires_grad=True)
    b = torch.tensor([0.25], device=device, requires_grad=True)
    return x, y, w, b


def _grads(out, tensors, dout):
    return torch.autograd.grad(out, [t for t in tensors if t is not None], dout)


def _check_against_reference(shape, dtype, device, gate, rel_err):
    x, y, w, b = _inputs(shape, dtype, device, gate)
    out = polynorm._PolyNormFn.apply(x, y, w, b, 1e-6)
    dout = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    got = _grads(out, (x, y, w, b), dout)
    # The reference runs in float64 on copies, so it is independent of the kernel's fp32 arithmetic.
    xr, yr, wr, br = (
        t.detach().double().cpu().requires_grad_() if t is not None else None for t in (x, y, w, b)
    )
    ref = reference_poly_norm_mul(xr, yr, wr, br) if gate else reference_poly_norm(xr, wr, br)
    want = _grads(ref, (xr, yr, wr, br), dout.double().cpu())
    assert out.dtype == dtype and out.shape == x.shape
    tol = TOL[dtype]
    assert rel_err(out, ref) < tol
    for name, g_got, g_want in zip(("x", "y", "w", "b") if gate else ("x", "w", "b"), got, want, strict=True):
        assert rel_err(g_got, g_want) < tol, f"grad of {name}"


@pytest.mark.parametrize("gate", [False, True], ids=["poly_norm", "poly_norm_mul"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(7, 37), (2, 5, 64), (1, 3)], ids=["odd-width", "3d", "tiny"])
def test_triton_matches_reference_output_and_all_gradients(shape, dtype, gate, device, rel_err):
    _check_against_reference(shape, dtype, device, gate, rel_err)


def _config_index(block_m: int, chunked: bool) -> int:
    return next(
        i
        for i, c in enumerate(polynorm._chunked_configs() if chunked else polynorm._whole_row_configs())
        if c.kwargs["BLOCK_M"] == block_m
    )


def test_two_rows_per_program_with_an_odd_row_count(device, rel_err):
    with pinned_config(_config_index(2, chunked=False)):
        _check_against_reference((7, 37), torch.float32, device, True, rel_err)


@pytest.mark.parametrize("gate", [False, True], ids=["poly_norm", "poly_norm_mul"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rows_walked_in_chunks_with_a_ragged_last_chunk(dtype, gate, device, rel_err, monkeypatch):
    # Two rows a program, width 2,500 = two whole 1,024-wide chunks and a ragged third; odd row count.
    chunk = polynorm._chunked_configs()[_config_index(2, chunked=True)].kwargs["CHUNK"]
    assert 2 * chunk < 2500 < 3 * chunk
    monkeypatch.setattr(polynorm, "_WHOLE_ROW_MAX", 1024)  # chunked programs at this small width
    with pinned_config(_config_index(2, chunked=True)):
        _check_against_reference((3, 2500), dtype, device, gate, rel_err)


def test_fp16_inputs(device, rel_err):
    _check_against_reference((4, 48), torch.float16, device, True, rel_err)


def test_non_contiguous_rows_are_handled(device, rel_err):
    base = torch.randn(6, 80, device=device)
    x = base[:, :50].requires_grad_()  # row stride 80, width 50
    w = torch.tensor([0.3, 0.3, 0.4], device=device)
    b = torch.tensor([0.0], device=device)
    out = polynorm._PolyNormFn.apply(x, None, w, b, 1e-6)
    assert rel_err(out, reference_poly_norm(x.double().cpu(), w.double().cpu(), b.double().cpu())) < 1e-5


def test_cpu_dispatch_uses_reference_and_keeps_dtype():
    x = torch.randn(3, 10, dtype=torch.bfloat16)
    y = torch.randn(3, 10, dtype=torch.bfloat16)
    w, b = torch.full((3,), 1 / 3), torch.zeros(1)
    torch.testing.assert_close(poly_norm(x, w, b), reference_poly_norm(x, w, b), rtol=0, atol=0)
    out = poly_norm_mul(x, y, w, b)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference_poly_norm_mul(x, y, w, b), rtol=0, atol=0)


def test_reference_follows_the_definition():
    # Hand-computed PolyNorm of one row [1, -2] with w = (1, 2, 3), b = 0.5, eps = 0.
    x = torch.tensor([[1.0, -2.0]])
    w, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5])
    x1 = x / (2.5**0.5)  # mean(x²) = 2.5
    x2 = x**2 / (8.5**0.5)  # mean(x⁴) = 8.5
    x3 = x**3 / (32.5**0.5)  # mean(x⁶) = 32.5
    torch.testing.assert_close(reference_poly_norm(x, w, b, eps=0.0), 1 * x3 + 2 * x2 + 3 * x1 + 0.5)


def test_bad_parameter_shapes_fail_with_a_clear_message():
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\).*bias must have shape \(1,\)"):
        poly_norm(torch.randn(2, 4), torch.ones(2), torch.zeros(2))
    with pytest.raises(ValueError, match="y must have x's shape"):
        poly_norm_mul(torch.randn(2, 4), torch.randn(2, 5), torch.ones(3), torch.zeros(1))


def test_modules_initialise_and_compose():
    act = PolyNorm()
    torch.testing.assert_close(act.weight.detach(), torch.full((3,), 1 / 3))
    torch.testing.assert_close(act.bias.detach(), torch.zeros(1))
    mlp = PolyNormGatedMLP(hidden_size=12, intermediate_size=20)
    x = torch.randn(2, 3, 12)
    want = mlp.down_proj(act(mlp.gate_proj(x)) * mlp.up_proj(x))
    torch.testing.assert_close(mlp(x), want)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "config",
    [("whole rows", i) for i in range(len(polynorm._whole_row_configs()))]
    + [("chunks", i) for i in range(len(polynorm._chunked_configs()))],
    ids=str,
)
@pytest.mark.parametrize("gate", [False, True], ids=["poly_norm", "poly_norm_mul"])
@pytest.mark.parametrize("shape", [(512, 8192), (301, 5000), (64, 2048)])
def test_gpu_public_api_matches_reference(shape, gate, config, rel_err, monkeypatch):
    shape_name, index = config
    if shape_name == "chunks":
        monkeypatch.setattr(polynorm, "_WHOLE_ROW_MAX", 0)  # chunked programs at every width
    x, y, w, b = _inputs(shape, torch.bfloat16, "cuda", gate, seed=3)
    with pinned_config(index):
        out = poly_norm_mul(x, y, w, b) if gate else poly_norm(x, w, b)
        dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(
            out
        )  # not the run order's RNG state
        got = _grads(out, (x, y, w, b), dout)
    xr, yr, wr, br = (t.detach().double().requires_grad_() if t is not None else None for t in (x, y, w, b))
    ref = reference_poly_norm_mul(xr, yr, wr, br) if gate else reference_poly_norm(xr, wr, br)
    want = _grads(ref, (xr, yr, wr, br), dout.double())
    assert rel_err(out, ref) < 2e-2
    for g_got, g_want in zip(got, want, strict=True):
        assert rel_err(g_got, g_want) < 2e-2


def test_whole_rows_up_to_16k_columns_and_chunks_beyond():
    narrow, wide = polynorm._program_shape(16384), polynorm._program_shape(32768)
    for per_target in (polynorm._POLY_NORM_FWD, polynorm._POLY_NORM_BWD):
        for kernels in per_target.values():
            assert all(c.kwargs["CHUNK"] == 0 for c in kernels[narrow].configs)
            assert all(c.kwargs["CHUNK"] > 0 for c in kernels[wide].configs)
