"""FSDP2 on the CPU (gloo, fp32: no mixed precision there): sharded over 2 and 4 ranks under torchrun, a run
computes what one process computes, and its sharded checkpoints resume at another world size with the same
global batch; what FSDP does not support yet is refused when the config loads."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from motif_data.train.checkpoint import Checkpointer, latest_checkpoint
from motif_data.train.config import ModelConfig, TrainConfig
from motif_data.train.loop import train
from motif_data.train.model import Motif
from motif_data.train.optim import build_optimizer
from motif_data.train.parallel import ShardedTraining, distribute, join_alone
from motif_data.typed import ConfigError

MODEL = ModelConfig(n_layers=2, d_model=32, n_heads=4, head_dim=8, ffn_dim=96)
SEQUENCES_PER_STEP = 8  # micro_batch × grad_accum (2) × world size: the same global batch on 1, 2 or 4 ranks


def config(world_size: int, **changes) -> TrainConfig:
    base = TrainConfig(model=MODEL, seq_len=32, micro_batch=SEQUENCES_PER_STEP // (2 * world_size), grad_accum=2,
                       steps=4, lr=1e-2, warmup_steps=1, log_every=100, ckpt_every=1, keep_checkpoints=5)  # fmt: skip
    return base.replace(**changes)


def launch(
    run_bounded, out: Path, manifest: Path, world_size: int, *, resume: bool = False, **changes
) -> None:
    """The FSDP run of `config` (with ``changes``) under torchrun on ``world_size`` CPU ranks."""
    script = out.parent / f"{out.name}.py"
    script.write_text(
        "import sys\n"
        "from tests.train.test_fsdp import config\n"
        "from motif_data.train.loop import train\n"
        f"train(config({world_size}, parallel='fsdp', **{changes!r}), sys.argv[1], sys.argv[2], resume={resume})\n"
    )
    torchrun(run_bounded, script, world_size, str(out), str(manifest))


def torchrun(run_bounded, script: Path, world_size: int, *args: str) -> None:
    """``script`` under torchrun on ``world_size`` CPU ranks, bounded (a rank that hangs, in gloo's teardown
    say, fails the test)."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={world_size}",
    ]
    assert run_bounded([*command, str(script), *args], timeout=180, env=env).returncode == 0


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def parameters(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model of a ``step-N.pt``, whole: of an FSDP run, its shards in ``step-N/`` joined by torch's DCP
    converter (no process group), an implementation apart from the loop's loading."""
    state = torch.load(checkpoint, weights_only=False)
    if "sharded" not in state:
        return state["model"]
    whole = checkpoint.with_suffix(".whole.pt")
    dcp_to_torch_save(checkpoint.with_suffix(""), whole)
    return torch.load(whole, weights_only=False)["training"]["model"]


def assert_same_training(sharded: Path, reference: Path, *, muon: bool = False) -> None:
    """Per step the same tokens and domains and the loss within fp32 rounding; the final parameters too."""
    for a, b in zip(metrics(sharded), metrics(reference), strict=True):
        assert a["tokens"] == b["tokens"] and a["domain_loss"].keys() == b["domain_loss"].keys()
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    pa = parameters(latest_checkpoint(sharded / "checkpoints"))
    pb = parameters(latest_checkpoint(reference / "checkpoints"))
    assert pa.keys() == pb.keys()
    for name in pa:
        if muon:
            # Newton–Schulz runs in bf16 and amplifies where another summation order rounded a gradient
            # element to the neighbouring bf16 value: DDP on 2 ranks moves Muon's matrices as far from one
            # process (measured: up to 9.9e-3 of the matrix's norm). Orthogonalising each rank's shard alone,
            # the error this guards against, moves every matrix by 0.14 of its norm or more.
            assert (pa[name] - pb[name]).norm() <= 3e-2 * pb[name].norm(), name
        else:
            # Adam divides by √v: where a gradient is tiny, the rounding of another summation order (the
            # ranks' reduce-scatter) moves the update by a few 1e-5, under 1 % of one step's size (lr 1e-2).
            torch.testing.assert_close(pa[name], pb[name], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, synthetic_manifest) -> Path:
    """The independent reference: the plain single-process run (no process group, no sharding)."""
    out = tmp_path_factory.mktemp("one-process") / "run"
    train(config(1), out, synthetic_manifest)
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, synthetic_manifest, run_bounded) -> Path:
    out = tmp_path_factory.mktemp("fsdp-2") / "run"
    launch(run_bounded, out, synthetic_manifest, 2)
    return out


