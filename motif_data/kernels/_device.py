"""Where a kernel call runs: the Triton path on a GPU (CUDA or ROCm/HIP), the pure-PyTorch reference elsewhere."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

# Index into each kernel's autotune list to run instead of tuning (tests pin configs to cover each of them
# without paying for a tuning sweep); None means tune.
_pinned_config: int | None = None


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when every tensor lives on a GPU that Triton can compile for.

    ROCm builds of PyTorch report their GPUs as device type "cuda" too, so one check covers both vendors.
    """
    return all(t.device.type == "cuda" for t in tensors)


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, where kernels run on the CPU through Triton's interpreter (tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@contextlib.contextmanager
def pinned_config(index: int) -> Iterator[None]:
    """Within the block, every autotuned kernel runs its config number `index` (clamped to its list)."""
    global _pinned_config
    previous, _pinned_config = _pinned_config, index
    try:
        yield
    finally:
        _pinned_config = previous


def launch(kernel, grid, *args, **kwargs) -> None:
    """Launch an autotuned Triton kernel. Under the interpreter the tuner is skipped (it needs a GPU to time
    configs) and the first config runs; a pinned config (tests) runs likewise without tuning."""
    index = 0 if interpreting() and _pinned_config is None else _pinned_config
    if index is None:
        kernel[grid](*args, **kwargs)
        return
    config = kernel.configs[min(index, len(kernel.configs) - 1)]
    kernel.fn[grid](
        *args, **kwargs, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages
    )
