"""A Motif-architecture decoder, readable top to bottom: pre-norm RMSNorm blocks of differential attention
(RoPE, configurable base) and a PolyNorm-gated MLP, with the output head tied to the embedding.

The hot ops come from ``motif_data.kernels`` (Triton on GPU, pure PyTorch on CPU); ``kernels="reference"``
forces the pure-PyTorch versions everywhere, so that a run can compare the two. The layers are the kernels'
modules extended (one definition of differential attention and of the PolyNorm MLP), and the parameter names
are those of Motif's released checkpoints less their ``model.`` prefix: ``embed_tokens``,
``layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj, self_attn.lambda_{q1,k1,q2,k2}, self_attn.subln,
post_attention_layernorm, mlp.{gate,up,down}_proj, mlp.act_fn}``, ``norm``; the head is tied to the embedding.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from motif_data.kernels import DifferentialAttention, PolyNormGatedMLP, linear_cross_entropy
from motif_data.kernels.linear_ce import reference_linear_cross_entropy
from motif_data.kernels.rmsnorm import RMSNorm
from motif_data.train.config import ModelConfig

__all__ = ["Motif", "count_parameters", "flops_per_token"]


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


def _add_projections(layer: nn.Module, cfg: ModelConfig) -> None:
    width = cfg.n_heads * cfg.head_dim  # also the value width: n_heads/2 differential heads of 2*head_dim
    layer.q_proj = nn.Linear(cfg.d_model, width, bias=False)
    layer.k_proj = nn.Linear(cfg.d_model, width, bias=False)
    layer.v_proj = nn.Linear(cfg.d_model, width, bias=False)
    layer.o_proj = nn.Linear(width, cfg.d_model, bias=False)


def _rotated_qk(layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    B, S, _ = x.shape
    q = layer.q_proj(x).view(B, S, -1, layer.head_dim).transpose(1, 2)
    k = layer.k_proj(x).view(B, S, -1, layer.head_dim).transpose(1, 2)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


class DiffAttention(DifferentialAttention):
    """Differential attention: ``n_heads`` query/key maps pair up into ``n_heads // 2`` heads, each
    ``(softmax(Q1K1ᵀ) − λ softmax(Q2K2ᵀ)) V`` with V of width ``2 * head_dim``, then per-head RMSNorm.
    The kernels' module is the core (λ, the sub-layer norm, the op); this layer adds the projections."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, reference: bool):
        super().__init__(layer_idx, cfg.diff_heads, cfg.head_dim, eps=cfg.norm_eps, reference=reference)
        _add_projections(self, cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, S, _ = x.shape
        q, k = _rotated_qk(self, x, cos, sin)
        v = self.v_proj(x).view(B, S, self.num_heads, 2 * self.head_dim).transpose(1, 2)
        out = super().forward(q, k, v)  # (B, H, S, Dv), a view of (B, S, H, Dv) memory
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))


class StandardAttention(nn.Module):
    """The baseline (``cfg.attention == "standard"``): ``n_heads`` causal softmax heads of ``head_dim``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim = cfg.head_dim
        _add_projections(self, cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, S, _ = x.shape
        q, k = _rotated_qk(self, x, cos, sin)
        v = self.v_proj(x).view(B, S, -1, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))


class SwiGLUMLP(nn.Module):
    """The baseline MLP (``cfg.mlp == "swiglu"``): ``down_proj(SiLU(gate_proj(x)) ⊙ up_proj(x))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm residual block; the attribute names are those of Motif's released checkpoints."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, reference: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = (
            DiffAttention(cfg, layer_idx, reference)
            if cfg.attention == "differential"
            else StandardAttention(cfg)
        )
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = (
            PolyNormGatedMLP(cfg.d_model, cfg.ffn_dim, eps=cfg.norm_eps, reference=reference)
            if cfg.mlp == "polynorm"
            else SwiGLUMLP(cfg)
        )

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Motif(nn.Module):
    """``forward(input_ids, targets)`` returns the per-token loss (B, S), so the loop can split it by domain;
    without targets it returns the final hidden states (B, S, d)."""

    def __init__(self, cfg: ModelConfig, *, reference_kernels: bool = False, loss_backend: str | None = None):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size is unset: take it from the corpus manifest's tokenizer first")
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base, cfg.max_seq_len)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i + 1, reference_kernels) for i in range(cfg.n_layers))
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
        nn.init.normal_(self.embed_tokens.weight, std=std)
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                nn.init.normal_(linear.weight, std=std)
            for linear in (attn.o_proj, mlp.down_proj):
                nn.init.normal_(linear.weight, std=std / math.sqrt(2 * self.cfg.n_layers))

    def set_rope_base(self, base: float) -> None:
        self.rotary.set_base(base)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(input_ids.shape[1])
        for layer in self.layers:
            x = layer(x, cos, sin)
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
            hidden.flatten(0, 1), self.embed_tokens.weight, targets.flatten(), reduction="none"
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
