"""Checkpoint averaging as in Motif-2.6B: a simple moving average (SMA) of the parameters of the last k
checkpoints, one taken every N tokens (6 and 8B in the report). The optimizer state is not touched.
"""

from __future__ import annotations

from collections import deque

import torch

__all__ = ["average_state_dicts", "CheckpointAverager"]


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean (in float32, cast back) of parameter dicts with identical keys and shapes."""
    if not states:
        raise ValueError("nothing to average: no checkpoint taken yet")
    keys = set(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != keys:
            raise ValueError(f"checkpoint {i} has different parameters: {sorted(keys ^ set(s))[:5]}")
    out = {}
    for k, ref in states[0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float32)
        for s in states:
            acc += s[k].to(torch.float32)
        out[k] = (acc / len(states)).to(ref.dtype)
    return out


class CheckpointAverager:
    """Keeps CPU copies of the last ``k`` snapshots, taken each time ``every_tokens`` more tokens are done.

    ``update(model, tokens)`` after each optimizer step; ``apply(model)`` writes the average into the
    model's parameters in place (same tensors, so the optimizer and its state stay as they are).
    """

    def __init__(self, k: int = 6, every_tokens: float = 8e9, dtype: torch.dtype = torch.float32):
        if k < 1 or not every_tokens > 0:
            raise ValueError(f"need k >= 1 and every_tokens > 0, got k={k}, every_tokens={every_tokens}")
        self.k, self.every_tokens, self.dtype = k, float(every_tokens), dtype
        self.snapshots: deque[dict[str, torch.Tensor]] = deque(maxlen=k)
        self.next_at = float(every_tokens)

    def update(self, model: torch.nn.Module, tokens: float, apply: bool = False) -> bool:
        """Take a snapshot if ``tokens`` reached the next multiple of ``every_tokens``; True if taken."""
        if tokens < self.next_at:
            return False
        self.snapshots.append(
            {n: p.detach().to("cpu", self.dtype, copy=True) for n, p in model.named_parameters()}
        )
        while self.next_at <= tokens:
            self.next_at += self.every_tokens
        if apply:
            self.apply(model)
        return True

    def averaged(self) -> dict[str, torch.Tensor]:
        return average_state_dicts(list(self.snapshots))

    @torch.no_grad()
    def apply(self, model: torch.nn.Module) -> None:
        avg = self.averaged()
        for n, p in model.named_parameters():
            p.copy_(avg[n].to(p.device, p.dtype))

    def state_dict(self) -> dict:
        return {"k": self.k, "every_tokens": self.every_tokens, "next_at": self.next_at,
                "snapshots": list(self.snapshots)}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if state["k"] != self.k or state["every_tokens"] != self.every_tokens:
            raise ValueError(
                f"averager state is for k={state['k']}, every_tokens={state['every_tokens']}; "
                f"this one has k={self.k}, every_tokens={self.every_tokens}"
            )
        self.snapshots = deque(state["snapshots"], maxlen=self.k)
        self.next_at = float(state["next_at"])
