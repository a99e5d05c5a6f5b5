"""The run's optimizer (AdamW, or Muon for the projection matrices + AdamW for the rest) and QK-clip: the split,
one step against from-scratch updates, exact resume, the all-reduced clip, and Muon runs of the loop."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from test_loop import MODEL, config, final_parameters, metrics
from torch import nn

from motif_data.train.checkpoint import latest_checkpoint
from motif_data.train.config import MODEL_PRESETS, TrainConfig
from motif_data.train.loop import train
from motif_data.train.model import Motif
from motif_data.train.optim import Optimizers, QKClip, build_optimizer

TINY = MODEL_PRESETS["tiny"].replace(vocab_size=512)
# Motif's parameter names: the decoder blocks' projection matrices, and nothing else, are Muon's.
PROJECTION = re.compile(r"layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight")


def muon_config(**changes) -> TrainConfig:
    return TrainConfig(model=TINY, optimizer="muon", lr=0.02, weight_decay=0.1).replace(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"attention": "differential", "mlp": "polynorm"},
        {"attention": "standard", "mlp": "swiglu"},
        {"attention": "grouped_differential", "n_heads": 6, "noise_heads": 2, "tie_embeddings": False},
    ],
    ids=["differential-polynorm", "standard-swiglu", "grouped-untied"],
)
def test_muon_gets_exactly_the_projection_matrices_and_adamw_everything_else(changes):
    model = Motif(TINY.replace(**changes))
    opt = build_optimizer(model, muon_config(), fused=False)
    owner = {}
    for name, inner in opt.optimizers.items():
        for group in inner.param_groups:
            for p in group["params"]:
                assert id(p) not in owner, "a parameter in two groups"
                owner[id(p)] = (name, group["weight_decay"])
    named = dict(model.named_parameters())
    assert set(owner) == {id(p) for p in named.values()}
    for name, p in named.items():
        if PROJECTION.fullmatch(name):
            assert owner[id(p)] == ("muon", 0.1), name
        elif p.dim() >= 2:  # the embedding (the output head too where tied) and an untied head
            assert name in ("embed_tokens.weight", "lm_head.weight") and owner[id(p)] == ("adamw", 0.1)
        else:  # norms, λ vectors, PolyNorm coefficients
            assert owner[id(p)] == ("adamw", 0.0), name
    assert sum(PROJECTION.fullmatch(n) is not None for n in named) == 7 * TINY.n_layers


def reference_newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Keller Jordan's quintic Newton–Schulz orthogonalisation, in float64."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def test_two_steps_match_from_scratch_muon_and_adamw_updates():
    torch.manual_seed(0)
    model = Motif(TINY)
    lr, wd, mu, betas, eps = 0.02, 0.1, 0.95, (0.9, 0.95), 1e-8
    opt = build_optimizer(model, muon_config(lr=lr, weight_decay=wd, muon_momentum=mu), fused=False)
    names = dict(model.named_parameters())
    theta = {n: p.detach().double().clone() for n, p in names.items()}
    state = {n: {"buf": torch.zeros_like(t), "m": torch.zeros_like(t), "v": torch.zeros_like(t)}
             for n, t in theta.items()}  # fmt: skip
    for step in (1, 2):
        before = {n: p.detach().clone() for n, p in names.items()}
        for p in names.values():
            p.grad = torch.randn_like(p)
        opt.step()
        for n, p in names.items():
            g, s, t = p.grad.double(), state[n], theta[n]
            if PROJECTION.fullmatch(n):
                # Muon as its paper writes it: B ← μB + g, Nesterov g + μB, orthogonalised, scaled to AdamW's
                # RMS by 0.2·√max(A, B) (Moonshot), decoupled weight decay.
                s["buf"] = mu * s["buf"] + g
                update = reference_newton_schulz(g + mu * s["buf"])
                t.mul_(1 - lr * wd).sub_(lr * 0.2 * math.sqrt(max(t.shape)) * update)
                ours, expected = p.detach().double() - before[n].double(), t - before[n].double()
                # torch runs Newton–Schulz in bf16: a few per cent of the update, far below what a wrong
                # scale (√(32)·0.2 = 1.13 vs 1), momentum or Nesterov term would move it.
                assert (ours - expected).norm() < 0.03 * expected.norm(), (n, step)
                theta[n] = p.detach().double().clone()  # the next step starts from where ours got
            else:
                decay = wd if p.dim() >= 2 else 0.0
                s["m"] = betas[0] * s["m"] + (1 - betas[0]) * g
                s["v"] = betas[1] * s["v"] + (1 - betas[1]) * g * g
                m_hat, v_hat = s["m"] / (1 - betas[0] ** step), s["v"] / (1 - betas[1] ** step)
                t.mul_(1 - lr * decay).sub_(lr * m_hat / (v_hat.sqrt() + eps))
                torch.testing.assert_close(p.detach().double(), t, rtol=1e-5, atol=1e-7, msg=n)


def _loss_step(model: Motif, opt: Optimizers, ids: torch.Tensor) -> None:
    model(ids[:, :-1], ids[:, 1:]).mean().backward()
    opt.step()
    opt.zero_grad()


def test_state_dict_round_trip_continues_bitwise():
    cfg = muon_config()
    batches = torch.randint(0, 512, (5, 4, 17), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Motif(TINY)
    opt = build_optimizer(model, cfg, fused=False)
    for ids in batches[:3]:
        _loss_step(model, opt, ids)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)

    torch.manual_seed(1)  # another init, overwritten by the load
    resumed, fresh_state = Motif(TINY), Motif(TINY)
    resumed.load_state_dict(saved["model"])
    fresh_state.load_state_dict(saved["model"])
    resumed_opt = build_optimizer(resumed, cfg, fused=False)
    resumed_opt.load_state_dict(saved["optimizer"])
    fresh_opt = build_optimizer(fresh_state, cfg, fused=False)  # the momenta lost
    for ids in batches[3:]:
        for m, o in ((model, opt), (resumed, resumed_opt), (fresh_state, fresh_opt)):
            _loss_step(m, o, ids)
    a, b, c = model.state_dict(), resumed.state_dict(), fresh_state.state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["layers.0.self_attn.q_proj.weight"], c["layers.0.self_attn.q_proj.weight"])
    assert not torch.equal(a["embed_tokens.weight"], c["embed_tokens.weight"])


def test_loading_an_adamw_state_into_a_muon_run_names_the_key():
    model = Motif(TINY)
    adamw_state = build_optimizer(model, muon_config(optimizer="adamw", lr=0.02), fused=False).state_dict()
    with pytest.raises(ValueError, match=r"state of \['adamw'\] but this run steps \['adamw', 'muon'\]: .*"
                       r"train\.optimizer"):  # fmt: skip
        build_optimizer(model, muon_config(), fused=False).load_state_dict(adamw_state)


class StandInAttention(nn.Module):
    """The attention layers' QK-clip interface, without attention: ``maps`` query maps of ``head_dim`` rows, each
    with its own key; a clipped map's q rows take all of γ = τ / max."""

    def __init__(self, maps: int, head_dim: int = 2, d_model: int = 4) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.q_proj = nn.Linear(d_model, maps * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, maps * head_dim, bias=False)
        self.track_max_logits = False
        self.max_logits: torch.Tensor | None = None

    @torch.no_grad()
    def clip_qk_(self, max_logits: torch.Tensor, tau: float) -> int:
        over = (max_logits > tau).nonzero().flatten().tolist()
        for m in over:
            self.q_proj.weight[m * self.head_dim : (m + 1) * self.head_dim] *= tau / float(max_logits[m])
        return len(over)

    def reset_max_logits(self) -> None:
        self.max_logits = None


