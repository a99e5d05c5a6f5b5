import math

import pytest
import torch

from motif_data import DOMAINS
from motif_data.trainer_hook import (
    CheckpointAverager,
    DomainCounters,
    Phase,
    average_state_dicts,
    phase_at,
    wsd_lr,
    wsd_scheduler,
)

KW = dict(peak=3e-4, warmup=100, total=1000, decay=200)


def test_wsd_warms_up_linearly_holds_the_peak_and_ends_at_a_quarter():
    assert wsd_lr(0, **KW) == 0
    assert wsd_lr(50, **KW) == pytest.approx(1.5e-4)
    assert wsd_lr(100, **KW) == wsd_lr(500, **KW) == wsd_lr(800, **KW) == 3e-4
    assert wsd_lr(1000, **KW) == pytest.approx(0.75e-4)
    assert wsd_lr(5000, **KW) == pytest.approx(0.75e-4)
    # inverse-square-root shape: 1 / lr^2 grows linearly over the decay
    xs = [800, 850, 900, 950, 1000]
    inv_sq = [1 / wsd_lr(x, **KW) ** 2 for x in xs]
    steps = [b - a for a, b in zip(inv_sq, inv_sq[1:], strict=False)]
    assert all(s == pytest.approx(steps[0], rel=1e-9) for s in steps)
    assert all(
        a > b for a, b in zip([wsd_lr(x, **KW) for x in xs], [wsd_lr(x, **KW) for x in xs[1:]], strict=False)
    )
    assert wsd_lr(900, **KW, shape="linear") == pytest.approx(3e-4 * (1 - 0.75 * 0.5))
    assert wsd_lr(2.25e12, peak=1.0, warmup=1e10, total=2.5e12, decay=0.5e12) == pytest.approx(
        1 / math.sqrt(1 + 15 * 0.5)
    )  # works in tokens as well as steps


def test_wsd_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="warmup \\+ decay .* must not exceed total.*final_ratio.*shape"):
        wsd_lr(0, peak=1.0, warmup=600, total=1000, decay=500, final_ratio=0, shape="cosine")


def test_wsd_scheduler_drives_a_torch_optimizer():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = wsd_scheduler(opt, warmup=10, total=100, decay=20)
    seen = []
    for _ in range(100):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[5] == pytest.approx(1.0) and seen[50] == 2.0
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_the_phase_of_a_token_switches_at_the_long_context_point():
    # Motif-2.6B-LC: 2.42T tokens at 4,096 and RoPE base 10k, then the last 80B at 16,384 and 500k.
    phases = [Phase(2_420_000_000_000, 4096, 16, 10_000.0), Phase(80_000_000_000, 16_384, 4, 500_000.0)]
    assert phases[phase_at(phases, 0)].rope_base == 10_000
    assert phases[phase_at(phases, 2.42e12 - 1)].rope_base == 10_000
    assert phases[phase_at(phases, 2.42e12)].rope_base == 500_000
    assert phase_at(phases, 2.5e12) == phase_at(phases, 9e12) == 1  # the last phase holds past the end


def test_sma_averages_the_last_k_snapshots_and_leaves_the_optimizer_alone():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    avg = CheckpointAverager(k=3, every_tokens=100)
    taken = []
    for step in range(1, 14):  # 40 tokens per step: snapshots at 120, 200, 320, 400, 520
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        opt.zero_grad()
        if avg.update(model, tokens=40 * step):
            taken.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert len(taken) == 5 and len(avg.snapshots) == 3
    expected = {n: sum(t[n] for t in taken[-3:]) / 3 for n in taken[0]}
    weight_before = model.weight
    state_before = {k: v.clone() for k, v in opt.state[model.weight].items() if torch.is_tensor(v)}
    avg.apply(model)
    assert model.weight is weight_before  # same tensors: the optimizer still points at them
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n])
    for k, v in state_before.items():
        assert torch.equal(opt.state[model.weight][k], v)
    other = CheckpointAverager(k=3, every_tokens=100)
    other.load_state_dict(avg.state_dict())
    assert other.next_at == 600
    torch.testing.assert_close(other.averaged()["bias"], expected["bias"])
    with pytest.raises(ValueError, match="nothing to average"):
        average_state_dicts([])


def test_domain_counters_sum_tokens_and_loss_per_domain():
    c = DomainCounters()
    c.update(torch.tensor([0, 2, 2, 7]), torch.tensor([10, 20, 30, 5]), torch.tensor([10.0, 40.0, 30.0, 2.5]))
    c.update(torch.tensor([2]), torch.tensor([50]), torch.tensor([30.0]))
    s = c.summary()
    assert set(s) == {DOMAINS[0], DOMAINS[2], DOMAINS[7]}
    assert s["korean"] == {"sequences": 3.0, "tokens": 100.0, "loss": 1.0}
    assert s["web"]["loss"] == 1.0 and s["reasoning"]["loss"] == 0.5
    restored = DomainCounters()
    restored.load_state_dict(c.state_dict())
    assert restored.summary() == s
