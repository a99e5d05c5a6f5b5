"""The run's optimizer: AdamW alone, or Muon for the decoder's projection matrices with AdamW for the rest,
stepped and checkpointed as one part; and QK-clip (MuonClip), applied to the attention layers after each step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from motif_data.train.config import TrainConfig
from motif_data.train.model import Motif

__all__ = ["Optimizers", "QKClip", "build_optimizer"]


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
    muon = torch.optim.Muon(
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
