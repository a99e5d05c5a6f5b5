"""Kernel tests run the Triton kernels themselves: on the GPU when there is one, else on the CPU through
Triton's interpreter, which must be switched on before the kernels are decorated (at import)."""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

HAS_GPU = torch.cuda.is_available()

if not HAS_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
    # A module imported earlier in this session (without the interpreter) is re-decorated under it.
    for _name in (
        "motif_data.kernels.polynorm",
        "motif_data.kernels.diff_attn",
        "motif_data.kernels.linear_ce",
    ):
        if _name in sys.modules:
            importlib.reload(sys.modules[_name])


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the Triton-path tests run: the GPU, or the CPU under TRITON_INTERPRET=1."""
    return torch.device("cuda" if HAS_GPU else "cpu")


@pytest.fixture(autouse=True)
def _first_config():
    """Kernels run their first autotune config instead of tuning (a sweep test covers the others)."""
    from motif_data.kernels._device import pinned_config

    with pinned_config(0):
        yield


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None and not HAS_GPU:
        pytest.skip("needs a CUDA/ROCm GPU (run with pytest -m gpu on the GPU machine)")


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(a).all(), "non-finite values"
    # The floor of 1 keeps a tiny reference (a gradient sum that cancels) from turning rounding into failure.
    return ((a - e).norm() / e.norm().clamp_min(1.0)).item()


@pytest.fixture(scope="session")
def rel_err():
    """‖actual − expected‖ / max(‖expected‖, 1) in float64 (fails on NaN/inf in actual)."""
    return _rel_err