def test_fsdp_on_two_ranks_computes_what_one_process_computes(two_ranks, one_process):
    assert sorted(p.name for p in (two_ranks / "checkpoints").iterdir()) == [
        f"step-{s:07d}{suffix}" for s in range(1, 5) for suffix in ("", ".pt")
    ]
    assert_same_training(two_ranks, one_process)


def test_fsdp_on_four_ranks_computes_what_one_process_computes(tmp_path, synthetic_manifest, run_bounded,
                                                               one_process):  # fmt: skip
    launch(run_bounded, tmp_path / "run", synthetic_manifest, 4)
    assert_same_training(tmp_path / "run", one_process)


def killed_after_step_2(run: Path, into: Path) -> Path:
    """A copy of ``run`` as a kill after its step-2 checkpoint leaves it: a metrics line past it, no later
    checkpoint, no summary."""
    shutil.copytree(run, into)
    for later in (3, 4):
        (into / "checkpoints" / f"step-{later:07d}.pt").unlink()
        shutil.rmtree(into / "checkpoints" / f"step-{later:07d}")
    (into / "summary.json").unlink()
    lines = (into / "metrics.jsonl").read_text().splitlines(keepends=True)
    (into / "metrics.jsonl").write_text("".join(lines[:3]))
    return into


def test_a_two_rank_checkpoint_resumes_on_one_rank_with_the_same_global_batch(tmp_path, synthetic_manifest,
                                                                             two_ranks):  # fmt: skip
    killed = killed_after_step_2(two_ranks, tmp_path / "killed")
    train(config(1, parallel="fsdp"), killed, synthetic_manifest, resume=True)
    straight, resumed = metrics(two_ranks), metrics(killed)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert resumed[:2] == straight[:2]  # the lines of the steps before the checkpoint, kept
    # Steps 3 and 4 on one rank: the same sequences (the loader resumed at the global position) from the
    # same state, the gradients summed in another order than the two ranks' reduce-scatter; hence fp32
    # tolerance, not bitwise, for what follows the resume (the restored state itself is bitwise, next test).
    assert_same_training(killed, two_ranks)


def test_a_two_rank_sharded_checkpoint_loads_bitwise_on_one_rank(two_ranks):
    # What the one-rank resume starts from is the two ranks' state, exactly: the Checkpointer loads step 4's
    # shards into a one-rank FSDP model and AdamW, and every weight and moment equals, bitwise, what torch's
    # DCP converter joins from the files.
    path = latest_checkpoint(two_ranks / "checkpoints")
    spec = torch.load(path, weights_only=False)["run_spec"]
    join_alone(torch.device("cpu"))
    try:
        model = Motif(ModelConfig(**spec["model"]), reference_kernels=True)
        distribute(model, "fsdp", 1, torch.device("cpu"), bf16=False, compile=False, cpu_offload=False)
        optimizer = build_optimizer(model, config(1, parallel="fsdp"), fused=False)
        checkpointer = Checkpointer(path.parent, spec, every=None, keep=None, write=False)
        checkpointer.register_sharded(training=ShardedTraining(model, optimizer))
        assert checkpointer.load_latest() == 4
        whole = StateDictOptions(full_state_dict=True)
        loaded_model, loaded_optimizer = get_state_dict(model, optimizer.optimizers["adamw"], options=whole)
    finally:
        dist.destroy_process_group()
    dcp_to_torch_save(path.with_suffix(""), path.with_suffix(".whole.pt"))
    saved = torch.load(path.with_suffix(".whole.pt"), weights_only=False)["training"]
    assert loaded_model.keys() == saved["model"].keys()
    assert all(torch.equal(loaded_model[n], saved["model"][n]) for n in loaded_model)
    moments = [
        (n, k) for n, s in saved["optimizer"]["state"].items() for k in ("step", "exp_avg", "exp_avg_sq")
    ]
    assert len(moments) == 3 * len(loaded_model)
    assert all(
        torch.equal(loaded_optimizer["state"][n][k], saved["optimizer"]["state"][n][k]) for n, k in moments
    )


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"sma_every": 2}, "train.sma_every"),
        ({"activation_checkpointing": "selective"}, "train.activation_checkpointing"),
        ({"optimizer": "muon", "fsdp_cpu_offload": True}, "train.fsdp_cpu_offload"),
        ({"muon_clip_tau": 50.0, "fsdp_cpu_offload": True}, "train.fsdp_cpu_offload"),
    ],
)
def test_what_fsdp_does_not_support_yet_is_refused_naming_the_key_and_the_fix(changes, key):
    with pytest.raises(ConfigError, match=rf'{key}: .*not supported yet.*or set parallel = "ddp"'):
        TrainConfig.from_dict({"model": {"preset": "tiny"}, "train": {"parallel": "fsdp", **changes}})


