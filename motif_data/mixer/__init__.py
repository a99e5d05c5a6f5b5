"""Linearly annealed domain mixture: schedule (pure in tokens), quota sampler (pure in index), plan."""

from motif_data.mixer.permutation import permute
from motif_data.mixer.plan import DomainPlan, packed_sequences, plan
from motif_data.mixer.sampler import QuotaSampler
from motif_data.mixer.schedule import SCHEDULE_PRESETS, MixtureSchedule, Stage

__all__ = [
    "MixtureSchedule",
    "Stage",
    "SCHEDULE_PRESETS",
    "QuotaSampler",
    "permute",
    "plan",
    "DomainPlan",
    "packed_sequences",
]
