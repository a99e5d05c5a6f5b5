"""The run's optimizer: AdamW alone, or Muon for the decoder's projection matrices with AdamW for the rest,
stepped and checkpointed as one part (torch's Muon; under FSDP2 the same update over row shards, each matrix
orthogonalised whole by one rank); and QK-clip (MuonClip), applied to the attention layers after each step.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard

# torch's own Newton–Schulz iteration and lr scaling, so that the sharded Muon computes exactly what
# torch.optim.Muon does; torch has no public path to them.
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

from motif_data.train.config import TrainConfig
from motif_data.train.model import Motif

__all__ = ["Optimizers", "QKClip", "ShardedMuon", "build_optimizer"]


class Optimizers:
    """Named optimizers over disjoint parameters, seen by the loop and the checkpointer as one: ``param_groups``
    is the union of theirs, each group tagged with its ``peak_lr`` (the schedule scales every group by its own)."""

    def __init__(self, **optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(
                f"it holds the state of {sorted(state)} but this run steps {sorted(self.optimizers)}: resume with "
                "the train.optimizer the run was started with"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def _adamw_groups(params: list[nn.Parameter], weight_decay: float, peak_lr: float) -> list[dict]:
    # Matrices (the tied embedding, and the projections when AdamW has them) decay; norms, PolyNorm
    # coefficients and λ vectors don't.
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "peak_lr": peak_lr},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "peak_lr": peak_lr},
    ]


def build_optimizer(model: Motif, cfg: TrainConfig, *, fused: bool) -> Optimizers:
    """``cfg.optimizer``'s optimizers over a Motif's parameters. Muon takes the weights of the linear layers
    inside the decoder blocks (q/k/v/o, gate/up/down: the hidden matrices it is made for); the embedding, which
    is also the output head, and every vector stay with AdamW. ``fused``: AdamW's fused CUDA kernel."""
    adamw = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "fused": fused}
    if cfg.optimizer == "adamw":
        params = list(model.parameters())
        return Optimizers(adamw=torch.optim.AdamW(_adamw_groups(params, cfg.weight_decay, cfg.lr), **adamw))
    hidden = [m.weight for m in model.layers.modules() if isinstance(m, nn.Linear)]
    taken = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if id(p) not in taken]
    # Under FSDP2 the matrices are DTensors of row shards, which torch's Muon would orthogonalise shard by shard.
    muon_class = ShardedMuon if isinstance(hidden[0], DTensor) else torch.optim.Muon
    muon = muon_class(
        [{"params": hidden, "peak_lr": cfg.muon_peak_lr}],
        lr=cfg.muon_peak_lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.muon_momentum,
        nesterov=True,
        adjust_lr_fn="match_rms_adamw",
    )
    return Optimizers(
        muon=muon, adamw=torch.optim.AdamW(_adamw_groups(rest, cfg.weight_decay, cfg.lr), **adamw)
    )


