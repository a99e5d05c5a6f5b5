"""A Motif-architecture decoder, readable top to bottom: pre-norm RMSNorm blocks of differential attention
(RoPE, configurable base) and a PolyNorm-gated MLP; the output head tied to the embedding (Motif-2.6B) or not
(Motif-2-12.7B).

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
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.utils.checkpoint import checkpoint

from motif_data.kernels import (
    DifferentialAttention,
    PolyNormGatedMLP,
    document_bounds,
    document_mask,
    linear_cross_entropy,
)
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

    def forward(
        self, seq_len: int, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (S, D/2) tables of positions 0..S-1, or with ``positions`` (B, S) each token's own angles as
        (B, 1, S, D/2), which broadcast over the heads as the sliced tables do."""
        if seq_len > self.max_seq_len:
            raise ValueError(
                f"sequence of {seq_len} tokens is longer than model.max_seq_len {self.max_seq_len}: raise it"
            )
        if positions is None:
            return self.cos[:seq_len], self.sin[:seq_len]
        return self.cos[positions][:, None], self.sin[positions][:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dim of ``x`` (B, heads, S, D) by the position's angles."""
    # In x's dtype (bf16 under autocast), as most implementations do: half the bytes of an fp32 round trip.
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _projection_widths(cfg: ModelConfig) -> tuple[int, int, int]:
    """(q, k = v, o input) widths. Differential: every query map, a (signal, noise) key pair and a value of
    2·head_dim per K/V pair, 2·head_dim out per signal head. Standard: n_heads of head_dim. Equal for Motif-2.6B."""
    hd = cfg.head_dim
    if cfg.attention == "standard":
        return cfg.n_heads * hd, cfg.n_heads * hd, cfg.n_heads * hd
    return cfg.n_heads * hd, 2 * cfg.kv_pairs * hd, 2 * cfg.diff_heads * hd


def _add_projections(layer: nn.Module, cfg: ModelConfig) -> None:
    q_width, kv_width, out_width = _projection_widths(cfg)
    layer.q_proj = nn.Linear(cfg.d_model, q_width, bias=False)
    layer.k_proj = nn.Linear(cfg.d_model, kv_width, bias=False)
    layer.v_proj = nn.Linear(cfg.d_model, kv_width, bias=False)
    layer.o_proj = nn.Linear(out_width, cfg.d_model, bias=False)


def _rotated_qk(layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    B, S, _ = x.shape
    q = layer.q_proj(x).view(B, S, -1, layer.head_dim).transpose(1, 2)
    k = layer.k_proj(x).view(B, S, -1, layer.head_dim).transpose(1, 2)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


class DiffAttention(DifferentialAttention):
    """Differential attention (Motif-2.6B) and grouped differential attention (Motif-2-12.7B): each signal head
    h computes ``softmax(Qs_h Ks_hᵀ) V_h − λ softmax(Qn_g Kn_gᵀ) V_h`` with its group's noise map g (one per
    head when not grouped) and V of width ``2 * head_dim``, then per-head RMSNorm. The kernels' module is the
    core (λ, the sub-layer norm, the op, the head layout); this layer adds the projections and QK-clip."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, reference: bool):
        super().__init__(
            layer_idx, cfg.diff_heads, cfg.head_dim, eps=cfg.norm_eps, noise_heads=cfg.noise_maps,
            kv_pairs=cfg.kv_pairs, reference=reference,
        )  # fmt: skip
        _add_projections(self, cfg)
        # QK-clip's fixed layout, as device tensors once (not rebuilt from host lists every step): which maps
        # own their key, and those maps with their key heads.
        keys, sharing = self.map_layout()
        own = [m for m, n in enumerate(sharing) if n == 1]
        self.register_buffer("_owns_key", torch.tensor([n == 1 for n in sharing]), persistent=False)
        self.register_buffer("_own_maps", torch.tensor(own, dtype=torch.long), persistent=False)
        self.register_buffer(
            "_own_keys", torch.tensor([keys[m] for m in own], dtype=torch.long), persistent=False
        )

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, documents: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, S, _ = x.shape
        q, k = _rotated_qk(self, x, cos, sin)
        v = self.v_proj(x).view(B, S, self.kv_pairs, 2 * self.head_dim).transpose(1, 2)
        out = super().forward(q, k, v, documents)  # (B, H, S, Dv), a view of (B, S, H, Dv) memory
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))

    @torch.no_grad()
    def clip_qk_(self, max_logits: torch.Tensor, tau: float) -> torch.Tensor:
        """QK-clip (MuonClip): scale the projections of every query map whose largest logit passed ``tau`` so
        that it would be τ: by γ = τ / max. A map with its own key splits γ as √γ on its q rows and √γ on its
        key's rows; where several maps read one key (GQA, grouped noise keys) the key stays and the map's q rows
        take all of γ, so the other maps' logits are untouched. Returns how many maps were clipped, as a tensor
        (no host sync: the loop calls this every step)."""
        gamma = (tau / max_logits.float()).clamp(max=1.0)
        hd = self.head_dim
        q_scale = torch.where(self._owns_key, gamma.sqrt(), gamma)
        _scale_rows_(self.q_proj.weight, q_scale.repeat_interleave(hd))
        key_scale = torch.ones(self.k_proj.weight.shape[0] // hd, device=gamma.device)
        key_scale[self._own_keys] = gamma[self._own_maps].sqrt()
        _scale_rows_(self.k_proj.weight, key_scale.repeat_interleave(hd))
        return (gamma < 1.0).sum()


def _scale_rows_(weight: torch.Tensor, scale: torch.Tensor) -> None:
    """``weight``'s row i times ``scale[i]``, in place. Under FSDP2 the weight is a DTensor of row shards: each
    rank scales its own rows, taking its slice of ``scale`` as DTensor slices the weight (no communication)."""
    if isinstance(weight, DTensor):
        mine = distribute_tensor(scale[:, None], weight.device_mesh, weight.placements, src_data_rank=None)
        weight.to_local().mul_(mine.to_local())
    else:
        weight.mul_(scale[:, None])


class StandardAttention(nn.Module):
    """The baseline (``cfg.attention == "standard"``): ``n_heads`` causal softmax heads of ``head_dim``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim = cfg.head_dim
        _add_projections(self, cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, documents: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, S, _ = x.shape
        q, k = _rotated_qk(self, x, cos, sin)
        v = self.v_proj(x).view(B, S, -1, self.head_dim).transpose(1, 2)
        if documents is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # the baseline masks with an explicit (B, 1, S, S) mask: SDPA skips no blocks for it
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=document_mask(documents))
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
            if cfg.attention != "standard"
            else StandardAttention(cfg)
        )
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = (
            PolyNormGatedMLP(cfg.d_model, cfg.ffn_dim, eps=cfg.norm_eps, reference=reference)
            if cfg.mlp == "polynorm"
            else SwiGLUMLP(cfg)
        )

    def attention_branch(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, documents: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.self_attn(self.input_layernorm(x), cos, sin, documents)

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.post_attention_layernorm(x))

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, documents: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attention_branch(x, cos, sin, documents)
        return x + self.mlp_branch(x)


class Motif(nn.Module):
    """``forward(input_ids, targets, position_ids)`` returns the per-token loss (B, S), so the loop can split it
    by domain; without targets it returns the final hidden states (B, S, d). ``position_ids`` (B, S), counting
    up within each packed document as the loader yields them, matter only with ``cfg.doc_mask`` or
    ``cfg.rope_positions = "document"``; without them every row is one document."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        reference_kernels: bool = False,
        loss_backend: str | None = None,
        activation_checkpointing: str = "none",
    ):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size is unset: take it from the corpus manifest's tokenizer first")
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base, cfg.max_seq_len)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i + 1, reference_kernels) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        # Motif-2.6B ties the output head to the embedding; Motif-2-12.7B has its own `lm_head`.
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # loss_backend: a linear_cross_entropy backend; None: the fastest where the loss is computed
        self.linear_cross_entropy = (
            reference_linear_cross_entropy
            if reference_kernels
            else functools.partial(linear_cross_entropy, backend=loss_backend)
        )
        # "none" | "block" | "selective" (TrainConfig.activation_checkpointing; `_layer` says what each keeps)
        self.activation_checkpointing = activation_checkpointing
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # GPT-2 style: N(0, 0.02), the projections that write into the residual stream scaled by 1/sqrt(2L).
        std = self.cfg.init_std
        nn.init.normal_(self.embed_tokens.weight, std=std)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=std)
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                nn.init.normal_(linear.weight, std=std)
            for linear in (attn.o_proj, mlp.down_proj):
                nn.init.normal_(linear.weight, std=std / math.sqrt(2 * self.cfg.n_layers))

    def set_rope_base(self, base: float) -> None:
        self.rotary.set_base(base)

    @property
    def needs_positions(self) -> bool:
        """Whether ``forward`` reads ``position_ids``: the loop builds them only then."""
        return self.cfg.doc_mask or self.cfg.rope_positions == "document"

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        seq_len = input_ids.shape[1]
        # The bounds once per step, shared by every layer (and by the kernels' block skipping).
        bounds = document_bounds(position_ids) if position_ids is not None and self.needs_positions else None
        positions = None
        if bounds is not None and self.cfg.rope_positions == "document":
            positions = torch.arange(seq_len, device=input_ids.device) - bounds[0]
        cos, sin = self.rotary(seq_len, positions)
        documents = bounds if self.cfg.doc_mask else None
        for layer in self.layers:
            x = self._layer(layer, x, cos, sin, documents)
        hidden = self.norm(x)
        if targets is None:
            return hidden
        device_type = hidden.device.type
        if torch.is_autocast_enabled(device_type):
            # The residual stream stays fp32; the head's product runs in the autocast dtype like every Linear.
            hidden = hidden.to(torch.get_autocast_dtype(device_type))
        # The fp32 head weight goes in as it is: the loss head runs its products in hidden's dtype and the dense
        # backend sums the weight's gradient in fp32 directly (no bf16 round trip of a vocab × d gradient).
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        losses = self.linear_cross_entropy(hidden.flatten(0, 1), head, targets.flatten(), reduction="none")
        return losses.view_as(targets)

    def _layer(
        self,
        layer: DecoderLayer,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        documents: torch.Tensor | None,
    ) -> torch.Tensor:
        """One decoder layer under the activation-checkpointing mode. "block": only the layer's input is kept
        and the whole layer is recomputed in the backward. "selective": the attention half keeps what it saves
        (q, k, v and the attention's output and log-sum-exp, whose recomputation would repeat the S² work) and
        the MLP half — post-attention norm, gate/up products, PolyNorm, down product: 59 % of the bytes a
        Motif-2.6B layer saves under bf16, and nearly two thirds of its FLOPs — is recomputed from its fp32
        input (memory.py counts the bytes; docs/train.md). Non-reentrant checkpoints, which need no static-graph
        setting under DDP: tests/train/test_memory.py checks bitwise-equal loss and gradients in eager, under
        torch.compile (aot_eager, on the CPU) and under DDP (one gloo rank)."""
        if self.activation_checkpointing == "none" or not torch.is_grad_enabled():
            return layer(x, cos, sin, documents)
        if self.activation_checkpointing == "block":
            return checkpoint(layer, x, cos, sin, documents, use_reentrant=False)
        # DecoderLayer.forward's two residual branches, the second one checkpointed.
        x = x + layer.attention_branch(x, cos, sin, documents)
        return x + checkpoint(layer.mlp_branch, x, use_reentrant=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(cfg: ModelConfig, seq_len: int, *, causal: bool = True) -> float:
    """Training FLOPs (forward + backward = 3 × forward) per token.

    Matrix products: 6 × (weights of every projection + the output head). Attention per layer and token,
    forward: every query map's ``QKᵀ`` (2 · S · n_heads · head_dim) and every map times its V of 2·head_dim —
    signal heads and noise maps, a grouped noise map's product once for its group, as the kernel computes it —
    (2 · S · n_heads · 2·head_dim); standard attention: ``QKᵀ`` and one map times V (2 · 2 · S · n_heads ·
    head_dim). Causal attention does half of that work.
    """
    q_width, kv_width, out_width = _projection_widths(cfg)
    projections = cfg.d_model * (q_width + 2 * kv_width + out_width)
    matmul_weights = (
        cfg.n_layers * (projections + 3 * cfg.d_model * cfg.ffn_dim) + cfg.vocab_size * cfg.d_model
    )
    width = cfg.n_heads * cfg.head_dim
    maps_times_v = 2 * seq_len * width if cfg.attention == "standard" else 4 * seq_len * width
    attention_forward = cfg.n_layers * (2 * seq_len * width + maps_times_v)
    if causal:
        attention_forward /= 2
    return 6 * matmul_weights + 3 * attention_forward
