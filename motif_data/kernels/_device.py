"""Where a kernel call runs: the Triton path on a GPU (CUDA or ROCm/HIP), the pure-PyTorch reference elsewhere."""

from __future__ import annotations

import os

import torch


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when every tensor lives on a GPU that Triton can compile for.

    ROCm builds of PyTorch report their GPUs as device type "cuda" too, so one check covers both vendors.
    """
    return all(t.device.type == "cuda" for t in tensors)


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, where kernels run on the CPU through Triton's interpreter (tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def launch(kernel, grid, *args, **kwargs) -> None:
    """Launch an autotuned Triton kernel; under the interpreter, skip the tuner (it needs a GPU to time
    configs) and run the plain kernel with the first config's meta-parameters."""
    if interpreting():
        config = kernel.configs[0]
        kernel.fn[grid](*args, **kwargs, **config.kwargs)
    else:
        kernel[grid](*args, **kwargs)
