"""One Muon step over a preset's decoder matrices: ShardedMuon on N ranks' row shards (what parallel = "fsdp"
steps) against torch.optim.Muon on the whole matrices on every rank (what each DDP replica steps; the anchor),
both measured in this run, on the same matrices and gradients.

    python benchmarks/bench_muon.py --preset tiny                                     # CPU, one rank
    torchrun --nproc_per_node=8 benchmarks/bench_muon.py --preset motif-2.6b          # GPUs

Under DDP every rank runs Newton–Schulz on every matrix; ShardedMuon gives each matrix to one owner, so a rank
runs 1/N of the iterations and pays two all-to-alls of about its shards in bf16. On one rank the two do the
same work, and the difference is ShardedMuon's overhead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from motif_data.train.config import MODEL_PRESETS
from motif_data.train.model import Motif
from motif_data.train.optim import ShardedMuon
from motif_data.train.parallel import join_alone

MUON = {
    "lr": 1e-3,
    "weight_decay": 0.1,
    "momentum": 0.95,
    "nesterov": True,
    "adjust_lr_fn": "match_rms_adamw",
}


def matrix_shapes(preset: str, layers: int | None) -> list[tuple[int, int]]:
    """The shapes of the decoder's linear weights (Muon's matrices), read off the model built on the meta device."""
    cfg = MODEL_PRESETS[preset]
    if layers is not None:
        cfg = dataclasses.replace(cfg, n_layers=layers)
    cfg = dataclasses.replace(cfg, vocab_size=cfg.vocab_size or 219_520)  # the embedding is not Muon's anyway
    with torch.device("meta"):
        model = Motif(cfg, reference_kernels=True)
    return [tuple(m.weight.shape) for m in model.layers.modules() if isinstance(m, nn.Linear)]


def timed(step, steps: int, device: torch.device) -> float:
    """Median ms of ``step`` over ``steps`` calls after two warm-up calls, ranks in step (the slowest counts)."""
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = torch.tensor(time.perf_counter() - start, device=device)  # NCCL reduces device tensors only
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        times.append(elapsed.item())
    return statistics.median(times) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(MODEL_PRESETS))
    parser.add_argument("--layers", type=int, default=None, help="fewer decoder layers than the preset's")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if "RANK" in os.environ:  # under torchrun
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    else:
        join_alone(device)
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(device.type, (world,))
    shapes = matrix_shapes(args.preset, args.layers)
    g = torch.Generator(device=device).manual_seed(0)
    weights = [torch.randn(s, device=device, generator=g) * 0.02 for s in shapes]
    grads = [torch.randn(s, device=device, generator=g) for s in shapes]

    whole = [nn.Parameter(w.clone()) for w in weights]
    for p, grad in zip(whole, grads, strict=True):
        p.grad = grad
    anchor = torch.optim.Muon(whole, **MUON)
    anchor_ms = timed(anchor.step, args.steps, device)

    sharded = [nn.Parameter(distribute_tensor(w, mesh, [Shard(0)])) for w in weights]
    for p, grad in zip(sharded, grads, strict=True):
        p.grad = distribute_tensor(grad, mesh, [Shard(0)])
    ours = ShardedMuon(sharded, **MUON)
    ours_ms = timed(ours.step, args.steps, device)

    # One step more of each from the same state: the sharded result, gathered, against the whole one.
    anchor.step()
    ours.step()
    diff = max((a.detach() - s.full_tensor()).abs().max().item() for a, s in zip(whole, sharded, strict=True))
    if rank == 0:
        name = torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)"
        params = sum(a * b for a, b in shapes)
        print(f"device: {world} × {name}; torch {torch.__version__}; python {platform.python_version()}")
        print(
            f"{args.preset}: {len(shapes)} matrices, {params / 1e6:,.1f} M parameters; median of {args.steps} steps"
        )
        print(f"{'torch.optim.Muon, whole matrices on every rank (anchor)':58s} {anchor_ms:9.1f} ms")
        print(f"{'ShardedMuon, row shards, one owner per matrix':58s} {ours_ms:9.1f} ms  "
              f"({anchor_ms / ours_ms:.2f}× the anchor)")  # fmt: skip
        print(f"largest difference after {args.steps + 3} steps: {diff:.1e}")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
