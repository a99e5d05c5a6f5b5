"""The Motif-architecture model: its size, its FLOP count, causality and rotary embedding."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from motif_data.train.config import MODEL_PRESETS, ModelConfig
from motif_data.train.model import Motif, apply_rotary, count_parameters, flops_per_token

SMALL_VOCAB = ModelConfig(n_layers=2, d_model=32, n_heads=4, head_dim=8, ffn_dim=96, vocab_size=300)


def test_motif_2_6b_preset_has_2_6_billion_parameters_on_meta_device():
    cfg = MODEL_PRESETS["motif-2.6b"]
    with torch.device("meta"):
        model = Motif(cfg)
    n = count_parameters(model)
    assert abs(n - 2.6e9) / 2.6e9 < 0.05, n
    assert cfg.vocab_size == 219_520 and model.embed_tokens.weight.shape == (219_520, 2048)
    attn = model.layers[0].self_attn
    # 16 heads of 128 → 8 differential heads whose value dim is 256; FFN 8,192; 32 layers.
    assert attn.q_proj.out_features == 16 * 128 and attn.v_proj.out_features == 8 * 256
    assert model.layers[0].mlp.gate_proj.out_features == 8192 and len(model.layers) == 32


def test_small_preset_is_between_120_and_300_million_parameters_with_o200k():
    with torch.device("meta"):
        model = Motif(dataclasses.replace(MODEL_PRESETS["small"], vocab_size=200_019))
    assert 120e6 <= count_parameters(model) <= 300e6


def test_output_head_is_tied_to_the_embedding():
    model = Motif(SMALL_VOCAB)
    ids = torch.randint(0, 300, (1, 9))
    model(ids[:, :-1], ids[:, 1:]).sum().backward()
    # The head reads the embedding matrix: tokens that never occur as inputs still get gradient through it.
    unseen = sorted(set(range(300)) - set(ids[0, :-1].tolist()))
    assert model.embed_tokens.weight.grad[unseen].abs().sum() > 0
    assert not any(p is not model.embed_tokens.weight and p.shape == (300, 32) for p in model.parameters())


BASELINE = dataclasses.replace(SMALL_VOCAB, attention="standard", mlp="swiglu")


@pytest.mark.parametrize("cfg, maps_times_v", [(SMALL_VOCAB, 4), (BASELINE, 2)], ids=["motif", "baseline"])
def test_flops_per_token_matches_torch_flop_counter_on_reference_ops(cfg, maps_times_v):
    # The reference ops are plain matmuls and SDPA calls (two per differential layer), which FlopCounterMode
    # counts without regard to the causal mask: compare with our count of full attention.
    model = Motif(cfg, reference_kernels=True)
    batch, seq = 2, 16
    ids = torch.randint(0, 300, (batch, seq + 1))
    # The math backend runs SDPA as matmuls the counter sees (CPU flash attention has no FLOP formula).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids[:, :-1], ids[:, 1:]).mean().backward()
    assert counter.get_total_flops() == flops_per_token(cfg, seq, causal=False) * batch * seq
    causal = flops_per_token(cfg, seq)
    # Causal attention does half the attention work: the difference is exactly half the attention term.
    full = flops_per_token(cfg, seq, causal=False)
    attention = 3 * cfg.n_layers * (2 + maps_times_v) * seq * cfg.n_heads * cfg.head_dim
    assert full - causal == attention / 2


def test_baseline_has_the_same_parameter_count_less_the_motif_only_vectors():
    motif, baseline = Motif(SMALL_VOCAB), Motif(BASELINE)
    # Differential attention adds four λ vectors of head_dim and a sub-layer norm of 2·head_dim per layer;
    # PolyNorm adds 3 weights and a bias per layer. Everything else is shared shape for shape.
    extra = SMALL_VOCAB.n_layers * (4 * SMALL_VOCAB.head_dim + 2 * SMALL_VOCAB.head_dim + 4)
    assert count_parameters(motif) - count_parameters(baseline) == extra


@pytest.mark.parametrize(
    "cfg, reference",
    [(SMALL_VOCAB, False), (SMALL_VOCAB, True), (BASELINE, False)],
    ids=["motif", "motif-reference", "baseline"],
)
def test_model_is_causal(cfg, reference):
    torch.manual_seed(0)
    model = Motif(cfg, reference_kernels=reference)
    ids = torch.randint(0, 300, (2, 20))
    changed = ids.clone()
    changed[:, 12:] = torch.randint(0, 300, (2, 8))
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=0)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_rotary_matches_complex_rotation_and_base_switch_changes_it():
    model = Motif(SMALL_VOCAB)
    seq, d = 10, SMALL_VOCAB.head_dim
    x = torch.randn(1, 2, seq, d, dtype=torch.float64).float()
    for base in (10_000.0, 500_000.0):
        model.set_rope_base(base)
        cos, sin = model.rotary(seq)
        got = apply_rotary(x, cos, sin)
        # Independent formulation: pair (x_i, x_{i+d/2}) as a complex number and rotate by position·base^(-2i/d).
        freqs = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        angle = torch.arange(seq, dtype=torch.float64)[:, None] * freqs[None, :]
        z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double()) * torch.polar(
            torch.ones_like(angle), angle
        )
        torch.testing.assert_close(got, torch.cat([z.real, z.imag], dim=-1).float(), rtol=1e-5, atol=1e-5)
    assert model.rotary.base == 500_000.0
    with pytest.raises(ValueError, match="max_seq_len"):
        model.rotary(SMALL_VOCAB.max_seq_len + 1)


def test_model_without_vocab_size_asks_for_it():
    with pytest.raises(ValueError, match="vocab_size"):
        Motif(MODEL_PRESETS["tiny"])


def test_parameter_names_are_motifs_released_checkpoint_names():
    # Motif-2.6B's checkpoint (as its modeling code and vLLM's loader name it), less the "model." prefix;
    # the head is tied to the embedding, so there is no lm_head.
    model = Motif(dataclasses.replace(SMALL_VOCAB, n_layers=1))
    layer = ["input_layernorm.weight", "post_attention_layernorm.weight"]
    layer += [f"self_attn.{p}_proj.weight" for p in "qkvo"]
    layer += [f"self_attn.lambda_{p}" for p in ("q1", "k1", "q2", "k2")] + ["self_attn.subln.weight"]
    layer += [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")] + [
        "mlp.act_fn.weight",
        "mlp.act_fn.bias",
    ]
    want = {"embed_tokens.weight", "norm.weight"} | {f"layers.0.{name}" for name in layer}
    assert set(model.state_dict()) == want


def test_the_layers_are_the_kernels_modules():
    # One definition: a fix to the kernels' differential attention or PolyNorm MLP is a fix to the model.
    from motif_data.kernels import DifferentialAttention, PolyNormGatedMLP

    layer = Motif(SMALL_VOCAB).layers[0]
    assert isinstance(layer.self_attn, DifferentialAttention) and isinstance(layer.mlp, PolyNormGatedMLP)
    assert type(layer.mlp).forward is PolyNormGatedMLP.forward
