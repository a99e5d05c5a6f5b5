"""Fused kernels for Motif-style models in plain Triton (CUDA and ROCm): PolyNorm and PolyNorm ⊙ gate,
differential attention, fused linear cross-entropy. Each op has a pure-PyTorch reference used off-GPU, beside
it in its module (``polynorm.reference_poly_norm``, …): reachable for tests and comparisons, not public API.

The names below load on first use (PEP 562): importing `motif_data.kernels.cli` or `.targets` — as the
`motif-data` command does to build its parser — must not pay for importing torch and Triton."""

from __future__ import annotations

import importlib

# name → the module of this package that defines it
_HOME = {
    "poly_norm": "polynorm",
    "poly_norm_mul": "polynorm",
    "PolyNorm": "polynorm",
    "PolyNormGatedMLP": "polynorm",
    "diff_attention": "diff_attn",
    "grouped_diff_attention": "diff_attn",
    "DifferentialAttention": "diff_attn",
    "lambda_init": "diff_attn",
    "document_bounds": "documents",
    "document_bounds_from_cu_seqlens": "documents",
    "document_mask": "documents",
    "linear_cross_entropy": "linear_ce",
    "LinearCrossEntropy": "linear_ce",
}
__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