def test_qk_clip_clips_the_maps_over_tau_of_every_layer_and_resets_them():
    torch.manual_seed(0)
    model = nn.Sequential(StandInAttention(3), nn.Linear(4, 4), StandInAttention(2))
    before = {n: t.clone() for n, t in model.state_dict().items()}
    clip = QKClip(model, tau=10.0, world_size=1)
    assert model[0].track_max_logits and model[2].track_max_logits
    model[0].max_logits, model[2].max_logits = torch.tensor([5.0, 20.0, 10.0]), torch.tensor([40.0, 1.0])
    top, clipped = clip()
    assert float(top) == 40.0 and int(clipped) == 2  # 10 is not over τ = 10
    q0, q2 = model[0].q_proj.weight, model[2].q_proj.weight
    assert torch.equal(q0[2:4], before["0.q_proj.weight"][2:4] * 0.5)
    assert torch.equal(q2[0:2], before["2.q_proj.weight"][0:2] * 0.25)
    assert torch.equal(q0[[0, 1, 4, 5]], before["0.q_proj.weight"][[0, 1, 4, 5]])
    assert torch.equal(q2[2:4], before["2.q_proj.weight"][2:4])
    assert model[0].max_logits is None and model[2].max_logits is None


def test_qk_clip_without_layers_that_report_their_logits_names_the_key_and_the_fix():
    with pytest.raises(ValueError, match=r"train\.muon_clip_tau is 100\.0 .* set train\.muon_clip_tau = 0"):
        QKClip(nn.Linear(2, 2), tau=100.0, world_size=1)


