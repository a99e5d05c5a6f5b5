"""A run in phases on CPU: a seq_len and RoPE-base switch that resumes bitwise before, at and after it,
metrics that count each phase's tokens, and config errors that name the key and the fix."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from motif_data.train.checkpoint import latest_checkpoint
from motif_data.train.config import ModelConfig, PhaseConfig, TrainConfig
from motif_data.train.loop import train

MODEL = ModelConfig(n_layers=2, d_model=32, n_heads=4, head_dim=8, ffn_dim=96, max_seq_len=32)
# 4 steps of 4 × 16 tokens at RoPE base 10k, then 4 steps of 3 × 32 tokens at 500k: the tiny run's
# "long context" (16 → 32), with another number of tokens a step after the switch.
PHASES = (
    PhaseConfig(tokens=4 * 4 * 16),
    PhaseConfig(tokens=4 * 3 * 32, seq_len=32, micro_batch=3, rope_base=5e5),
)


def config(**changes) -> TrainConfig:
    base = TrainConfig(model=MODEL, seq_len=16, micro_batch=4, steps=8, lr=1e-2, warmup_steps=2, log_every=100,
                       ckpt_every=1, keep_checkpoints=10, phase=PHASES)  # fmt: skip
    return base.replace(**changes)


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def parameters(run) -> dict[str, torch.Tensor]:
    return torch.load(latest_checkpoint(run / "checkpoints"), weights_only=False)["model"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, synthetic_manifest):
    out = tmp_path_factory.mktemp("phases") / "straight"
    summary = train(config(), out, synthetic_manifest)
    return out, summary


def test_a_run_in_phases_switches_seq_len_and_rope_base_at_the_phase_boundary(straight):
    out, summary = straight
    rows = metrics(out)
    assert [r["rope_base"] for r in rows] == [10_000.0] * 4 + [500_000.0] * 4
    # tokens, counted by hand: 64 a step, then 96 a step
    assert [r["tokens"] for r in rows] == [64, 128, 192, 256, 352, 448, 544, 640]
    assert sum(summary["domain_tokens"].values()) == 640


@pytest.mark.parametrize("killed_after", [3, 4, 5])  # before, at and after the switch (after step 4)
def test_a_run_in_phases_resumes_bitwise_before_at_and_after_the_switch(
    straight, tmp_path, synthetic_manifest, killed_after
):
    out, _ = straight
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    for later in range(killed_after + 1, 9):
        (resumed / "checkpoints" / f"step-{later:07d}.pt").unlink()
    (resumed / "summary.json").unlink()
    train(config(), resumed, synthetic_manifest, resume=True)
    same = ("step", "loss", "domain_loss", "lr", "grad_norm", "rope_base", "tokens")  # all but the timings
    assert [{k: r[k] for k in same} for r in metrics(resumed)] == [
        {k: r[k] for k in same} for r in metrics(out)
    ]
    pa, pb = parameters(out), parameters(resumed)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[n], pb[n]) for n in pa)


def test_without_phases_a_run_is_what_it_was(tmp_path, synthetic_manifest):
    # The same first phase alone, as a plain [train] run, and as one phase: the same losses and stream.
    plain = train(config(phase=(), steps=4), tmp_path / "plain", synthetic_manifest)
    one = train(config(phase=PHASES[:1], steps=4), tmp_path / "one", synthetic_manifest)
    assert [r["loss"] for r in metrics(tmp_path / "plain")] == [r["loss"] for r in metrics(tmp_path / "one")]
    assert plain["domain_tokens"] == one["domain_tokens"]


def _problems(train_section: dict, model: dict | None = None) -> str:
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict({"model": {"preset": "tiny", **(model or {})}, "train": train_section})
    return str(e.value)


def test_bad_phases_are_refused_naming_the_key_and_the_fix():
    base = {"seq_len": 1024, "micro_batch": 4, "steps": 10, "warmup_steps": 1}
    # 8 steps of 4 × 1,024 tokens, then 2 of 1 × 8,192: 10 steps
    phases = [
        {"tokens": 8 * 4 * 1024},
        {"tokens": 2 * 8192, "seq_len": 8192, "micro_batch": 1, "rope_base": 5e5},
    ]
    text = _problems(base | {"phase": phases})
    assert "train.phase[1].seq_len: 8192 exceeds model.max_seq_len 4096: raise max_seq_len in [model]" in text
    cfg = TrainConfig.from_dict(
        {"model": {"preset": "tiny", "max_seq_len": 8192}, "train": base | {"phase": phases}}
    )
    assert [(p.seq_len, p.micro_batch, p.rope_base) for p in cfg.phases] == [
        (1024, 4, 10_000),
        (8192, 1, 5e5),
    ]
    text = _problems(base | {"steps": 11, "phase": phases}, {"max_seq_len": 8192})
    assert (
        "train.phase: the phases' tokens hold 10 steps on one rank (fewer on more), train.steps is 11" in text
    )
    assert "add tokens to the last phase or lower train.steps" in text
    bad = [{"tokens": 1000}, {"tokens": 3000, "seq_len": 1000}, phases[1]]
    text = _problems(base | {"phase": bad}, {"max_seq_len": 8192})
    assert (
        "train.phase[0].tokens: 1,000 is not a whole number of steps" in text and "multiple of 8,192" in text
    )
    assert "train.phase[1].seq_len: 1000 does not divide the longest phase's seq_len 8192" in text
    text = _problems(base | {"phase": [{"tokens": 2.5}]})
    assert "train.phase[0].tokens: 2.5 is not a whole number of tokens" in text


def test_the_removed_rope_switch_names_its_replacement():
    text = _problems({"rope_switch_step": 100, "rope_base_after": 5e5})
    for key in ("train.rope_switch_step", "train.rope_base_after"):
        assert f"{key}: was removed: a RoPE base change is a phase now, e.g. [[train.phase]]" in text


def test_phases_that_do_not_split_into_steps_on_this_many_ranks_are_refused_at_setup(
    tmp_path, synthetic_manifest
):
    from motif_data.train.loop import _spans

    cfg = config()
    assert [s.first_step for s in _spans(cfg, 1)] == [0, 4]
    with pytest.raises(
        ValueError, match=r"train.phase: the phases' tokens hold 4 steps on 2 ranks, train.steps is 8"
    ):
        _spans(cfg, 2)
    with pytest.raises(
        ValueError, match=r"train.phase\[0\].tokens: 256 is not a whole number of steps of 192"
    ):
        _spans(cfg, 3)
