"""A compact training loop for a Motif-architecture model fed by the mixture loader (``motif-data train``).

    from motif_data.train import TrainConfig, train
    summary = train(TrainConfig.load("configs/tiny.toml"), "runs/tiny", "build/manifest.json")

Names are imported on first use so that ``motif-data --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib

__all__ = [
    "ModelConfig",
    "TrainConfig",
    "MODEL_PRESETS",
    "Motif",
    "flops_per_token",
    "train",
    "plot_losses",
    "plot_comparison",
]

_WHERE = {
    "ModelConfig": "config",
    "TrainConfig": "config",
    "MODEL_PRESETS": "config",
    "Motif": "model",
    "flops_per_token": "model",
    "train": "loop",
    "plot_losses": "plot",
    "plot_comparison": "plot",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'motif_data.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"motif_data.train.{_WHERE[name]}"), name)