class ShardedMuon(torch.optim.Muon):
    """torch's Muon over FSDP2's parameters, DTensors whose rows are sharded over the ranks (``Shard(0)`` on a
    one-dimensional mesh). Momentum and the Nesterov blend are elementwise: each rank does them on its rows.
    Newton–Schulz needs the whole matrix, so every matrix is given to one rank, round-robin, as Motif's Parallel
    Muon spreads them: one all-to-all sends each rank's rows of every matrix to its owner, each owner
    orthogonalises its matrices whole with torch's iteration, and a second all-to-all hands every rank its rows
    back. A rank thus runs 1/N of the iterations, and each collective moves about a bf16 copy of its shards
    (Newton–Schulz starts by casting to bf16, so nothing is lost). The update equals ``torch.optim.Muon``'s on
    the whole matrices."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            if not params:
                continue
            momentum = group["momentum"]
            updates = []
            for grad, buffer in zip(grads, buffers, strict=True):
                grad, buffer = grad.to_local(), buffer.to_local()
                buffer.lerp_(grad, 1 - momentum)
                updates.append(grad.lerp(buffer, momentum) if group["nesterov"] else buffer)
            orthogonalize = functools.partial(
                _zeropower_via_newtonschulz,
                ns_coefficients=group["ns_coefficients"],
                ns_steps=group["ns_steps"],
                eps=group["eps"],
            )
            orthogonal = _orthogonalize_by_owner(params, updates, orthogonalize)
            lr = group["lr"]
            for param, update in zip(params, orthogonal, strict=True):
                local = param.to_local()
                local.mul_(1 - lr * group["weight_decay"])
                local.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss


def _row_shards(param: DTensor) -> list[int]:
    """How many rows of ``param`` each rank holds: DTensor's ``Shard(0)``, i.e. ``torch.chunk`` (⌈rows / N⌉ a
    rank, the last ones fewer or none)."""
    if param.device_mesh.ndim != 1 or tuple(param.placements) != (Shard(0),):
        raise ValueError(
            f"ShardedMuon takes FSDP2's row shards (placements (Shard(0),) on a 1-D mesh), not "
            f"{tuple(param.placements)} on a {param.device_mesh.ndim}-D mesh"
        )
    rows, world = param.shape[0], param.device_mesh.size()
    each = -(-rows // world)
    return [max(0, min(each, rows - r * each)) for r in range(world)]


def _orthogonalize_by_owner(
    params: list[DTensor], updates: list[torch.Tensor], orthogonalize
) -> list[torch.Tensor]:
    """``orthogonalize`` of each whole matrix of which ``updates`` holds this rank's rows, returned as this rank's
    rows: matrix i is gathered on rank i mod N, orthogonalised there and scattered back, by two all-to-alls."""
    mesh = params[0].device_mesh
    group, world, rank = mesh.get_group(), mesh.size(), mesh.get_local_rank()
    shards = [_row_shards(p) for p in params]
    cols = [p.shape[1] for p in params]
    for i, update in enumerate(updates):
        if tuple(update.shape) != (shards[i][rank], cols[i]):
            raise RuntimeError(
                f"rank {rank} holds {tuple(update.shape)} of a {tuple(params[i].shape)} matrix, not the "
                f"({shards[i][rank]}, {cols[i]}) of Shard(0)"
            )
    owned = [range(owner, len(params), world) for owner in range(world)]
    device = updates[0].device

    def exchange(blocks: list[list[torch.Tensor]], sizes_in: list[int]) -> torch.Tensor:
        # The tensors of blocks[k] go to rank k, in order; sizes_in[k] elements come from rank k.
        flat = [t.flatten().bfloat16() for block in blocks for t in block]
        send = torch.cat(flat) if flat else torch.empty(0, dtype=torch.bfloat16, device=device)
        received = torch.empty(sum(sizes_in), dtype=torch.bfloat16, device=device)
        sizes_out = [sum(t.numel() for t in block) for block in blocks]
        dist.all_to_all_single(received, send, sizes_in, sizes_out, group=group)
        return received

    # Out: to each owner, this rank's rows of the matrices it owns; in: from each rank, its rows of mine.
    to_owners = [sum(shards[i][rank] * cols[i] for i in owned[owner]) for owner in range(world)]
    from_ranks = [sum(shards[i][src] * cols[i] for i in owned[rank]) for src in range(world)]
    received = exchange([[updates[i] for i in owned[owner]] for owner in range(world)], from_ranks)
    pieces = [
        block.split([shards[i][src] * cols[i] for i in owned[rank]])
        for src, block in enumerate(received.split(from_ranks))
    ]
    done = []
    for k, i in enumerate(owned[rank]):
        whole = torch.cat([pieces[src][k].view(shards[i][src], cols[i]) for src in range(world)])
        done.append(orthogonalize(whole).split(shards[i]))
    # Back: to each rank, its rows of my matrices; from each owner, my rows of its matrices.
    returned = exchange([[rows[dst] for rows in done] for dst in range(world)], to_owners)
    mine: dict[int, torch.Tensor] = {}
    for owner, block in enumerate(returned.split(to_owners)):
        for i, rows in zip(
            owned[owner], block.split([shards[i][rank] * cols[i] for i in owned[owner]]), strict=True
        ):
            mine[i] = rows.view(shards[i][rank], cols[i])
    return [mine[i] for i in range(len(params))]


class QKClip:
    """QK-clip after each optimizer step: every attention layer that supports it (``clip_qk_``) tracks its query
    maps' largest logits through the step's forwards; then each map over ``tau`` has its q/k rows scaled back.
    Under DDP the maxima are all-reduced (one collective for all layers) so that every rank clips alike."""

    def __init__(self, model: nn.Module, tau: float, world_size: int) -> None:
        self.layers = [m for m in model.modules() if hasattr(m, "clip_qk_")]
        if not self.layers:
            raise ValueError(
                f"train.muon_clip_tau is {tau} but no attention layer of this model reports its logits for "
                'QK-clip (model.attention = "standard" does not): set train.muon_clip_tau = 0'
            )
        self.tau, self.world_size = tau, world_size
        for layer in self.layers:
            layer.track_max_logits = True

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip; returns the step's largest logit (over every map and rank, before clipping) and the number of
        maps clipped, as 0-dim tensors on the model's device: read by the logger, they cost no host sync here."""
        per_layer = [layer.max_logits for layer in self.layers]
        maxima = torch.cat(per_layer)
        if self.world_size > 1:
            dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
        for layer, mine in zip(self.layers, maxima.split([len(m) for m in per_layer]), strict=True):
            layer.clip_qk_(mine, self.tau)
            layer.reset_max_logits()
        # Counted here, as clip_qk_ defines it (maps over τ), rather than summed from its Python ints.
        return maxima.max(), (maxima > self.tau).sum()