def test_two_ranks_clip_alike_from_the_maxima_of_both_with_one_all_reduce(tmp_path, run_bounded):
    script = tmp_path / "clip.py"
    script.write_text(
        "import sys\n"
        "import torch, torch.distributed as dist\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_optim import StandInAttention\n"
        "from motif_data.train.optim import QKClip\n"
        "dist.init_process_group('gloo')\n"
        "rank, calls, all_reduce = dist.get_rank(), [], dist.all_reduce\n"
        "dist.all_reduce = lambda *a, **k: (calls.append(1), all_reduce(*a, **k))[1]\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Sequential(StandInAttention(3), StandInAttention(2))\n"
        "clip = QKClip(model, tau=10.0, world_size=2)\n"
        "model[0].max_logits = torch.tensor([[5.0, 20.0, 1.0], [15.0, 2.0, 1.0]][rank])\n"
        "model[1].max_logits = torch.tensor([[1.0, 2.0], [3.0, 30.0]][rank])\n"
        "top, clipped = clip()\n"
        "torch.save({'top': top, 'clipped': clipped, 'calls': len(calls), 'weights': model.state_dict()},\n"
        "           f'{sys.argv[1]}/rank{rank}.pt')\n"
        "dist.destroy_process_group()\n"
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert run_bounded([*torchrun, str(script), str(tmp_path)], timeout=120).returncode == 0
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    torch.manual_seed(0)
    expected = torch.nn.Sequential(StandInAttention(3), StandInAttention(2))
    with torch.no_grad():  # the element-wise maxima [15, 20, 1], [3, 30]: three maps over τ
        expected[0].q_proj.weight[0:2] *= 10 / 15
        expected[0].q_proj.weight[2:4] *= 10 / 20
        expected[1].q_proj.weight[2:4] *= 10 / 30
    for r in ranks:
        assert r["calls"] == 1 and float(r["top"]) == 30.0 and int(r["clipped"]) == 3
        assert all(torch.equal(r["weights"][n], t) for n, t in expected.state_dict().items())


# Motif-2-12.7B's recipe in miniature: grouped differential attention (8 signal heads, 2 noise maps, one K/V
# pair for all: r = 4 with GQA) and an untied output head.
GDA = MODEL.replace(
    n_heads=10, attention="grouped_differential", noise_heads=2, kv_heads=2, tie_embeddings=False
)


@pytest.mark.parametrize("model", [MODEL, GDA], ids=["differential", "grouped"])
def test_a_muon_run_learns_logs_its_logits_and_resumes_bitwise_after_a_kill(
    tmp_path, synthetic_manifest, model
):
    cfg = config(
        model=model,
        optimizer="muon",
        steps=40,
        micro_batch=8,
        warmup_steps=4,
        decay_fraction=0.25,
        ckpt_every=20,
    )
    train(cfg, tmp_path / "straight", synthetic_manifest)
    rows = metrics(tmp_path / "straight")
    # As AdamW's run in test_loop: far below ln(512) = 6.24 once it learns the domains' narrow vocabularies.
    assert rows[0]["loss"] > 6.0 and sum(r["loss"] for r in rows[-5:]) / 5 < 5.0
    assert all(0 < r["max_logit"] < 100.0 and r["qk_clipped"] == 0 for r in rows)  # τ defaults to 100
    saved = torch.load(latest_checkpoint(tmp_path / "straight" / "checkpoints"), weights_only=False)
    assert set(saved["optimizer"]) == {"muon", "adamw"} and saved["optimizer"]["muon"]["state"]

    killed = tmp_path / "killed"  # killed after its step-20 checkpoint, one metrics line past it
    shutil.copytree(tmp_path / "straight", killed)
    (killed / "checkpoints" / "step-0000040.pt").unlink()
    (killed / "summary.json").unlink()
    (killed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:21]))
    train(cfg, killed, synthetic_manifest, resume=True)
    same = ("step", "loss", "domain_loss", "lr", "grad_norm", "max_logit", "qk_clipped")
    assert [{k: r[k] for k in same} for r in metrics(killed)] == [{k: r[k] for k in same} for r in rows]
    pa, pb = final_parameters(tmp_path / "straight"), final_parameters(killed)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[n], pb[n]) for n in pa)


