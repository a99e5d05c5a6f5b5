"""How much memory one training rank needs: parameters, gradients, optimizer states and the activations of a
micro-batch, from the model built on the meta device and a per-layer count of the tensors autograd saves.

``motif-data train-estimate`` prints it; docs/train.md ("Fitting Motif-2.6B on one GPU") has the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from motif_data.kernels.linear_ce import _CHUNK_ELEMENTS, _CHUNK_ELEMENTS_GPU, _DENSE_LOGITS_BYTES
from motif_data.train.config import ModelConfig, TrainConfig
from motif_data.train.model import Motif, _projection_widths

__all__ = ["MemoryEstimate", "estimate_memory", "estimate_for_run"]

_FP32 = 4
_RESIDUAL = _FP32  # the residual stream stays fp32 under autocast


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on one rank (world size 1: nothing sharded). ``activations_saved``: what autograd holds at the end
    of a micro-batch's forward; ``activations_transient``: the most that is alive on top of it at once, the
    loss head's buffers at the end of the forward or one layer recomputed in the backward. ``autocast_copies``:
    the autocast-dtype copies of the matrices, cached by autocast for the whole forward."""

    n_parameters: int
    parameters: int
    gradients: int
    optimizer_states: int
    autocast_copies: int
    activations_saved: int
    activations_transient: int

    @property
    def activations(self) -> int:
        return self.activations_saved + self.activations_transient

    @property
    def total(self) -> int:
        """Everything at once, a bound from above: with ``grad_accum`` = 1 the gradients only grow while the
        backward frees the activations. Not counted: the CUDA context and allocator fragmentation."""
        return (
            self.parameters + self.gradients + self.optimizer_states + self.autocast_copies + self.activations
        )

    def rows(self) -> list[tuple[str, int]]:
        return [
            ("parameters (fp32)", self.parameters),
            ("gradients (fp32)", self.gradients),
            ("optimizer states (fp32)", self.optimizer_states),
            ("autocast weight copies", self.autocast_copies),
            ("activations, saved", self.activations_saved),
            ("activations, transient", self.activations_transient),
            ("total", self.total),
        ]


def _meta_model(cfg: ModelConfig) -> Motif:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost at 2.6 B parameters
        return Motif(cfg)


