"""Differential attention: softmax(Q₁K₁ᵀ·s)V − λ·softmax(Q₂K₂ᵀ·s)V, both maps in one flash-style pass over K/V.

q, k: (B, 2H, S, D), maps 2h and 2h+1 belong to differential head h; v: (B, H, S, Dv); λ a 0-dim tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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
    return reference_diff_attention(q, k, v, lambda_, causal=causal, sm_scale=sm_scale)


def lambda_init(layer_idx: int) -> float:
    """λ_init = 0.8 − 0.6·exp(−0.3·(l − 1)) for the 1-based layer index l (Differential Transformer)."""
    return 0.8 - 0.6 * math.exp(-0.3 * (layer_idx - 1))


class DifferentialAttention(nn.Module):
    """The attention core of a differential-attention layer: λ from its four learned vectors, the two-map
    attention, a per-head RMSNorm over the value dim, and the (1 − λ_init) scale.

    num_heads is the number of differential heads H (q and k carry 2H maps of head_dim each); the value dim of
    each head is 2·head_dim. forward(q, k, v) takes q, k (B, 2H, S, head_dim), v (B, H, S, 2·head_dim) and
    returns (B, H, S, 2·head_dim); projections and the output linear layer belong to the model.
    """

    def __init__(self, layer_idx: int, num_heads: int, head_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        if layer_idx < 1 or num_heads < 1 or head_dim < 1:
            raise ValueError(
                f"DifferentialAttention: layer_idx (1-based), num_heads and head_dim must be ≥ 1, "
                f"got {layer_idx}, {num_heads}, {head_dim}"
            )
        self.layer_idx = layer_idx
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.lambda_init = lambda_init(layer_idx)
        self.lambda_q1 = nn.Parameter(torch.empty(head_dim))
        self.lambda_k1 = nn.Parameter(torch.empty(head_dim))
        self.lambda_q2 = nn.Parameter(torch.empty(head_dim))
        self.lambda_k2 = nn.Parameter(torch.empty(head_dim))
        self.subln = nn.RMSNorm(2 * head_dim, eps=eps, elementwise_affine=True)
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
        out = diff_attention(q, k, v, self.lambda_full(), causal=True)
        return self.subln(out) * (1.0 - self.lambda_init)
