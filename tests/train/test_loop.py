"""The training loop on CPU (fp32) over a synthetic corpus: exact resume, gradient accumulation, learning,
per-domain accounting, metrics and checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch

from motif_data import DOMAINS
from motif_data.train.checkpoint import latest_checkpoint
from motif_data.train.config import ModelConfig, TrainConfig
from motif_data.train.loop import domain_loss_sums, train

MODEL = ModelConfig(n_layers=2, d_model=32, n_heads=4, head_dim=8, ffn_dim=96)


def config(**changes) -> TrainConfig:
    base = TrainConfig(
        model=MODEL, seq_len=32, micro_batch=4, steps=8, lr=1e-2, warmup_steps=2, log_every=100
    )
    return base.replace(**changes)


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_parameters(run) -> dict[str, torch.Tensor]:
    return torch.load(latest_checkpoint(run / "checkpoints"), weights_only=False)["model"]


def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path, synthetic_manifest):
    cfg = config(steps=8, ckpt_every=3, keep_checkpoints=5, sma_every=2, sma_window=3)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(cfg, straight, synthetic_manifest)
    # The "crash": a run that got as far as its step-3 checkpoint, with a metrics line past it and the next
    # line torn by the kill (no newline, not JSON).
    train(cfg, resumed, synthetic_manifest)
    for later in ("step-0000006.pt", "step-0000008.pt"):
        (resumed / "checkpoints" / later).unlink()
    (resumed / "model-sma.pt").unlink()
    assert latest_checkpoint(resumed / "checkpoints").name == "step-0000003.pt"
    with open(resumed / "metrics.jsonl", "w") as f:
        f.write(
            "".join(json.dumps(r) + "\n" for r in metrics(straight)[:4])
            + json.dumps(metrics(straight)[4])[:25]
        )
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: dropped its torn last line"):
        train(cfg, resumed, synthetic_manifest, resume=True)

    a, b = metrics(straight), metrics(resumed)
    assert [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b, strict=True):
        assert ra["loss"] == rb["loss"] and ra["domain_loss"] == rb["domain_loss"] and ra["lr"] == rb["lr"]
    pa, pb = final_parameters(straight), final_parameters(resumed)
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name
    sa = torch.load(straight / "model-sma.pt", weights_only=False)["model"]
    sb = torch.load(resumed / "model-sma.pt", weights_only=False)["model"]
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    # SMA over the snapshots at steps 4, 6, 8 differs from the last parameters.
    assert not torch.equal(sa["embed_tokens.weight"], pa["embed_tokens.weight"])
    assert (
        json.loads((resumed / "summary.json").read_text())["domain_tokens"]
        == json.loads((straight / "summary.json").read_text())["domain_tokens"]
    )


def test_resume_names_the_file_and_line_of_a_broken_metrics_line(tmp_path, synthetic_manifest):
    cfg = config(steps=4, ckpt_every=2)
    train(cfg, tmp_path, synthetic_manifest)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2: not JSON"):
        train(cfg.replace(steps=6), tmp_path, synthetic_manifest, resume=True)


def test_resume_refuses_another_runs_checkpoint_naming_both_runs(tmp_path, synthetic_manifest):
    cfg = config(steps=4, ckpt_every=2)
    train(cfg, tmp_path, synthetic_manifest)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    # another learning rate is another run: it crashed after loading, or went on silently, before
    with pytest.raises(
        ValueError,
        match=r"another run's checkpoint \(run [0-9a-f]{16}; .* run [0-9a-f]{16}\); they differ in train.lr:",
    ):
        train(cfg.replace(steps=6, lr=5e-3), tmp_path, synthetic_manifest, resume=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    train(
        cfg.replace(steps=6, log_every=3), tmp_path, synthetic_manifest, resume=True
    )  # steps, logging: same run
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-0000006.pt"


def test_retention_keeps_this_runs_newest_and_never_touches_another_runs(tmp_path):
    from motif_data.train.checkpoint import Checkpointer, run_identity

    weights = torch.nn.Linear(2, 2)
    spec = {"model": {}, "train": {}, "corpus": "mine"}
    for step, run in ((3, run_identity(spec)), (5, run_identity(spec)), (20, "other"), (30, "other")):
        torch.save({"run": run, "step": step}, tmp_path / f"step-{step:07d}.pt")  # the others sort after ours
    checkpointer = Checkpointer(tmp_path, spec, every=None, keep=2)
    checkpointer.register(model=weights)
    checkpointer.save(10)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step-0000005.pt", "step-0000010.pt", "step-0000020.pt", "step-0000030.pt"]
    saved = torch.load(tmp_path / "step-0000010.pt", weights_only=False)
    assert saved["run"] == run_identity(spec) and saved["step"] == 10
    torch.testing.assert_close(saved["model"]["weight"], weights.weight.detach())


def test_gradient_accumulation_matches_one_larger_batch(tmp_path, synthetic_manifest):
    big = train(config(micro_batch=4, grad_accum=1, steps=3), tmp_path / "big", synthetic_manifest)
    accumulated = train(config(micro_batch=2, grad_accum=2, steps=3), tmp_path / "acc", synthetic_manifest)
    # Same global sequences per step (the loader's order is global), so the same updates up to rounding.
    for ra, rb in zip(metrics(tmp_path / "big"), metrics(tmp_path / "acc"), strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
    pa, pb = final_parameters(tmp_path / "big"), final_parameters(tmp_path / "acc")
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=1e-4, atol=1e-5)
    assert big["domain_tokens"] == accumulated["domain_tokens"]


def test_training_lowers_the_loss_and_logs_every_step(tmp_path, synthetic_manifest):
    cfg = config(steps=40, micro_batch=8, warmup_steps=4, decay_fraction=0.25)
    summary = train(cfg, tmp_path, synthetic_manifest)
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 41))
    # Each synthetic domain uses ~50 of 512 ids: a model that learns gets far below ln(512) = 6.24.
    assert rows[0]["loss"] > 6.0 and sum(r["loss"] for r in rows[-5:]) / 5 < 5.0
    # WSD: warm-up to the peak, hold, decay to 25 % of the peak over the last quarter.
    lrs = [r["lr"] for r in rows]
    assert lrs[0] < lrs[3] == max(lrs) == 1e-2 and lrs[29] == 1e-2 and lrs[-1] == pytest.approx(2.5e-3)
    assert all(a >= b for a, b in zip(lrs[30:], lrs[31:], strict=False))
    assert set(rows[0]) >= {"loss", "domain_loss", "lr", "tokens_per_s", "mfu", "step_time_s", "grad_norm"}
    assert rows[-1]["tokens"] == 40 * 8 * 32 == sum(summary["domain_tokens"].values())
    # A step's loss lies between its domains' losses (it is their token-weighted mean).
    for r in rows:
        assert set(r["domain_loss"]) <= set(DOMAINS)
        assert min(r["domain_loss"].values()) - 1e-9 <= r["loss"] <= max(r["domain_loss"].values()) + 1e-9


def test_init_from_a_model_sma_starts_from_the_average(tmp_path, synthetic_manifest):
    source = tmp_path / "averaged"
    train(config(steps=4, sma_every=2, sma_window=2), source, synthetic_manifest)
    averaged = torch.load(source / "model-sma.pt", weights_only=False)["model"]
    last = torch.load(latest_checkpoint(source / "checkpoints"), weights_only=False)
    assert not torch.equal(averaged["embed_tokens.weight"], last["model"]["embed_tokens.weight"])
    # The average in a step-N.pt of its own: the file init_from reads as any checkpoint.
    torch.save(last | {"model": averaged}, tmp_path / "average-as-step.pt")
    start = {"steps": 2, "seed": 1}
    train(config(init_from=str(source / "model-sma.pt"), **start), tmp_path / "from-sma", synthetic_manifest)
    train(
        config(init_from=str(tmp_path / "average-as-step.pt"), **start),
        tmp_path / "from-step",
        synthetic_manifest,
    )
    assert [r["loss"] for r in metrics(tmp_path / "from-sma")] == [
        r["loss"] for r in metrics(tmp_path / "from-step")
    ]


def test_domain_loss_sums_match_a_loop_over_sequences():
    g = torch.Generator().manual_seed(0)
    seq_losses = torch.rand(13, generator=g, dtype=torch.float64) * 40
    domains = torch.randint(0, len(DOMAINS), (13,), generator=g)
    sums, counts = domain_loss_sums(seq_losses, domains, seq_len=10)
    for d in range(len(DOMAINS)):
        mine = [float(seq_losses[i]) for i in range(13) if int(domains[i]) == d]
        assert float(sums[d]) == pytest.approx(sum(mine)) and float(counts[d]) == 10 * len(mine)


def test_resume_refuses_without_checkpoint_or_with_another_model(tmp_path, synthetic_manifest):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(config(), tmp_path, synthetic_manifest, resume=True)
    train(config(steps=2, warmup_steps=1), tmp_path, synthetic_manifest)
    other = config(steps=4, warmup_steps=1).replace(model=ModelConfig(1, 32, 4, 8, 96))
    with pytest.raises(ValueError, match="another run's checkpoint .* they differ in model:"):
        train(other, tmp_path, synthetic_manifest, resume=True)


def test_fit_schedule_moves_the_whole_mixture_within_a_short_run(tmp_path, synthetic_manifest):
    schedule = tmp_path / "web-to-code.toml"
    schedule.write_text("[[stage]]\ntokens = 1e12\n[stage.start]\nweb = 1.0\n[stage.end]\ncode = 1.0\n")
    cfg = config(steps=6, warmup_steps=1, decay_fraction=0.0, micro_batch=8, schedule=str(schedule))
    as_written = train(cfg, tmp_path / "plain", synthetic_manifest)["domain_tokens"]
    assert set(as_written) == {"web"}  # 1,536 tokens of a 1e12-token schedule: still all web
    fitted = train(cfg.replace(fit_schedule=True), tmp_path / "fitted", synthetic_manifest)["domain_tokens"]
    # Scaled to the run, the weights go linearly from web to code: half of each, web first, code last.
    assert set(fitted) == {"web", "code"} and abs(fitted["web"] - fitted["code"]) <= 0.2 * sum(
        fitted.values()
    )
    steps = [set(r["domain_loss"]) for r in metrics(tmp_path / "fitted")]
    assert "web" in steps[0] and "code" in steps[-1]


def test_two_ranks_under_torchrun_train_like_one_process(tmp_path, synthetic_manifest, run_bounded):
    # DDP over gloo on the CPU: 2 ranks × micro-batch 2 see the same global batches as 1 rank × 4,
    # and the averaged gradients give the same updates up to the order of floating-point sums.
    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys\n"
        "from motif_data.train.config import ModelConfig, TrainConfig\n"
        "from motif_data.train.loop import train\n"
        "cfg = TrainConfig(model=ModelConfig(2, 32, 4, 8, 96), seq_len=32, micro_batch=2, grad_accum=2,\n"
        "                  steps=3, lr=1e-2, warmup_steps=1, log_every=100, ckpt_every=1, keep_checkpoints=5)\n"
        "train(cfg, sys.argv[1], sys.argv[2], resume=sys.argv[3:] == ['resume'])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
    ]
    # Bounded, ranks included: a rank that hangs at exit (as one did in gloo's teardown) must fail the test.
    result = run_bounded([*command, str(tmp_path / "ddp"), str(synthetic_manifest)], timeout=120, env=env)
    assert result.returncode == 0
    train(config(micro_batch=4, grad_accum=2, steps=3, warmup_steps=1), tmp_path / "one", synthetic_manifest)
    for a, b in zip(metrics(tmp_path / "ddp"), metrics(tmp_path / "one"), strict=True):
        assert (
            a["loss"] == pytest.approx(b["loss"], rel=1e-5)
            and a["domain_loss"].keys() == b["domain_loss"].keys()
        )
        assert a["tokens"] == b["tokens"]
    pa, pb = final_parameters(tmp_path / "ddp"), final_parameters(tmp_path / "one")
    for name in pa:
        # Adam divides by √v: where a gradient is tiny, summation-order rounding moves the update by a few
        # 1e-5 — under 1 % of one step's size (lr 1e-2).
        torch.testing.assert_close(pa[name], pb[name], rtol=1e-4, atol=1e-4)

    # Killed after its step-1 checkpoint, the two-rank run resumed under torchrun ends bitwise as it did.
    shutil.copytree(tmp_path / "ddp", tmp_path / "killed")
    for later in ("step-0000002.pt", "step-0000003.pt"):
        (tmp_path / "killed" / "checkpoints" / later).unlink()
    (tmp_path / "killed" / "summary.json").unlink()
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "killed" / "metrics.jsonl").write_text("".join(lines[:2]))  # one line past the checkpoint
    resumed = run_bounded(
        [*command, str(tmp_path / "killed"), str(synthetic_manifest), "resume"], timeout=120, env=env
    )
    assert resumed.returncode == 0
    same = ("step", "loss", "domain_loss", "lr", "grad_norm", "tokens")  # all but the timings
    assert [{k: r[k] for k in same} for r in metrics(tmp_path / "killed")] == [
        {k: r[k] for k in same} for r in metrics(tmp_path / "ddp")
    ]
    pk, pd = final_parameters(tmp_path / "killed"), final_parameters(tmp_path / "ddp")
    assert pk.keys() == pd.keys() and all(torch.equal(pk[n], pd[n]) for n in pk)


def test_resume_with_a_refitted_schedule_is_refused_with_a_hint(tmp_path, synthetic_manifest):
    train(config(steps=4, warmup_steps=1, fit_schedule=True), tmp_path, synthetic_manifest)
    with pytest.raises(ValueError, match="fit_schedule ties the mixture to train.steps"):
        train(config(steps=6, warmup_steps=1, fit_schedule=True), tmp_path, synthetic_manifest, resume=True)


def test_a_checkpoint_part_that_does_not_load_names_the_file_and_the_part(tmp_path, synthetic_manifest):
    # e.g. a checkpoint written before the parameters took Motif's names: torch's missing-keys error,
    # with the file and the registered part it failed in.
    cfg = config(steps=2, warmup_steps=1)
    train(cfg, tmp_path, synthetic_manifest)
    path = latest_checkpoint(tmp_path / "checkpoints")
    state = torch.load(path, weights_only=False)
    state["model"]["embed.weight"] = state["model"].pop("embed_tokens.weight")
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"(?s)step-0000002\.pt, model: .*embed_tokens\.weight"):
        train(cfg.replace(steps=4), tmp_path, synthetic_manifest, resume=True)
