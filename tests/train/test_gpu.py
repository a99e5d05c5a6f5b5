"""On the GPU machine (``pytest -m gpu``): the model with our Triton kernels computes what it computes with the
pure-PyTorch references, and the loop trains in bf16 autocast."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from triton.runtime.autotuner import Autotuner

from motif_data.kernels import diff_attn, linear_ce, polynorm
from motif_data.train.config import ModelConfig, TrainConfig
from motif_data.train.loop import train
from motif_data.train.model import Motif

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU (run with -m gpu there)"),
]

CFG = ModelConfig(n_layers=2, d_model=256, n_heads=4, head_dim=64, ffn_dim=1024, vocab_size=5000)


def _losses_and_grads(model: Motif, ids: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, dict]:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        losses = model(ids[:, :-1], ids[:, 1:])
    losses.mean().backward()
    return losses.detach().double(), {n: p.grad.double() for n, p in model.named_parameters()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def test_kernels_in_bf16_are_as_close_to_fp32_as_the_references_in_bf16():
    # Ground truth: the reference ops in fp32. Our kernels in bf16 must be about as close to it as the
    # references in bf16 are (bf16 rounding of sums that cancel, e.g. the λ gradients, sets the floor).
    # The cross-entropy runs on the GPU default (dense, exact); cut-cross-entropy would not pass: it skips
    # gradient blocks whose softmax is below bf16 resolution by design (its filter_eps), which alone puts
    # every gradient ~2.5 % from fp32 at initialisation (measured on an H100).
    torch.manual_seed(0)
    ours = Motif(CFG).cuda()
    ref = Motif(CFG, reference_kernels=True).cuda()
    ref.load_state_dict(ours.state_dict())
    ids = torch.randint(0, CFG.vocab_size, (2, 300), device="cuda")  # 299 tokens: not a block multiple
    truth_loss, truth_grads = _losses_and_grads(ref, ids, bf16=False)
    ref.zero_grad()
    ref_loss, ref_grads = _losses_and_grads(ref, ids, bf16=True)
    our_loss, our_grads = _losses_and_grads(ours, ids, bf16=True)
    problems = []
    if _rel(our_loss, truth_loss) > max(1e-2, 2 * _rel(ref_loss, truth_loss)):
        problems.append(
            f"loss: ours {_rel(our_loss, truth_loss):.2e}, reference {_rel(ref_loss, truth_loss):.2e}"
        )
    for name, truth in truth_grads.items():
        mine, theirs = _rel(our_grads[name], truth), _rel(ref_grads[name], truth)
        if mine > max(2e-2, 2 * theirs):
            problems.append(f"grad {name}: ours {mine:.2e}, reference {theirs:.2e}")
    assert not problems, "\n".join(problems)


def test_default_cross_entropy_backend_gives_the_reference_losses():
    torch.manual_seed(1)
    ours = Motif(CFG).cuda()
    ref = Motif(CFG, reference_kernels=True).cuda()
    ref.load_state_dict(ours.state_dict())
    ids = torch.randint(0, CFG.vocab_size, (2, 300), device="cuda")
    truth, _ = _losses_and_grads(ref, ids, bf16=False)
    ref_loss, _ = _losses_and_grads(ref, ids, bf16=True)
    our_loss, _ = _losses_and_grads(ours, ids, bf16=True)
    assert _rel(our_loss, truth) <= max(1e-2, 2 * _rel(ref_loss, truth))


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


def test_compiled_model_computes_what_the_eager_model_computes(monkeypatch):
    # torch.compile traces our autograd Functions and their Triton launches (forward and backward) into its
    # graphs; a tracing failure or a wrong graph shows up here before it costs a training run. In fp32: in bf16
    # any two paths differ by tens of percent on sums that cancel (PolyNorm's bias gradient), hiding real errors.
    # The loss runs on the dense backend, which the compiled graph calls across a graph break.
    # Each autotuner keeps its first config only, so it compiles once and tunes nothing: tuning every config
    # in fp32 (IEEE-precision dots compile to large FMA loops) took over four minutes on an H100. The launch
    # path is the training one (pinned_config's direct launch is not traceable by Dynamo).
    def autotuners(obj):  # kernels hold them per target family, per program shape
        if isinstance(obj, Autotuner):
            yield obj
        elif isinstance(obj, (tuple, list, dict)):
            for item in obj.values() if isinstance(obj, dict) else obj:
                yield from autotuners(item)

    for module in (diff_attn, polynorm):
        for tuner in autotuners(list(vars(module).values())):
            monkeypatch.setattr(tuner, "configs", tuner.configs[:1])
    monkeypatch.setattr(linear_ce, "default_backend", lambda device: "dense")
    torch.manual_seed(2)
    model = Motif(CFG).cuda()
    ids = torch.randint(0, CFG.vocab_size, (2, 300), device="cuda")
    eager_loss, eager_grads = _losses_and_grads(model, ids, bf16=False)
    model.zero_grad()
    compiled_loss = torch.compile(model)(ids[:, :-1], ids[:, 1:])
    compiled_loss.mean().backward()
    assert _rel(compiled_loss.detach().double(), eager_loss) < 1e-5
    errors = {n: _rel(p.grad.double(), eager_grads[n]) for n, p in model.named_parameters()}
    problems = [f"{n}: {e:.1e}" for n, e in errors.items() if e > 1e-3]
    assert not problems, f"gradients differ from eager: {problems}"


def test_the_compiled_model_compiles_the_layers_once():
    # The training path (bf16 autocast, the autotuned kernels) breaks the graph at the attention op; the code
    # after it is one function for every layer. λ_init, a Python float per layer, made Dynamo recompile that
    # code for each layer; past its limit (8) the remaining layers ran eagerly (seen on the 12-layer small).
    torch._dynamo.reset()
    model = torch.compile(Motif(dataclasses.replace(CFG, n_layers=10)).cuda())
    ids = torch.randint(0, CFG.vocab_size, (2, 300), device="cuda")
    with torch._dynamo.config.patch(recompile_limit=4, fail_on_recompile_limit_hit=True):
        for _ in range(2):
            _losses_and_grads(model, ids, bf16=True)
