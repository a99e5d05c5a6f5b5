"""Grouped differential attention in the model (Motif-2-12.7B's layout) and QK-clip, against a per-head
formulation written here from the layout alone."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from motif_data.train.config import MODEL_PRESETS, ModelConfig, TrainConfig
from motif_data.train.model import Motif, count_parameters
from motif_data.typed import ConfigError

# 12 maps = 3 groups of (3 signal maps, 1 noise map); 2 K/V pairs: pair j serves signal heads 3·… and noise maps.
GDA = ModelConfig(
    n_layers=2, d_model=48, n_heads=12, head_dim=8, ffn_dim=64, vocab_size=200,
    attention="grouped_differential", noise_heads=3, kv_heads=2 * 3,
)  # fmt: skip
GDA_GQA = dataclasses.replace(GDA, n_heads=16, noise_heads=4, kv_heads=4)  # 4 groups of 3 + 1, 2 pairs


def _layer_by_hand(layer, x, cos, sin):
    """softmax(Qs_h Ks_hᵀ/√d)V_h − λ softmax(Qn_g Kn_gᵀ/√d)V_h for each signal head, head by head."""
    from motif_data.train.model import apply_rotary

    b, s, _ = x.shape
    hd, r, hs, pairs = layer.head_dim, layer.ratio, layer.num_heads, layer.kv_pairs
    q = apply_rotary(layer.q_proj(x).view(b, s, -1, hd).transpose(1, 2), cos, sin)
    k = apply_rotary(layer.k_proj(x).view(b, s, -1, hd).transpose(1, 2), cos, sin)
    v = layer.v_proj(x).view(b, s, pairs, 2 * hd).transpose(1, 2)
    causal = torch.ones(s, s, dtype=torch.bool).triu(1)
    lam = layer.lambda_full()

    def attend(qm, km, vm):
        scores = (qm @ km.transpose(-1, -2) / math.sqrt(hd)).masked_fill(causal, float("-inf"))
        return torch.softmax(scores, -1) @ vm

    heads = []
    for h in range(hs):
        g, i = divmod(h, r)
        pair = h // (hs // pairs)  # value pair and signal key of head h
        noise_key = g // (layer.noise_heads // pairs)
        signal = attend(q[:, g * (r + 1) + i], k[:, 2 * pair], v[:, pair])
        noise = attend(q[:, g * (r + 1) + r], k[:, 2 * noise_key + 1], v[:, pair])
        heads.append(signal - lam * noise)
    out = torch.stack(heads, 2)  # (B, S, H, 2·hd)
    out = F.rms_norm(out, (2 * hd,), layer.subln.weight, layer.subln.eps) * (1 - layer.lambda_init)
    return layer.o_proj(out.reshape(b, s, -1))


@pytest.mark.parametrize("cfg", [GDA, GDA_GQA], ids=["pair-per-group", "gqa"])
def test_grouped_layer_matches_a_per_head_formulation(cfg):
    torch.manual_seed(0)
    model = Motif(cfg)
    layer = model.layers[0].self_attn
    assert layer.ratio == 3 and layer.o_proj.in_features == cfg.diff_heads * 2 * cfg.head_dim
    x = torch.randn(2, 11, cfg.d_model)
    cos, sin = model.rotary(11)
    torch.testing.assert_close(layer(x, cos, sin), _layer_by_hand(layer, x, cos, sin), rtol=1e-5, atol=1e-5)


def test_differential_is_grouped_with_ratio_one():
    # Motif-2.6B's layer read as GDA: maps 2h, 2h + 1 are a group of one signal map and its noise map.
    cfg = MODEL_PRESETS["tiny"].replace(vocab_size=200)
    torch.manual_seed(1)
    layer = Motif(cfg).layers[0].self_attn
    assert layer.ratio == 1 and layer.kv_pairs == layer.num_heads
    x = torch.randn(1, 9, cfg.d_model)
    cos, sin = Motif(cfg).rotary(9)
    torch.testing.assert_close(layer(x, cos, sin), _layer_by_hand(layer, x, cos, sin), rtol=1e-5, atol=1e-5)


def test_max_logits_are_tracked_per_map_and_across_forwards():
    torch.manual_seed(2)
    model = Motif(GDA_GQA)
    layer = model.layers[0].self_attn
    layer.track_max_logits = True
    cos, sin = model.rotary(10)
    xs = [torch.randn(1, 10, GDA_GQA.d_model) for _ in range(2)]
    for x in xs:
        layer(x, cos, sin)
    from motif_data.train.model import apply_rotary

    keys, _ = layer.map_layout()
    want = torch.full((GDA_GQA.n_heads,), float("-inf"))
    for x in xs:
        q = apply_rotary(layer.q_proj(x).view(1, 10, -1, 8).transpose(1, 2), cos, sin)
        k = apply_rotary(layer.k_proj(x).view(1, 10, -1, 8).transpose(1, 2), cos, sin)
        for m in range(GDA_GQA.n_heads):
            scores = (q[0, m] @ k[0, keys[m]].T / math.sqrt(8)).masked_fill(
                torch.ones(10, 10).triu(1).bool(), -1e9
            )
            want[m] = max(want[m], scores.max())
    torch.testing.assert_close(layer.max_logits, want.detach(), rtol=1e-5, atol=1e-5)
    layer.reset_max_logits()
    assert layer.max_logits is None


@pytest.mark.parametrize(
    "cfg", [MODEL_PRESETS["tiny"].replace(vocab_size=200), GDA_GQA], ids=["diff", "gda-gqa"]
)
def test_qk_clip_brings_a_planted_map_to_tau_and_leaves_the_others(cfg):
    torch.manual_seed(3)
    model = Motif(cfg)
    layer = model.layers[0].self_attn
    hd = cfg.head_dim
    planted = 1  # a signal map; with GQA its key is shared with other maps
    with torch.no_grad():
        layer.q_proj.weight[planted * hd : (planted + 1) * hd] *= 40.0
    x = torch.randn(2, 12, cfg.d_model)
    cos, sin = model.rotary(12)

    def maxima():
        layer.reset_max_logits()
        layer.track_max_logits = True
        with torch.no_grad():
            layer(x, cos, sin)
        return layer.max_logits.clone()

    before = maxima()
    tau = float(before.sort().values[-2]) * 1.5  # only the planted map is above τ
    assert before[planted] > tau and (before[torch.arange(len(before)) != planted] < tau).all()
    assert layer.clip_qk_(before, tau) == 1
    after = maxima()
    # Logits are bilinear in (q, k): the planted map lands on τ (up to the rounding of one scale).
    assert after[planted] <= tau * (1 + 1e-5) and after[planted] == pytest.approx(tau, rel=1e-4)
    others = torch.arange(len(before)) != planted
    torch.testing.assert_close(after[others], before[others], rtol=1e-6, atol=1e-6)


def test_motif_2_12_7b_preset_counts_12_7_billion_parameters_on_meta_device():
    cfg = MODEL_PRESETS["motif-2-12.7b"]
    with torch.device("meta"):
        model = Motif(cfg)
    n = count_parameters(model)
    assert abs(n - 12.7e9) / 12.7e9 < 0.05, n
    layer = model.layers[0].self_attn
    assert layer.ratio == 4 and cfg.attention == "grouped_differential"


@pytest.mark.parametrize(
    "model, key, message",
    [
        ({"attention": "grouped_differential"}, "model.noise_heads", "needs the number of noise maps"),
        ({"attention": "grouped_differential", "noise_heads": 5}, "model.noise_heads", "equal groups"),
        ({"noise_heads": 2}, "model.noise_heads", 'attention = "grouped_differential"'),
        ({"attention": "grouped_differential", "noise_heads": 2, "kv_heads": 3}, "model.kv_heads", "pairs"),
        ({"attention": "standard", "kv_heads": 2}, "model.kv_heads", "differential attentions only"),
    ],
)
def test_bad_head_settings_name_the_key(model, key, message):
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({"model": {"preset": "tiny", "n_heads": 6, **model}, "train": {}})
    assert key in str(e.value) and message in str(e.value)
