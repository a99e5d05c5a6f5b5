"""On the GPU machine (``pytest -m gpu``): the model with our Triton kernels computes what it computes with the
pure-PyTorch references, and the loop trains in bf16 autocast."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from motif_data.train.config import ModelConfig, TrainConfig
from motif_data.train.loop import train
from motif_data.train.model import Motif

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU (run with -m gpu there)"),
]

CFG = ModelConfig(n_layers=2, d_model=256, n_heads=4, head_dim=64, ffn_dim=1024, vocab_size=5000)


def test_kernels_and_references_give_the_same_losses_and_gradients():
    torch.manual_seed(0)
    ours = Motif(CFG).cuda()
    ref = Motif(CFG, reference_kernels=True).cuda()
    ref.load_state_dict(ours.state_dict())
    ids = torch.randint(0, CFG.vocab_size, (2, 300), device="cuda")  # 299 tokens: not a block multiple
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a = ours(ids[:, :-1], ids[:, 1:])
        b = ref(ids[:, :-1], ids[:, 1:])
    a.mean().backward()
    b.mean().backward()
    torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    for (name, pa), pb in zip(ours.named_parameters(), ref.parameters(), strict=True):
        err = (pa.grad.float() - pb.grad.float()).norm() / pb.grad.float().norm().clamp_min(1e-12)
        assert err < 3e-2, (name, float(err))


def test_loop_trains_in_bf16_on_gpu(tmp_path, synthetic_manifest):
    model = dataclasses.replace(CFG, vocab_size=None)  # sized by the synthetic corpus (512 ids)
    cfg = TrainConfig(
        model=model, seq_len=128, micro_batch=8, steps=30, lr=3e-3, warmup_steps=3, log_every=100
    )
    summary = train(cfg, tmp_path, synthetic_manifest)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    assert summary["peak_mem_gib"] > 0
    assert rows[-1]["mfu"] is None or rows[-1]["mfu"] > 0