def _layer_saved(cfg: ModelConfig, seq_len: int, micro_batch: int, a: int, autocast: bool, device: str):
    """(attention half, MLP half) of one decoder layer: bytes autograd saves for a micro-batch, op by op.
    ``a``: bytes of an activation element (2 under bf16 autocast, 4 in fp32). ``device`` "cuda": the Triton
    kernels and PyTorch's fused CUDA RMSNorm, from their ``save_for_backward`` lists; "cpu": the pure-PyTorch
    ops as the CPU runs them (measured by tests/train/test_memory.py). Terms under a token's 4 bytes are left
    out (λ scalars, the rotary tables shared with the buffers in fp32)."""
    n = micro_batch * seq_len  # tokens
    d, f, hd = cfg.d_model, cfg.ffn_dim, cfg.head_dim
    q_w, kv_w, o_w = _projection_widths(cfg)
    # Autocast casts a non-leaf input for each op that reads it: q/k/v each save their own copy of the normed
    # input, gate/up theirs; in fp32 the three (two) share one tensor.
    qkv_inputs, mlp_inputs = (3, 2) if autocast else (1, 1)
    # RMSNorm of a fp32 input: the fused CUDA op saves the input and 1/rms; the CPU's composite also x · 1/rms.
    norm = n * (d * _RESIDUAL + _FP32) + (n * d * _RESIDUAL if device == "cpu" else 0)
    # Under autocast the rotary tables are cast for each of q and k: cos and sin, (S, head_dim / 2) each.
    rotary = 4 * seq_len * (hd // 2) * a if autocast else 0

    if device == "cpu":
        if cfg.attention != "differential" or cfg.mlp != "polynorm":
            raise ValueError("the CPU count covers Motif-2.6B's layer (differential attention, PolyNorm MLP)")
        heads = cfg.diff_heads
        dv = cfg.value_dim
        # Two math-path SDPA calls (signal, noise maps); each saves copies of q and k, of v made contiguous, and
        # its (B, H, S, S) probabilities. Then λ·O2 saves O2; the sub-layer norm its input, x · 1/rms and 1/rms;
        # o_proj its input.
        sdpa = n * heads * (2 * hd + dv) * a + micro_batch * heads * seq_len * seq_len * a
        attention = n * d * a + 2 * sdpa + n * o_w * a + n * (2 * o_w * a + heads * _FP32) + n * o_w * a
        # PolyNorm in plain PyTorch keeps 9 tensors of ffn_dim: gate, gate³, gate², the three normed powers, the
        # polynomial, up, and the gated product that down_proj reads; plus three 1/rms.
        mlp = n * d * a + n * (9 * f * a + 3 * _FP32)
        return norm + attention, norm + mlp

    qkv = n * (q_w + 2 * kv_w) * a  # rotated q and k, and v, read by the attention op
    if cfg.attention == "standard":
        # Flash SDPA: q, k, v, the output (read by o_proj as it is) and the log-sum-exp per head.
        core = qkv + n * o_w * a + n * cfg.n_heads * _FP32
    else:
        maps = cfg.diff_heads + cfg.noise_maps
        # The Triton op: q, k, v, O, O2 and one log-sum-exp per map (grouped: q's signal maps as a copy); the
        # sub-layer norm 1/rms (its input is O); o_proj its input, the normed output scaled by 1 − λ_init.
        grouped_copy = n * cfg.diff_heads * hd * a if cfg.attention == "grouped_differential" else 0
        core = (
            qkv + grouped_copy + 2 * n * o_w * a + n * maps * _FP32 + n * cfg.diff_heads * _FP32 + n * o_w * a
        )
    attention = qkv_inputs * n * d * a + rotary + core
    if cfg.mlp == "polynorm":
        # The Triton PolyNorm ⊙ up: gate, up and three 1/rms a row; down_proj the gated product.
        activation = n * (3 * f * a + 3 * _FP32)
    else:
        # SiLU's input, SiLU(gate) and up for the product, the product for down_proj
        activation = 4 * n * f * a
    mlp = mlp_inputs * n * d * a + activation
    return norm + attention, norm + mlp


def _head(
    cfg: ModelConfig, n: int, a: int, autocast: bool, device: str, loss_backend: str
) -> tuple[int, int]:
    """(saved, transient) bytes of the embedding, the final norm and the loss head for ``n`` tokens."""
    v, d = cfg.vocab_size, cfg.d_model
    norm = n * (d * _RESIDUAL + _FP32) + (n * d * _RESIDUAL if device == "cpu" else 0)
    saved = n * 8 + norm + n * _FP32  # the token ids the embedding saves; the per-token losses the loop reads
    weight_copy = v * d * a if autocast else 0  # the head weight cast to the activations' dtype
    if loss_backend in ("dense", "liger"):
        # The gradient is formed in the forward: dH (n × d) and dW (vocab × d, fp32) are held for the backward;
        # the logits of one chunk (about 1 GiB) and the cast weight live only in the forward.
        chunk = max(128, _DENSE_LOGITS_BYTES // (v * a) // 128 * 128)
        return saved + n * d * a + v * d * _FP32, weight_copy + min(chunk, n) * v * a
    # chunked (and cut-cross-entropy alike): hidden, the cast weight, targets, their mask and the log-sum-exp;
    # one fp32 chunk of logits in the forward, and again in the backward.
    budget = _CHUNK_ELEMENTS_GPU if device == "cuda" else _CHUNK_ELEMENTS
    chunk = max(1, budget // v)
    return saved + n * d * a + weight_copy + n * (8 + 1 + _FP32), min(chunk, n) * v * _FP32


def estimate_memory(
    model: ModelConfig,
    *,
    micro_batch: int,
    seq_len: int,
    autocast: bool = True,
    optimizer: str = "adamw",
    activation_checkpointing: str = "none",
    loss_backend: str = "dense",
    device: str = "cuda",
) -> MemoryEstimate:
    """Memory of one rank training ``model`` on ``micro_batch`` sequences of ``seq_len`` tokens.

    fp32 master weights and gradients; ``autocast``: bf16 activations (else fp32); ``optimizer`` "adamw" (two
    fp32 states a parameter) or "muon" (one momentum for the decoder's linear weights, AdamW's two for the rest,
    as ``optim.build_optimizer`` splits them); ``activation_checkpointing`` "none" | "block" | "selective";
    ``loss_backend`` a ``linear_cross_entropy`` backend; ``device`` "cuda" (the Triton kernels) or "cpu".
    """
    meta = _meta_model(model)
    n_params = sum(p.numel() for p in meta.parameters())
    muon_params = sum(m.weight.numel() for m in meta.layers.modules() if isinstance(m, nn.Linear))
    if optimizer == "adamw":
        states = 2 * _FP32 * n_params
    else:
        states = _FP32 * muon_params + 2 * _FP32 * (n_params - muon_params)
    a = 2 if autocast else _FP32
    n = micro_batch * seq_len
    attention, mlp = _layer_saved(model, seq_len, micro_batch, a, autocast, device)
    held_input = n * model.d_model * _RESIDUAL  # what a checkpoint keeps: its fp32 input
    if activation_checkpointing == "none":
        per_layer, recompute = attention + mlp, 0
    elif activation_checkpointing == "block":
        per_layer, recompute = held_input, attention + mlp
    else:
        per_layer, recompute = attention + held_input, mlp
    head_saved, head_transient = _head(model, n, a, autocast, device, loss_backend)
    return MemoryEstimate(
        n_parameters=n_params,
        parameters=_FP32 * n_params,
        gradients=_FP32 * n_params,
        optimizer_states=states,
        autocast_copies=2 * muon_params if autocast else 0,  # every nn.Linear of the decoder, in bf16
        activations_saved=model.n_layers * per_layer + head_saved,
        activations_transient=max(recompute, head_transient),
    )


def estimate_for_run(cfg: TrainConfig) -> MemoryEstimate:
    """``estimate_memory`` for a training config as it would run on one GPU (``dtype = "auto"``: bf16 autocast;
    ``loss_backend = "auto"``: the dense backend)."""
    model = cfg.model
    if model.vocab_size is None:
        raise ValueError("model.vocab_size is unset: set it in [model] (Motif's tokenizer has 219,520 ids)")
    return estimate_memory(
        model,
        micro_batch=cfg.micro_batch,
        seq_len=cfg.seq_len,
        autocast=cfg.dtype != "fp32",
        optimizer=cfg.optimizer,
        activation_checkpointing=cfg.activation_checkpointing,
        loss_backend="dense" if cfg.loss_backend == "auto" else cfg.loss_backend,
        device="cuda",
    )
