"""Post-training data: conversation sources → ChatML ids with an assistant-only loss mask, deduplicated across
the mixture, in masked shards; and the dataset that packs them for a fine-tune.

    from motif_data.sft import SftConfig, SftDataset, build_sft
    manifest = build_sft(SftConfig.load("configs/sft-gsm8k.toml"), out="/tmp/sft")
    for item in SftDataset(manifest, seq_len=2048, seed=0, epochs=1): ...
"""

from __future__ import annotations

import importlib

__all__ = ["SftConfig", "build_sft", "SftDataset", "PreferenceDataset"]

# Imported on first use: `motif-data --help` imports this package (for its cli module) and must not wait for
# datatrove and torch.
_HOME = {"SftConfig": "config", "build_sft": "build", "SftDataset": "dataset", "PreferenceDataset": "dataset"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"motif_data.sft.{_HOME[name]}"), name)
    raise AttributeError(f"module 'motif_data.sft' has no attribute {name!r}")
