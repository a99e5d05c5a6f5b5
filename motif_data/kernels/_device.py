"""Where a kernel call runs: the Triton path on a GPU (CUDA or ROCm/HIP), the pure-PyTorch reference elsewhere;
which target's autotune list and dot precision it takes; and the compile-only mode of `kernels check`."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from motif_data.kernels.targets import TARGETS, Target, dot_precision

# Index into each kernel's autotune list to run instead of tuning (tests pin configs to cover each of them
# without paying for a tuning sweep); None means tune.
_pinned_config: int | None = None

# Set by `compile_only`: the target the check compiles for and what receives each launch instead of a GPU.
_compile_only: tuple[Target, Callable[..., None]] | None = None


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when every tensor lives on a GPU that Triton can compile for (or, inside `compile_only`, on the
    meta device the check runs the ops on).

    ROCm builds of PyTorch report their GPUs as device type "cuda" too, so one check covers both vendors.
    """
    device_type = "meta" if _compile_only is not None else "cuda"
    return all(t.device.type == device_type for t in tensors)


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, where kernels run on the CPU through Triton's interpreter (tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _arch_name(index: int) -> str:
    props = torch.cuda.get_device_properties(index)
    if torch.version.hip is not None:
        return props.gcnArchName.split(":")[0]  # "gfx942:sramecc+:xnack-" → "gfx942"
    return f"sm_{props.major}{props.minor}"


@functools.cache
def _table_arch(index: int) -> str:
    name = _arch_name(index)
    if name in TARGETS:
        return name
    # An arch outside the table takes its vendor's most conservative entry: gfx90a's 64 KiB LDS and its lists
    # (RDNA, older CDNA), sm_89's 99 KiB of shared memory (other NVIDIA GPUs).
    return "gfx90a" if torch.version.hip is not None else "sm_89"


@torch.compiler.assume_constant_result  # a device's arch is fixed for the process: traced as a constant
def device_arch(index: int) -> str:
    """The `TARGETS` entry that CUDA/ROCm device `index` compiles as ("sm_90", "gfx942", ...)."""
    return _table_arch(index)


def target_of(device: torch.device) -> Target | None:
    """The target a launch on `device` compiles for: its GPU's entry in `TARGETS`, the checked target inside
    `compile_only`, None off the GPU (the interpreter)."""
    if _compile_only is not None:
        return _compile_only[0]
    if device.type != "cuda":
        return None
    return TARGETS[device_arch(device.index if device.index is not None else torch.cuda.current_device())]


def tuned(kernels: dict[str, Any], device: torch.device):
    """The autotuner of a kernel's per-target lists (`{"cuda": ..., "gfx942": ...}`) that `device` runs."""
    target = target_of(device)
    return kernels["cuda" if target is None else target.family]


def precision(dtype: torch.dtype, device: torch.device) -> str:
    """`tl.dot` input precision for operands of `dtype` launched on `device` (targets.dot_precision)."""
    # Off the GPU a kernel only ever runs interpreted: target None is the interpreter.
    return dot_precision(dtype, target_of(device), allow_tf32=torch.backends.cuda.matmul.allow_tf32)


@contextlib.contextmanager
def pinned_config(index: int) -> Iterator[None]:
    """Within the block, every autotuned kernel runs its config number `index` (clamped to its list)."""
    global _pinned_config
    previous, _pinned_config = _pinned_config, index
    try:
        yield
    finally:
        _pinned_config = previous


@contextlib.contextmanager
def compile_only(target: Target, receive: Callable[..., None]) -> Iterator[None]:
    """Within the block, ops called on meta tensors take their Triton path for `target`, and every launch
    goes to `receive(kernel, args, kwargs)` instead of a GPU: what `kernels check` compiles."""
    global _compile_only
    previous, _compile_only = _compile_only, (target, receive)
    try:
        yield
    finally:
        _compile_only = previous


def launch(kernel, grid, *args, **kwargs) -> None:
    """Launch a Triton kernel (autotuned or plain). Under the interpreter the tuner is skipped (it needs a GPU
    to time configs) and the first config runs; a pinned config (tests) runs likewise without tuning."""
    if _compile_only is not None:
        _compile_only[1](kernel, args, kwargs)
        return
    configs = getattr(kernel, "configs", None)
    index = 0 if interpreting() and _pinned_config is None else _pinned_config
    if configs is None or index is None:
        kernel[grid](*args, **kwargs)
        return
    config = configs[min(index, len(configs) - 1)]
    kernel.fn[grid](*args, **kwargs, **config.all_kwargs())
