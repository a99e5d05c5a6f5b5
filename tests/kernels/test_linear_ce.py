"""Fused linear cross-entropy: every backend against plain logits → F.cross_entropy, loss and gradients."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from motif_data.kernels import LinearCrossEntropy, linear_ce, linear_cross_entropy


def _inputs(n, d, vocab, dtype, device, seed=0, n_ignored=5):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, d, generator=g) / d**0.25).to(device, dtype).requires_grad_()
    weight = (torch.randn(vocab, d, generator=g) / d**0.25).to(device, dtype).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[torch.randperm(n, generator=g)[:n_ignored]] = -100
    return hidden, weight, targets.to(device)


def _plain(hidden, weight, targets, reduction):
    # The unfused path written out independently of the module's reference helper.
    return F.cross_entropy((hidden @ weight.T).double(), targets, ignore_index=-100, reduction=reduction)


def _compare(loss_fn, hidden, weight, targets, reduction, rel_err, tol, uniform_upstream=False):
    loss = loss_fn(hidden, weight, targets, reduction)
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    if uniform_upstream:  # what a mean or sum of per-token losses sends back
        upstream = torch.full_like(upstream, 0.37)
    got = torch.autograd.grad(loss, (hidden, weight), upstream.to(loss.device, loss.dtype))
    h64, w64 = (t.detach().double().cpu().requires_grad_() for t in (hidden, weight))
    ref = _plain(h64, w64, targets.cpu(), reduction)
    want = torch.autograd.grad(ref, (h64, w64), upstream)
    assert loss.shape == ref.shape
    assert rel_err(loss, ref) < tol
    assert rel_err(got[0], want[0]) < tol, "grad of hidden"
    assert rel_err(got[1], want[1]) < tol, "grad of weight"
    return loss


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk", [7, 64, None], ids=["ragged-chunks", "one-chunk", "default"])
def test_chunked_matches_plain_cross_entropy(reduction, chunk, rel_err):
    hidden, weight, targets = _inputs(37, 24, 101, torch.float32, "cpu")

    def fn(h, w, t, red):
        return linear_ce._chunked(h, w, t, -100, red, chunk=chunk)

    loss = _compare(fn, hidden, weight, targets, reduction, rel_err, 1e-5)
    if reduction == "none":
        assert (loss[targets == -100] == 0).all()


def test_chunked_bf16(rel_err):
    hidden, weight, targets = _inputs(40, 32, 150, torch.bfloat16, "cpu")
    _compare(
        lambda h, w, t, r: linear_ce._chunked(h, w, t, -100, r, chunk=16),
        hidden,
        weight,
        targets,
        "mean",
        rel_err,
        2e-2,
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk", [7, 64], ids=["ragged-chunks", "one-chunk"])
def test_dense_matches_plain_cross_entropy(reduction, chunk, device, rel_err):
    hidden, weight, targets = _inputs(37, 24, 5003, torch.float32, device)  # vocab > the kernel's block

    def fn(h, w, t, red):
        return linear_ce._dense(h, w, t, -100, red, chunk=chunk)

    loss = _compare(fn, hidden, weight, targets, reduction, rel_err, 1e-5, uniform_upstream=True)
    if reduction == "none":
        assert (loss[targets == -100] == 0).all()


def test_dense_takes_fp32_master_weights_with_bf16_activations(device, rel_err):
    # The training case: bf16 hidden states, the fp32 embedding; the weight's gradient comes back in fp32.
    hidden, weight, targets = _inputs(40, 32, 300, torch.float32, device)
    hidden = hidden.detach().bfloat16().requires_grad_()
    loss = linear_cross_entropy(hidden, weight, targets, backend="dense")
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.float32
    h64, w64 = (
        hidden.detach().double().cpu().requires_grad_(),
        weight.detach().double().cpu().requires_grad_(),
    )
    ref = _plain(h64, w64, targets.cpu(), "mean")
    want = torch.autograd.grad(ref, (h64, w64))
    assert rel_err(loss, ref) < 2e-2
    assert rel_err(gh, want[0]) < 2e-2 and rel_err(gw, want[1]) < 2e-2


def test_dense_without_gradients_computes_the_loss_only(device):
    hidden, weight, targets = _inputs(9, 8, 300, torch.float32, device)
    with torch.no_grad():
        loss = linear_ce._dense(hidden, weight, targets, -100, "none")
    assert not loss.requires_grad
    torch.testing.assert_close(loss.double(), _plain(hidden.detach(), weight.detach(), targets, "none"))


def test_dense_refuses_a_non_uniform_upstream_gradient(device):
    hidden, weight, targets = _inputs(5, 8, 50, torch.float32, device, n_ignored=0)
    losses = linear_ce._dense(hidden, weight, targets, -100, "none")
    with pytest.raises(ValueError, match="uniform upstream gradient"):
        (losses * torch.arange(5.0, device=losses.device)).sum().backward()


def test_cpu_default_is_chunked_and_never_builds_full_logits(monkeypatch):
    assert linear_ce.default_backend(torch.device("cpu")) == "chunked"
    # The CPU has no fp32-output GEMM of bf16 operands, so dense sums each chunk's product instead.
    assert not linear_ce.gemm_sums_in_fp32(torch.device("cpu"))
    monkeypatch.setattr(linear_ce, "_CHUNK_ELEMENTS", 101 * 8)  # 8 rows of logits at a time
    widest = []
    real_matmul, real_mm = torch.Tensor.__matmul__, torch.mm

    def logits_rows(out):
        widest.append(out.shape[0] if out.ndim == 2 and out.shape[1] == 101 else 0)
        return out

    # Every product the loss makes (into a fresh tensor or into a buffer) is seen.
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: logits_rows(real_matmul(a, b)))
    monkeypatch.setattr(torch, "mm", lambda a, b, **kw: logits_rows(real_mm(a, b, **kw)))
    hidden, weight, targets = _inputs(37, 24, 101, torch.float32, "cpu")
    linear_cross_entropy(hidden, weight, targets).backward()
    assert 0 < max(widest) <= 8


def test_all_ignored_mean_is_nan_like_cross_entropy():
    hidden, weight, targets = _inputs(4, 8, 10, torch.float32, "cpu", n_ignored=4)
    assert torch.isnan(linear_cross_entropy(hidden, weight, targets))
    assert torch.isnan(F.cross_entropy(hidden @ weight.T, targets))


def test_module_and_bad_arguments():
    hidden, weight, targets = _inputs(6, 8, 10, torch.float32, "cpu", n_ignored=0)
    head = LinearCrossEntropy(reduction="sum")
    torch.testing.assert_close(head(hidden, weight, targets), _plain(hidden, weight, targets, "sum").float())
    with pytest.raises(ValueError, match="targets must be int64.*reduction must be one of"):
        linear_cross_entropy(hidden, weight, targets.int(), reduction="avg")
    with pytest.raises(ValueError, match="backend must be one of"):
        linear_cross_entropy(hidden, weight, targets, backend="fast")
    with pytest.raises(ValueError, match="must be of hidden's dtype"):
        linear_cross_entropy(hidden, weight.bfloat16(), targets)


@pytest.mark.gpu
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("backend", ["cce", "liger", "dense", "chunked"])
def test_gpu_backends_match_plain_cross_entropy(backend, reduction, rel_err):
    module = {"cce": "cut_cross_entropy", "liger": "liger_kernel"}.get(backend)
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed on the GPU machine (install the [gpu] extra)")
    hidden, weight, targets = _inputs(1000, 256, 5003, torch.bfloat16, "cuda", n_ignored=50)

    def fn(h, w, t, red):
        return linear_cross_entropy(h, w, t, reduction=red, backend=backend)

    _compare(fn, hidden, weight, targets, reduction, rel_err, 2e-2, uniform_upstream=backend == "dense")


@pytest.mark.gpu
def test_gpu_default_backend_is_fused():
    assert linear_ce.default_backend(torch.device("cuda")) == "dense"


@pytest.mark.gpu
def test_gpu_the_fp32_sum_probe_agrees_with_a_float64_check():
    # The probe decides how dense sums its weight gradient; here the same question is asked at a real size.
    device = torch.device("cuda", torch.cuda.current_device())
    a = torch.randn(2048, 768, device=device).bfloat16()
    b = torch.randn(768, 4096, device=device).bfloat16()
    acc = torch.randn(2048, 4096, device=device)
    want = acc.double() + a.double() @ b.double()
    try:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        works = bool(((acc.double() - want).norm() / want.norm()) < 1e-4)
    except RuntimeError:
        works = False
    assert linear_ce.gemm_sums_in_fp32(device) == works
    if torch.version.hip is None:
        assert works  # documented for CUDA
