"""What a trainer imports: the resumable mixture dataset and loader, LR / RoPE schedules, checkpoint
averaging and per-domain counters. ``hf`` (transformers Trainer adapter) is imported on demand."""

from motif_data.trainer_hook.averaging import CheckpointAverager, average_state_dicts
from motif_data.trainer_hook.dataset import (
    DomainExhaustedError,
    MixtureDataLoader,
    MixtureDataset,
    position_ids,
)
from motif_data.trainer_hook.lr import wsd_lr, wsd_scheduler
from motif_data.trainer_hook.metrics import DomainCounters
from motif_data.trainer_hook.rope import rope_base
from motif_data.trainer_hook.state import StreamState

__all__ = [
    "MixtureDataset",
    "MixtureDataLoader",
    "DomainExhaustedError",
    "position_ids",
    "StreamState",
    "wsd_lr",
    "wsd_scheduler",
    "rope_base",
    "CheckpointAverager",
    "average_state_dicts",
    "DomainCounters",
]
