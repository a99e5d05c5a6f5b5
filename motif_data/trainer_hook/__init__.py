"""What a trainer imports: the resumable mixture dataset and loader (in phases for long context), the LR
schedule, checkpoint averaging and per-domain counters. ``hf`` (transformers Trainer adapter) is imported on demand."""

from motif_data.trainer_hook.averaging import CheckpointAverager, average_state_dicts
from motif_data.trainer_hook.dataset import (
    DomainExhaustedError,
    MixtureDataLoader,
    MixtureDataset,
    position_ids,
)
from motif_data.trainer_hook.lr import wsd_lr, wsd_scheduler
from motif_data.trainer_hook.metrics import DomainCounters
from motif_data.trainer_hook.phases import Phase, PhasedLoader, phase_at
from motif_data.trainer_hook.state import StreamState

__all__ = [
    "MixtureDataset",
    "MixtureDataLoader",
    "DomainExhaustedError",
    "position_ids",
    "StreamState",
    "wsd_lr",
    "wsd_scheduler",
    "Phase",
    "PhasedLoader",
    "phase_at",
    "CheckpointAverager",
    "average_state_dicts",
    "DomainCounters",
]
