"""A Motif-architecture decoder, readable top to bottom: pre-norm RMSNorm blocks of differential attention
(RoPE, configurable base) and a PolyNorm-gated MLP, with the output head tied to the embedding.

The hot ops come from ``motif_data.kernels`` (Triton on GPU, pure PyTorch on CPU); ``kernels="reference"``
forces the pure-PyTorch versions everywhere, so that a run can compare the two.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from motif_data.kernels import (
    DifferentialAttention,
    PolyNorm,
    diff_attention,
    linear_cross_entropy,
    poly_norm_mul,
    reference_diff_attention,
    reference_linear_cross_entropy,
    reference_poly_norm_mul,
)
from motif_data.train.config import ModelConfig

__all__ = ["Motif", "count_parameters", "flops_per_token"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Weight in x's dtype: mixed dtypes fall off PyTorch's fused kernel onto a slow composite.
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class Rotary(nn.Module):
    """RoPE tables for positions 0..max_seq_len-1; ``set_base`` is the hook for Motif's 10k → 500k long-context
    switch. The cos/sin tables are built once per base and sliced per call: rebuilt inside the step, torch.compile
    fuses them into the rotation and pays a sine and a cosine for every element of q and k."""

    def __init__(self, head_dim: int, base: float, max_seq_len: int):
        super().__init__()
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        self.base = base
        cos, sin = self._tables(base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, base: float) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim))
        angles = torch.outer(torch.arange(self.max_seq_len, dtype=torch.float64), inv_freq)
        return angles.cos().float(), angles.sin().float()

    def set_base(self, base: float) -> None:
        if base != self.base:
            cos, sin = self._tables(base)
            self.cos.copy_(cos)
            self.sin.copy_(sin)
            self.base = base

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if seq_len > self.max_seq_len:
            raise ValueError(
                f"sequence of {seq_len} tokens is longer than model.max_seq_len {self.max_seq_len}: raise it"
            )
        return self.cos[:seq_len], self.sin[:seq_len]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dim of ``x`` (B, heads, S, D) by the position's angles."""
    # In x's dtype (bf16 under autocast), as most implementations do: half the bytes of an fp32 round trip.
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    """Differential attention: ``n_heads`` query/key maps pair up into ``n_heads // 2`` heads, each
    ``(softmax(Q1K1ᵀ) − λ softmax(Q2K2ᵀ)) V`` with V of width ``2 * head_dim``, then per-head RMSNorm.
    With ``cfg.attention == "standard"``: ``n_heads`` causal softmax heads of ``head_dim`` (the baseline)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, reference: bool):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        width = cfg.n_heads * cfg.head_dim  # also the value width: n_heads/2 heads of 2*head_dim
        self.q_proj = nn.Linear(cfg.d_model, width, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, width, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, width, bias=False)
        self.o_proj = nn.Linear(width, cfg.d_model, bias=False)
        self.diff = (
            DifferentialAttention(layer_idx, cfg.diff_heads, cfg.head_dim, eps=cfg.norm_eps)
            if cfg.attention == "differential"
            else None
        )
        self.reference = reference

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.diff is None:
            v = self.v_proj(x).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))
        v = self.v_proj(x).view(B, S, self.n_heads // 2, 2 * self.head_dim).transpose(1, 2)
        # The kernels' DifferentialAttention holds λ and the sub-layer norm; which attention op runs is ours
        # to choose, so that one run can time the Triton kernel against the two-SDPA reference.
        attend = reference_diff_attention if self.reference else diff_attention
        # (B, S, H, Dv) is the kernel's memory order: the norm and the reshape below then copy nothing.
        out = attend(q, k, v, self.diff.lambda_full()).transpose(1, 2)
        norm = self.diff.subln
        out = F.rms_norm(out, (out.shape[-1],), norm.weight.to(out.dtype), norm.eps)
        out = out * (1.0 - self.diff.lambda_init)
        return self.o_proj(out.reshape(B, S, -1))


class MLP(nn.Module):
    """Motif's gated MLP: ``down(PolyNorm(gate(x)) ⊙ up(x))``; with ``cfg.mlp == "swiglu"`` the baseline
    ``down(SiLU(gate(x)) ⊙ up(x))``."""

    def __init__(self, cfg: ModelConfig, reference: bool):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)
        self.act = PolyNorm(eps=cfg.norm_eps) if cfg.mlp == "polynorm" else None
        self.poly_norm_mul = reference_poly_norm_mul if reference else poly_norm_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        gated = self.poly_norm_mul(self.gate(x), self.up(x), self.act.weight, self.act.bias, self.act.eps)
        return self.down(gated)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, reference: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx, reference)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg, reference)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Motif(nn.Module):
    """``forward(input_ids, targets)`` returns the per-token loss (B, S), so the loop can split it by domain;
    without targets it returns the final hidden states (B, S, d)."""

    def __init__(self, cfg: ModelConfig, *, reference_kernels: bool = False, loss_backend: str | None = None):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size is unset: take it from the corpus manifest's tokenizer first")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base, cfg.max_seq_len)
        self.blocks = nn.ModuleList(Block(cfg, i + 1, reference_kernels) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        # loss_backend: a linear_cross_entropy backend; None: the fastest where the loss is computed
        self.linear_cross_entropy = (
            reference_linear_cross_entropy
            if reference_kernels
            else functools.partial(linear_cross_entropy, backend=loss_backend)
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # GPT-2 style: N(0, 0.02), the projections that write into the residual stream scaled by 1/sqrt(2L).
        std = self.cfg.init_std
        nn.init.normal_(self.embed.weight, std=std)
        for block in self.blocks:
            for linear in (
                block.attn.q_proj,
                block.attn.k_proj,
                block.attn.v_proj,
                block.mlp.gate,
                block.mlp.up,
            ):
                nn.init.normal_(linear.weight, std=std)
            for linear in (block.attn.o_proj, block.mlp.down):
                nn.init.normal_(linear.weight, std=std / math.sqrt(2 * self.cfg.n_layers))

    def set_rope_base(self, base: float) -> None:
        self.rotary.set_base(base)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(input_ids)
        cos, sin = self.rotary(input_ids.shape[1])
        for block in self.blocks:
            x = block(x, cos, sin)
        hidden = self.norm(x)
        if targets is None:
            return hidden
        device_type = hidden.device.type
        if torch.is_autocast_enabled(device_type):
            # The residual stream stays fp32; the head's product runs in the autocast dtype like every Linear.
            hidden = hidden.to(torch.get_autocast_dtype(device_type))
        # The fp32 embedding goes in as it is: the loss head runs its products in hidden's dtype and the dense
        # backend sums the weight's gradient in fp32 directly (no bf16 round trip of a vocab × d gradient).
        losses = self.linear_cross_entropy(
            hidden.flatten(0, 1), self.embed.weight, targets.flatten(), reduction="none"
        )
        return losses.view_as(targets)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(cfg: ModelConfig, seq_len: int, *, causal: bool = True) -> float:
    """Training FLOPs (forward + backward = 3 × forward) per token.

    Matrix products: 6 × (weights of every projection + the tied output head). Attention per layer and token,
    forward: both softmax maps' ``QKᵀ`` (2 · S · n_heads · head_dim) and both maps times V — the differential
    head's extra map — (2 · 2 · S · n_heads/2 · 2·head_dim); standard attention: ``QKᵀ`` and one map times V
    (2 · 2 · S · n_heads · head_dim). Causal attention does half of that work.
    """
    width = cfg.n_heads * cfg.head_dim
    matmul_weights = cfg.n_layers * (4 * cfg.d_model * width + 3 * cfg.d_model * cfg.ffn_dim)
    matmul_weights += cfg.vocab_size * cfg.d_model
    maps_times_v = 4 * seq_len * width if cfg.attention == "differential" else 2 * seq_len * width
    attention_forward = cfg.n_layers * (2 * seq_len * width + maps_times_v)
    if causal:
        attention_forward /= 2
    return 6 * matmul_weights + 3 * attention_forward
