"""Speed (and memory) of motif_data.kernels against their baselines, every figure measured in this run.

Run on a GPU machine:  PYTHONPATH=. python benchmarks/bench_kernels.py [--only polynorm,diff_attn,gda,linear_ce]
Needs liger-kernel and cut-cross-entropy for their columns (pip install -e .[gpu]).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench, do_bench_cudagraph

from motif_data.kernels import (
    _device,
    diff_attention,
    diff_attn,
    grouped_diff_attention,
    linear_cross_entropy,
    poly_norm,
    poly_norm_mul,
    polynorm,
)
from motif_data.kernels.diff_attn import reference_diff_attention, reference_grouped_diff_attention
from motif_data.kernels.linear_ce import default_backend
from motif_data.kernels.polynorm import reference_poly_norm

ROWS: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    ROWS.append(line)


def bench_ms(fn, warmup=50, rep=300) -> float:
    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def graph_ms(fn) -> float | None:
    """Median time of fn replayed from a CUDA graph: GPU time without the host's launch and autograd overhead,
    which at well under a millisecond (PolyNorm fwd+bwd) makes eager timings swing by tens of percent between
    runs. None where fn cannot be captured."""
    try:
        return do_bench_cudagraph(fn, rep=200, return_mode="median")
    except Exception:  # e.g. a host sync inside fn
        return None


def version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def copy_bandwidth(numel: int, dtype: torch.dtype) -> float:
    """GB/s of a device-to-device copy (bytes read + bytes written)."""
    src = torch.randn(numel, device="cuda").to(dtype)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms / 1e6


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ---------------------------------------------------------------------------------------------------------
def polynorm_tables(m: int, n: int, copy_gbs: float) -> None:
    from liger_kernel.transformers.functional import liger_poly_norm

    dtype = torch.bfloat16
    x = torch.randn(m, n, device="cuda", dtype=dtype)
    y = torch.randn(m, n, device="cuda", dtype=dtype)
    w = torch.tensor([0.3, 0.5, 0.2], device="cuda")
    b = torch.tensor([0.1], device="cuda")
    dout = torch.randn(m, n, device="cuda", dtype=dtype)
    tensor_bytes = x.numel() * x.element_size()
    compiled = torch.compile(reference_poly_norm, dynamic=False)

    def liger(x, w, b):
        return liger_poly_norm(x, w, b.view(()))  # Liger keeps the bias as a 0-dim tensor

    def unfused_mul(act):
        return lambda x, y, w, b: act(x, w, b) * y

    variants = {
        "poly_norm": {
            "ours (Triton)": lambda x, y, w, b: poly_norm(x, w, b),
            "eager reference": lambda x, y, w, b: reference_poly_norm(x, w, b),
            "torch.compile(reference)": lambda x, y, w, b: compiled(x, w, b),
            "Liger liger_poly_norm": lambda x, y, w, b: liger(x, w, b),
        },
        "poly_norm_mul": {
            "ours fused (Triton)": lambda x, y, w, b: poly_norm_mul(x, y, w, b),
            "ours poly_norm(x) * y": unfused_mul(poly_norm),
            "eager reference(x) * y": unfused_mul(reference_poly_norm),
            "torch.compile(reference)(x) * y": unfused_mul(compiled),
            "Liger poly_norm(x) * y": unfused_mul(liger),
        },
    }
    for op, fns in variants.items():
        gated = op == "poly_norm_mul"
        # Fewest bytes: fwd reads x (and y), writes out; bwd reads x (and y) and dout, writes dx (and dy).
        fwd_bytes = (3 if gated else 2) * tensor_bytes
        fb_bytes = fwd_bytes + (5 if gated else 3) * tensor_bytes
        emit(f"\n{op} at {m} x {n} bf16  (copy {copy_gbs:,.0f} GB/s; fwd moves {fwd_bytes / 1e9:.2f} GB, "
             f"fwd+bwd {fb_bytes / 1e9:.2f} GB)")  # fmt: skip
        emit(
            f"{'variant':34s} {'fwd ms':>8s} {'GB/s':>7s} {'xcopy':>6s} {'fwd+bwd ms':>11s} {'GB/s':>7s} {'xcopy':>6s}"
            f"  {'fwd+bwd graph ms':>16s} {'xcopy':>6s}"
        )
        results = {}
        with torch.no_grad():
            ref_out = fns[next(iter(fns))](x, y, w, b)
        for name, fn in fns.items():
            with torch.no_grad():
                fwd_ms = bench_ms(lambda fn=fn: fn(x, y, w, b))
            xg = x.detach().clone().requires_grad_()
            yg = y.detach().clone().requires_grad_()
            wg = w.detach().clone().requires_grad_()
            bg = b.detach().clone().requires_grad_()
            inputs = (xg, yg, wg, bg) if gated else (xg, wg, bg)

            def fwd_bwd(fn=fn, xg=xg, yg=yg, wg=wg, bg=bg, inputs=inputs):
                torch.autograd.grad(fn(xg, yg, wg, bg), inputs, dout)

            fb_ms = bench_ms(fwd_bwd, warmup=20, rep=200)
            fb_graph = graph_ms(fwd_bwd)
            results[name] = (fwd_ms, fb_ms, fb_graph)
            fwd_gbs, fb_gbs = fwd_bytes / fwd_ms / 1e6, fb_bytes / fb_ms / 1e6
            graph = (
                f"{fb_graph:16.3f} {fb_bytes / fb_graph / 1e6 / copy_gbs:6.2f}"
                if fb_graph
                else f"{'n/a':>16s}"
            )
            emit(f"{name:34s} {fwd_ms:8.3f} {fwd_gbs:7.0f} {fwd_gbs / copy_gbs:6.2f} {fb_ms:11.3f} {fb_gbs:7.0f} "
                 f"{fb_gbs / copy_gbs:6.2f}  {graph}")  # fmt: skip
        ours_name = next(iter(fns))
        ours_f, ours_fb, ours_graph = results[ours_name]
        speedups = ", ".join(
            f"{name}: fwd {f / ours_f:.2f}x, fwd+bwd {fb / ours_fb:.2f}x"
            + (f" (graph {g / ours_graph:.2f}x)" if g and ours_graph else "")
            for name, (f, fb, g) in results.items()
            if name != ours_name
        )
        emit(f"speed-up of {ours_name} over  {speedups}")
        program_shape = polynorm._program_shape(triton.next_power_of_2(n))
        for kernel in ("_POLY_NORM_FWD", "_POLY_NORM_BWD"):
            emit(
                f"  autotuned {kernel}: {_device.tuned(getattr(polynorm, kernel), x.device)[program_shape].best_config}"
            )
        with torch.no_grad():
            xd = x.double()
            want = reference_poly_norm(xd, w.double(), b.double()) * (y.double() if gated else 1.0)
        emit(f"check: rel. error of {ours_name} vs float64 reference {rel_err(ref_out, want):.2e}")


# ---------------------------------------------------------------------------------------------------------
def diff_attn_table(batch: int, seq: int, heads: int, d: int, dv: int) -> None:
    dtype = torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch, 2 * heads, seq, d, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(batch, 2 * heads, seq, d, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(batch, heads, seq, dv, device="cuda", dtype=dtype, generator=g)
    lam = torch.tensor(0.6, device="cuda")
    # Causal FLOPs of both maps: QKᵀ (2·S²·D) and PV (2·S²·Dv) each, halved by the mask; fwd+bwd counted as
    # 3.5 × fwd (the usual flash-attention convention: backward = 2.5 × forward).
    fwd_flops = 2 * batch * heads * (2 * seq * seq * (d + dv)) * 0.5
    fb_flops = 3.5 * fwd_flops
    emit(f"\ndiff_attention B={batch} S={seq} {heads} diff heads D={d} Dv={dv} bf16 causal")
    emit(f"{'variant':28s} {'fwd ms':>8s} {'TFLOP/s':>8s} {'fwd+bwd ms':>11s} {'TFLOP/s':>8s}")
    fns = {"ours (Triton)": diff_attention, "two-SDPA reference": reference_diff_attention}
    results = {}
    for name, fn in fns.items():
        with torch.no_grad():
            fwd_ms = bench_ms(lambda fn=fn: fn(q, k, v, lam), warmup=25, rep=200)
        qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
        lg = lam.detach().clone().requires_grad_()
        dout = torch.randn(batch, heads, seq, dv, device="cuda", dtype=dtype)

        def fwd_bwd(fn=fn, qg=qg, kg=kg, vg=vg, lg=lg, dout=dout):
            torch.autograd.grad(fn(qg, kg, vg, lg), (qg, kg, vg, lg), dout)

        fb_ms = bench_ms(fwd_bwd, warmup=25, rep=200)
        results[name] = (fwd_ms, fb_ms)
        emit(
            f"{name:28s} {fwd_ms:8.3f} {fwd_flops / fwd_ms / 1e9:8.1f} {fb_ms:11.3f} {fb_flops / fb_ms / 1e9:8.1f}"
        )
    (of, ofb), (rf, rfb) = results["ours (Triton)"], results["two-SDPA reference"]
    emit(f"speed-up over two-SDPA reference: fwd {rf / of:.2f}x, fwd+bwd {rfb / ofb:.2f}x")
    for kernel in ("_FWD", "_BWD_KV", "_BWD_Q"):
        emit(f"  autotuned {kernel}: {_device.tuned(getattr(diff_attn, kernel), q.device).best_config}")
    # Accuracy at this shape: both bf16 paths against an fp32 reference on the same inputs (first batch).
    sl = slice(0, 1)
    with torch.no_grad():
        want = reference_diff_attention(q[sl].float(), k[sl].float(), v[sl].float(), lam)
        emit(f"check: rel. error vs fp32 reference  ours {rel_err(diff_attention(q[sl], k[sl], v[sl], lam), want):.2e}"
             f"  two-SDPA bf16 {rel_err(reference_diff_attention(q[sl], k[sl], v[sl], lam), want):.2e}")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
def gda_table(batch: int, seq: int, signal: int, noise: int, pairs: int, d: int) -> None:
    """Grouped differential attention at Motif-2-12.7B's head shape: ours, the SDPA reference (the noise map
    recomputed for each of its r heads) and our differential-attention kernel on the same heads with the noise
    maps repeated — GDA done as r separate differential-attention calls."""
    dtype, dv, ratio = torch.bfloat16, 2 * d, signal // noise
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(h, width):
        return torch.randn(batch, h, seq, width, device="cuda", dtype=dtype, generator=g)

    q_s, k_s, q_n, k_n, v = rand(signal, d), rand(pairs, d), rand(noise, d), rand(pairs, d), rand(pairs, dv)
    lam = torch.tensor(0.6, device="cuda")
    # The r-separate-calls anchor's inputs: per signal head, its maps interleaved (2h, 2h + 1) and its value.
    rep = signal // pairs
    q_int = torch.stack((q_s, q_n.repeat_interleave(ratio, 1)), 2).flatten(1, 2)
    k_int = torch.stack(
        (k_s.repeat_interleave(rep, 1), k_n.repeat_interleave(signal // pairs, 1)), 2
    ).flatten(1, 2)
    v_rep = v.repeat_interleave(rep, 1)
    # Useful causal FLOPs: every signal map and each noise map once, QKᵀ and PV each, halved by the mask.
    fwd_flops = 2 * batch * (signal + noise) * (seq * seq * (d + dv))
    fb_flops = 3.5 * fwd_flops
    emit(f"\ngrouped_diff_attention B={batch} S={seq} {signal} signal heads, {noise} noise maps (r={ratio}), "
         f"{pairs} K/V pairs, D={d} Dv={dv} bf16 causal")  # fmt: skip
    emit(f"{'variant':36s} {'fwd ms':>8s} {'TFLOP/s':>8s} {'fwd+bwd ms':>11s} {'TFLOP/s':>8s}")
    variants = {
        "ours (Triton, grouped)": (grouped_diff_attention, (q_s, k_s, q_n, k_n, v)),
        "SDPA reference (anchor)": (reference_grouped_diff_attention, (q_s, k_s, q_n, k_n, v)),
        f"{ratio} separate diff_attention calls": (diff_attention, (q_int, k_int, v_rep)),
    }
    results = {}
    for name, (fn, tensors) in variants.items():
        with torch.no_grad():
            fwd_ms = bench_ms(lambda fn=fn, t=tensors: fn(*t, lam), warmup=25, rep=200)
        grads = [t.detach().clone().requires_grad_() for t in tensors]
        lg = lam.detach().clone().requires_grad_()
        dout = torch.randn(batch, signal, seq, dv, device="cuda", dtype=dtype)

        def fwd_bwd(fn=fn, grads=grads, lg=lg, dout=dout):
            torch.autograd.grad(fn(*grads, lg), (*grads, lg), dout)

        fb_ms = bench_ms(fwd_bwd, warmup=25, rep=200)
        results[name] = (fwd_ms, fb_ms)
        emit(
            f"{name:36s} {fwd_ms:8.3f} {fwd_flops / fwd_ms / 1e9:8.1f} {fb_ms:11.3f} {fb_flops / fb_ms / 1e9:8.1f}"
        )
    (of, ofb), (rf, rfb) = results["ours (Triton, grouped)"], results["SDPA reference (anchor)"]
    sf, sfb = results[f"{ratio} separate diff_attention calls"]
    emit(f"speed-up over the SDPA reference: fwd {rf / of:.2f}x, fwd+bwd {rfb / ofb:.2f}x (goal ≥ 1.2x); "
         f"over {ratio} separate calls: fwd {sf / of:.2f}x, fwd+bwd {sfb / ofb:.2f}x (goal > 1x)")  # fmt: skip
    for kernel in ("_FWD", "_MAP_BWD_KV", "_MAP_BWD_Q"):
        emit(f"  autotuned {kernel}: {_device.tuned(getattr(diff_attn, kernel), v.device).best_config}")
    sl = slice(0, 1)
    with torch.no_grad():
        inputs = [t[sl] for t in (q_s, k_s, q_n, k_n, v)]
        want = reference_grouped_diff_attention(*[t.float() for t in inputs], lam)
        emit(f"check: rel. error vs fp32 reference  ours {rel_err(grouped_diff_attention(*inputs, lam), want):.2e}"
             f"  SDPA bf16 {rel_err(reference_grouped_diff_attention(*inputs, lam), want):.2e}")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
def linear_ce_table(n: int, d: int, vocab: int) -> None:
    dtype = torch.bfloat16
    hidden = (torch.randn(n, d, device="cuda") / d**0.25).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, d, device="cuda") / d**0.25).to(dtype).requires_grad_()
    targets = torch.randint(0, vocab, (n,), device="cuda")
    targets[::17] = -100

    def plain(h, w, t):
        return F.cross_entropy((h @ w.T).float(), t, ignore_index=-100)

    def cce_unfiltered(h, w, t):
        from cut_cross_entropy import linear_cross_entropy as cce

        return cce(h, w, t, ignore_index=-100, filter_eps=None)

    variants = {"plain logits -> cross_entropy": plain}
    for backend in ("cce", "liger", "dense", "chunked"):
        variants[f"linear_cross_entropy[{backend}]"] = lambda h, w, t, backend=backend: linear_cross_entropy(
            h, w, t, backend=backend
        )
    variants["cce, gradient filter off"] = cce_unfiltered
    emit(f"\nlinear cross-entropy fwd+bwd, {n} tokens x {d} hidden x {vocab} vocab, bf16 "
         f"(default backend here: {default_backend(hidden.device)})")  # fmt: skip
    # cut-cross-entropy's default skips backward tiles whose softmax entries are all below 2^-12: on these
    # unit-variance logits (a near-uniform softmax) it skips nearly all of them, as on an untrained model; a
    # trained model's sharper softmax skips fewer. The filter-off row is its full cost.
    emit("(cce's default gradient filter makes its backward data-dependent; see the filter-off row)")
    emit(
        f"{'variant':34s} {'ms':>8s} {'peak extra GB':>14s} {'x plain time':>13s} {'x plain mem':>12s}  loss"
    )
    base = {}
    for name, fn in variants.items():

        def step(fn=fn):
            loss = fn(hidden, weight, targets)
            torch.autograd.grad(loss, (hidden, weight))
            return loss

        try:
            loss = step()  # also compiles / warms up
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            extra_gb = (torch.cuda.max_memory_allocated() - before) / 1e9
            ms = bench_ms(step, warmup=1, rep=1000 if name.endswith("[chunked]") else 500)
        except Exception as exc:  # a backend that fails here is reported, not fatal to the other rows
            emit(f"{name:34s} failed: {type(exc).__name__}: {exc}"[:200])
            continue
        if not base:
            base = {"ms": ms, "gb": extra_gb}
        emit(f"{name:34s} {ms:8.1f} {extra_gb:14.2f} {ms / base['ms']:13.2f} {extra_gb / base['gb']:12.3f}  "
             f"{loss.item():.5f}")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="polynorm,diff_attn,gda,linear_ce", help="comma-separated sections")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels.py needs a GPU (CUDA or ROCm)", file=sys.stderr)
        return 2
    sections = set(args.only.split(","))
    props = torch.cuda.get_device_properties(0)
    emit(f"device: {props.name} ({props.multi_processor_count} SMs/CUs, {props.total_memory / 2**30:.0f} GiB)"
         f"  torch {torch.__version__}  triton {triton.__version__}  hip {torch.version.hip}  "
         f"liger-kernel {version('liger-kernel')}  cut-cross-entropy {version('cut-cross-entropy')}")  # fmt: skip
    copy_gbs = copy_bandwidth(16384 * 8192, torch.bfloat16)
    emit(f"device-to-device copy of 16384 x 8192 bf16: {copy_gbs:,.0f} GB/s (read + write)")
    if "polynorm" in sections:
        polynorm_tables(16384, 8192, copy_gbs)
    if "diff_attn" in sections:
        diff_attn_table(4, 4096, 8, 128, 256)
        diff_attn_table(1, 16384, 8, 128, 256)
    if "gda" in sections:
        gda_table(2, 4096, 32, 8, 8, 128)  # Motif-2-12.7B: 32 signal heads, 8 noise maps, 8 K/V pairs
    if "linear_ce" in sections:
        linear_ce_table(8192, 2048, 219520)
    print("\n===== summary =====")
    print("\n".join(ROWS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
