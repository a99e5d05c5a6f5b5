"""RMSNorm for the model and the attention module's sub-layer norm: PyTorch's own fused one, fed the weight in
the activations' dtype. No Triton kernel here: PyTorch's is already one pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RMSNorm"]


class RMSNorm(nn.RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Mixed dtypes (an fp32 weight on bf16 activations) fall off PyTorch's fused kernel onto a slow composite.
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)