def test_qk_clip_in_the_loop_holds_the_logits_near_tau(tmp_path, synthetic_manifest):
    cfg = config(optimizer="muon", steps=12, micro_batch=8, warmup_steps=2)
    train(cfg.replace(muon_clip_tau=1e9), tmp_path / "free", synthetic_manifest)  # tracked, never clipped
    free = metrics(tmp_path / "free")
    tau = free[-1]["max_logit"] / 2
    train(cfg.replace(muon_clip_tau=tau), tmp_path / "clipped", synthetic_manifest)
    clipped = metrics(tmp_path / "clipped")
    assert all(r["qk_clipped"] == 0 for r in free) and sum(r["qk_clipped"] for r in clipped) > 0
    # Each step starts from weights whose logits were cut to τ: one update moves them only a little past it.
    assert max(r["max_logit"] for r in clipped[6:]) < 1.5 * tau < free[-1]["max_logit"]


def test_resuming_an_adamw_checkpoint_as_a_muon_run_is_refused(tmp_path, synthetic_manifest):
    train(config(steps=2, warmup_steps=1), tmp_path, synthetic_manifest)
    with pytest.raises(ValueError, match=r"they differ in train\.muon_clip_tau, train\.muon_lr, "
                       r"train\.muon_momentum, train\.optimizer:"):  # fmt: skip
        train(config(steps=4, warmup_steps=1, optimizer="muon"), tmp_path, synthetic_manifest, resume=True)


def test_muon_on_standard_attention_needs_qk_clip_off(tmp_path, synthetic_manifest):
    cfg = config(steps=2, warmup_steps=1, optimizer="muon", model=MODEL.replace(attention="standard"))
    with pytest.raises(ValueError, match=r"set train\.muon_clip_tau = 0"):
        train(cfg, tmp_path / "clip", synthetic_manifest)
    assert "max_logit" not in train(cfg.replace(muon_clip_tau=0.0), tmp_path / "off", synthetic_manifest)
    assert "max_logit" not in metrics(tmp_path / "off")[0]


def test_optimizer_settings_are_validated_naming_the_key():
    table = {"optimizer": "sgd", "muon_momentum": 1.0, "muon_clip_tau": -1.0, "muon_lr": 0.0}
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict({"model": {"preset": "tiny"}, "train": table})
    for key in ("train.optimizer: expected one of ['adamw', 'muon']", "train.muon_momentum",
                "train.muon_clip_tau", "train.muon_lr"):  # fmt: skip
        assert key in str(e.value)
    with pytest.raises(ValueError, match=r'train\.muon_lr: applies to optimizer = "muon" only'):
        TrainConfig.from_dict({"model": {"preset": "tiny"}, "train": {"muon_lr": 0.02}})
    muon = TrainConfig.from_dict({"model": {"preset": "tiny"}, "train": {"optimizer": "muon", "lr": 1e-3}})
    adamw = TrainConfig.from_dict({"model": {"preset": "tiny"}, "train": {"muon_clip_tau": 50.0}})
    assert (muon.qk_clip_tau, muon.muon_peak_lr, adamw.qk_clip_tau) == (100.0, 1e-3, 50.0)
    assert TrainConfig(model=TINY).qk_clip_tau == 0.0
