"""Fused kernels for Motif-style models in plain Triton (CUDA and ROCm): PolyNorm and PolyNorm ⊙ gate,
differential attention, fused linear cross-entropy. Each op has a pure-PyTorch reference used off-GPU."""

from motif_data.kernels.diff_attn import (
    DifferentialAttention,
    diff_attention,
    lambda_init,
    reference_diff_attention,
)
from motif_data.kernels.linear_ce import (
    LinearCrossEntropy,
    linear_cross_entropy,
    reference_linear_cross_entropy,
)
from motif_data.kernels.polynorm import (
    PolyNorm,
    PolyNormGatedMLP,
    poly_norm,
    poly_norm_mul,
    reference_poly_norm,
    reference_poly_norm_mul,
)

__all__ = [
    "poly_norm",
    "poly_norm_mul",
    "diff_attention",
    "linear_cross_entropy",
    "PolyNorm",
    "PolyNormGatedMLP",
    "DifferentialAttention",
    "LinearCrossEntropy",
    "lambda_init",
    "reference_poly_norm",
    "reference_poly_norm_mul",
    "reference_diff_attention",
    "reference_linear_cross_entropy",
]