def test_cpu_offload_applies_to_fsdp_only():
    with pytest.raises(ConfigError, match=r'train\.fsdp_cpu_offload: applies to parallel = "fsdp" only'):
        TrainConfig.from_dict({"model": {"preset": "tiny"}, "train": {"fsdp_cpu_offload": True}})


def test_an_unknown_parallel_setting_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.parallel: .*ddp.*fsdp"):
        TrainConfig.from_dict({"model": {"preset": "tiny"}, "train": {"parallel": "tp"}})


def test_a_ddp_checkpoint_is_not_resumed_as_an_fsdp_run(tmp_path, synthetic_manifest):
    train(config(1, steps=2), tmp_path, synthetic_manifest)
    with pytest.raises(ValueError, match=r"another run's checkpoint .* they differ in .*train\.parallel"):
        train(config(1, steps=4, parallel="fsdp"), tmp_path, synthetic_manifest, resume=True)
    assert not dist.is_initialized()  # the refused run left the process group it formed alone


def test_init_from_gives_a_sharded_run_the_whole_weights_and_reads_sharded_ones(tmp_path, synthetic_manifest):
    train(config(1, steps=2), tmp_path / "source", synthetic_manifest)
    start = {"init_from": str(tmp_path / "source"), "steps": 2, "seed": 1}  # another seed: another init
    train(config(1, parallel="fsdp", **start), tmp_path / "sharded", synthetic_manifest)
    train(config(1, **start), tmp_path / "whole", synthetic_manifest)
    # Step 1's loss is computed with the weights the run starts from.
    assert metrics(tmp_path / "sharded")[0]["loss"] == pytest.approx(
        metrics(tmp_path / "whole")[0]["loss"], rel=1e-6
    )
    # The sharded checkpoint's model, joined by torch's DCP converter, in a whole step-N.pt: a run started
    # from the shards themselves computes bitwise what a run started from that file computes.
    shards = latest_checkpoint(tmp_path / "sharded" / "checkpoints")
    whole = torch.load(latest_checkpoint(tmp_path / "whole" / "checkpoints"), weights_only=False)
    torch.save(whole | {"model": parameters(shards)}, tmp_path / "joined.pt")
    again = {"steps": 2, "seed": 2}
    train(config(1, init_from=str(shards), **again), tmp_path / "from-shards", synthetic_manifest)
    train(
        config(1, init_from=str(tmp_path / "joined.pt"), **again),
        tmp_path / "from-joined",
        synthetic_manifest,
    )
    assert [r["loss"] for r in metrics(tmp_path / "from-shards")] == [
        r["loss"] for r in metrics(tmp_path / "from-joined")
    ]


def test_offloading_the_shards_to_the_host_changes_nothing_computed(tmp_path, synthetic_manifest):
    # On the CPU the host is the device, so this checks that FSDP2's offload path (its copies, AdamW stepping
    # the host shards) computes bitwise what the resident shards do, not what it saves on a GPU.
    train(config(1, parallel="fsdp", steps=3), tmp_path / "resident", synthetic_manifest)
    train(
        config(1, parallel="fsdp", steps=3, fsdp_cpu_offload=True), tmp_path / "offloaded", synthetic_manifest
    )
    assert [r["loss"] for r in metrics(tmp_path / "offloaded")] == [
        r["loss"] for r in metrics(tmp_path / "resident")
    ]
    pa = parameters(latest_checkpoint(tmp_path / "offloaded" / "checkpoints"))
    pb = parameters(latest_checkpoint(tmp_path / "resident" / "checkpoints"))
    assert pa.keys() == pb.keys() and all(torch.equal(pa[n], pb[n]) for n in pa)


def test_block_activation_checkpointing_under_fsdp_computes_what_one_process_computes(tmp_path, synthetic_manifest,
                                                                                      one_process):  # fmt: skip
    # Each layer recomputed in the backward is gathered again by FSDP for it.
    train(config(1, parallel="fsdp", activation_checkpointing="block"), tmp_path / "run", synthetic_manifest)
    assert_same_training(tmp_path / "run", one_process)


