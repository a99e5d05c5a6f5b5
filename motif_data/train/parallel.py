"""How the model is spread over the ranks of a ``torchrun`` launch — DDP replicas, or FSDP2 shards per decoder
block — and what differs between the two (gradient sync, the gradient norm, whole weights, sharded state), so
that the loop has one path through a step.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from motif_data.train.model import Motif
from motif_data.train.optim import Optimizers

__all__ = [
    "ShardedTraining",
    "distribute",
    "gradient_sync",
    "clip_grad_norm",
    "load_whole_weights",
    "join_alone",
]


def distribute(
    raw_model: Motif,
    parallel: str,
    world_size: int,
    device: torch.device,
    *,
    bf16: bool,
    compile: bool,
    cpu_offload: bool,
) -> nn.Module:
    """The module the loop calls. "ddp": ``raw_model``, compiled where asked, wrapped in DDP on more than one
    rank. "fsdp": ``raw_model`` sharded in place by FSDP2 — each decoder layer one unit (gathered for its forward
    and backward, freed after), the embedding (the tied head) and the final norm the root's — then compiled
    where asked; on any number of ranks, one included, so that its checkpoints are always sharded ones. With
    bf16 the gathered parameters are bf16 and gradients are reduced in fp32; else all stays fp32. ``cpu_offload``
    (FSDP): the shards, their gradients and so the optimizer's states stay in host memory."""
    if parallel == "ddp":
        model = torch.compile(raw_model) if compile else raw_model
        if world_size == 1:
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    policy = MixedPrecisionPolicy(torch.bfloat16, torch.float32) if bf16 else MixedPrecisionPolicy()
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy()
    for layer in raw_model.layers:
        fully_shard(layer, mp_policy=policy, offload_policy=offload)
    fully_shard(raw_model, mp_policy=policy, offload_policy=offload)
    # The root returns the losses as a view (view_as); the loop reads them out of place only, so the view cannot
    # drop FSDP's pre-backward hook as the warning fears.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPMotif\) returned a view tensor")
    return torch.compile(raw_model) if compile else raw_model


def gradient_sync(model: nn.Module, raw_model: nn.Module, sync: bool):
    """A context for one micro-batch's forward and backward: gradients are reduced over the ranks only where
    ``sync`` (the step's last micro-batch), accumulated locally before. FSDP2 takes a flag (kept unsharded
    until the reduce-scatter), DDP a ``no_sync`` context; one rank without either has nothing to reduce."""
    if isinstance(raw_model, FSDPModule):
        raw_model.set_requires_gradient_sync(sync)
    elif isinstance(model, DistributedDataParallel) and not sync:
        return model.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over the model's gradients, returning the norm as a plain tensor: under FSDP the
    gradients are shards (DTensors) whose norm torch reduces over the ranks, and the logger reads a whole one."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def load_whole_weights(raw_model: nn.Module, state: dict) -> None:
    """Load a whole (unsharded) model state, e.g. ``train.init_from``'s: every rank has all of it and, under
    FSDP, keeps its shards."""
    if isinstance(raw_model, FSDPModule):
        set_model_state_dict(raw_model, state, options=StateDictOptions(full_state_dict=True))
    else:
        raw_model.load_state_dict(state)


class ShardedTraining:
    """The model's and the optimizers' state of an FSDP run as one checkpoint part of DTensor shards, keyed by
    parameter name (torch's ``get_state_dict``), which ``torch.distributed.checkpoint`` saves per rank and loads
    at another world size (each rank reading the slices of its new shards)."""

    def __init__(self, model: nn.Module, optimizer: Optimizers) -> None:
        self.model, self.optimizers = model, list(optimizer.optimizers.values())

    def state_dict(self) -> dict:
        # get_state_dict creates an optimizer's lazily made state (exp_avg …) first, so that a fresh run's state
        # is a complete template for dcp.load to fill.
        model, optimizer = get_state_dict(self.model, self.optimizers)
        return {"model": model, "optimizer": optimizer}

    def load_state_dict(self, state: dict) -> None:
        set_state_dict(self.model, self.optimizers, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])  # fmt: skip


def join_alone(device: torch.device) -> None:
    """A process group of one rank, for an FSDP run started without torchrun: its in-memory store needs no
    address or port."""
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1
    )
