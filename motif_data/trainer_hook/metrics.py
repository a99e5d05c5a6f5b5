"""Per-domain counters of training tokens, sequences and loss, summable across ranks and checkpointable."""

from __future__ import annotations

import torch

from motif_data import DOMAINS

__all__ = ["DomainCounters"]


class DomainCounters:
    """Accumulates, per domain of DOMAINS (``BUCKETS``: the names of the counters' slots), sequences, tokens and
    the sum of per-token losses."""

    BUCKETS: tuple[str, ...] = DOMAINS

    def __init__(self):
        self.sequences = torch.zeros(len(self.BUCKETS), dtype=torch.float64)
        self.tokens = torch.zeros(len(self.BUCKETS), dtype=torch.float64)
        self.loss_sum = torch.zeros(len(self.BUCKETS), dtype=torch.float64)

    def update(
        self, domain: torch.Tensor, tokens: torch.Tensor, loss_sum: torch.Tensor | None = None
    ) -> None:
        """``domain``: (batch,) indices; ``tokens``: (batch,) trained tokens per sequence;
        ``loss_sum``: (batch,) sum of the per-token losses of each sequence (detached is fine)."""
        d = domain.detach().to("cpu", torch.int64).reshape(-1)
        self.sequences.index_add_(0, d, torch.ones(len(d), dtype=torch.float64))
        self.tokens.index_add_(0, d, tokens.detach().to("cpu", torch.float64).reshape(-1))
        if loss_sum is not None:
            self.loss_sum.index_add_(0, d, loss_sum.detach().to("cpu", torch.float64).reshape(-1))

    def all_reduce(self) -> None:
        """Sum the counters over ranks (no-op without an initialized process group)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            packed = torch.stack([self.sequences, self.tokens, self.loss_sum])
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            packed = packed.to(device)
            dist.all_reduce(packed)
            self.sequences, self.tokens, self.loss_sum = packed.cpu().unbind(0)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per domain with data: sequences, tokens, mean per-token loss (nan if no loss was given)."""
        out = {}
        for i, d in enumerate(self.BUCKETS):
            if self.sequences[i] > 0:
                t = float(self.tokens[i])
                out[d] = {
                    "sequences": float(self.sequences[i]),
                    "tokens": t,
                    "loss": float(self.loss_sum[i]) / t if t and self.loss_sum[i] else float("nan"),
                }
        return out

    def state_dict(self) -> dict:
        return {
            "sequences": self.sequences.clone(),
            "tokens": self.tokens.clone(),
            "loss_sum": self.loss_sum.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.sequences, self.tokens, self.loss_sum = (
            state[k].clone() for k in ("sequences", "tokens", "loss_sum")
        )