MUON = {
    "lr": 0.02,
    "weight_decay": 0.1,
    "momentum": 0.95,
    "nesterov": True,
    "adjust_lr_fn": "match_rms_adamw",
}
# Rows that 3 ranks do not divide (7 → 3, 3, 1), a matrix with fewer rows than ranks (2 → 1, 1, 0), one taller
# and one wider than square, and 5 matrices for 3 owners.
SHAPES = [(7, 5), (32, 16), (5, 9), (2, 6), (12, 12)]


def muon_problem(steps: int = 3) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Weights and ``steps`` steps of gradients for SHAPES, the same in every process."""
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(shape, generator=g) for shape in SHAPES]
    return weights, [[torch.randn(shape, generator=g) for shape in SHAPES] for _ in range(steps)]


SHARDED_MUON = """\
import sys
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from motif_data.train.optim import ShardedMuon
from tests.train.test_fsdp import MUON, muon_problem

dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
weights, steps = muon_problem()
params = [torch.nn.Parameter(distribute_tensor(w, mesh, [Shard(0)])) for w in weights]
optimizer = ShardedMuon(params, **MUON)
for grads in steps:
    for param, grad in zip(params, grads):
        param.grad = distribute_tensor(grad, mesh, [Shard(0)])
    optimizer.step()
whole = [p.full_tensor() for p in params]
if dist.get_rank() == 0:
    torch.save(whole, sys.argv[1])
dist.destroy_process_group()
"""


def test_sharded_muon_on_three_ranks_steps_what_torch_muon_steps_on_whole_matrices(tmp_path, run_bounded):
    # The independent reference: torch.optim.Muon on the whole matrices in this process. The sharded one
    # orthogonalises the same whole matrices (gathered on their owners), so the result is bitwise the same.
    script = tmp_path / "sharded_muon.py"
    script.write_text(SHARDED_MUON)
    torchrun(run_bounded, script, 3, str(tmp_path / "sharded.pt"))
    weights, steps = muon_problem()
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    optimizer = torch.optim.Muon(params, **MUON)
    for grads in steps:
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        optimizer.step()
    sharded = torch.load(tmp_path / "sharded.pt")
    assert [tuple(t.shape) for t in sharded] == SHAPES
    for got, want, start in zip(sharded, params, weights, strict=True):
        assert not torch.equal(want, start)
        assert torch.equal(got, want.detach())


MUON_CLIP = {
    "optimizer": "muon",
    "muon_clip_tau": 0.03,
}  # this tiny model's logits reach ~0.06: clipped each step


@pytest.fixture(scope="module")
def one_process_muon(tmp_path_factory, synthetic_manifest) -> Path:
    out = tmp_path_factory.mktemp("one-process-muon") / "run"
    train(config(1, **MUON_CLIP), out, synthetic_manifest)
    return out


def test_muon_with_qk_clip_under_fsdp_on_one_rank_is_bitwise_the_plain_run(tmp_path, synthetic_manifest,
                                                                          one_process_muon):  # fmt: skip
    # One rank: the same gradients, so ShardedMuon and the clip of DTensor rows must give the plain run's
    # torch.optim.Muon and clip exactly.
    train(config(1, parallel="fsdp", **MUON_CLIP), tmp_path / "fsdp", synthetic_manifest)
    assert all(r["qk_clipped"] > 0 for r in metrics(one_process_muon))
    timings = ("step_time_s", "tokens_per_s")
    untimed = [
        [{k: v for k, v in r.items() if k not in timings} for r in metrics(run)]
        for run in (tmp_path / "fsdp", one_process_muon)
    ]
    assert untimed[0] == untimed[1]
    pa = parameters(latest_checkpoint(tmp_path / "fsdp" / "checkpoints"))
    pb = parameters(latest_checkpoint(one_process_muon / "checkpoints"))
    assert pa.keys() == pb.keys() and all(torch.equal(pa[n], pb[n]) for n in pa)


def test_muon_with_qk_clip_under_fsdp_on_two_ranks_computes_what_one_process_computes_and_resumes_on_one(
    tmp_path, synthetic_manifest, run_bounded, one_process_muon
):
    launch(run_bounded, tmp_path / "fsdp", synthetic_manifest, 2, **MUON_CLIP)
    assert_same_training(tmp_path / "fsdp", one_process_muon, muon=True)
    # Its sharded checkpoint (Muon's momenta as DTensors) resumes on one rank.
    killed = killed_after_step_2(tmp_path / "fsdp", tmp_path / "killed")
    train(config(1, parallel="fsdp", **MUON_CLIP), killed, synthetic_manifest, resume=True)
    assert metrics(killed)[:2] == metrics(tmp_path / "fsdp")[:2]
    assert_same_training(killed, tmp_path / "fsdp", muon=True)
