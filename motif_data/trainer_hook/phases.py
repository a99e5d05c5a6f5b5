"""A run in phases (long-context extension): consecutive spans of training tokens, each with its own
sequence length, micro-batch and RoPE base, streamed by `PhasedLoader` as one resumable stream.

Each phase is a MixtureDataset of its own (``page_len``: the longest phase's seq_len; ``first_token``: where
the phase starts), so the mixture, every domain's pages and the state stay functions of the training token:
docs/loader.md, "Long context".
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from motif_data.mixer.schedule import MixtureSchedule
from motif_data.shards import Manifest
from motif_data.trainer_hook.dataset import MixtureDataLoader, MixtureDataset, _resolve_rank

__all__ = ["Phase", "PhasedLoader", "phase_at"]


@dataclass(frozen=True)
class Phase:
    """``tokens`` training tokens (all ranks) of sequences of ``seq_len`` tokens, ``micro_batch`` of them per
    rank and loader batch, with RoPE base ``rope_base``."""

    tokens: int
    seq_len: int
    micro_batch: int
    rope_base: float


def phase_at(phases: Sequence[Phase], tokens: float) -> int:
    """Index of the phase holding training token ``tokens`` (the last phase from its end on)."""
    ends = list(_starts(phases)[1:])
    return min(bisect.bisect_right(ends, tokens), len(phases) - 1)


def _starts(phases: Sequence[Phase]) -> list[int]:
    """Training token where each phase starts, and where the last one ends."""
    starts = [0]
    for p in phases:
        starts.append(starts[-1] + p.tokens)
    return starts


class PhasedLoader:
    """One MixtureDataLoader per phase, iterated one after another: batches of phase p have
    ``phases[p].micro_batch`` rows of ``phases[p].seq_len + 1`` tokens. Its state is the phase, the training
    tokens consumed and that phase's loader state, so a run resumes bitwise before, at and after a switch, at
    any world size and worker count that keep each phase's global batch."""

    def __init__(
        self,
        manifest: str | os.PathLike | Manifest,
        schedule: MixtureSchedule,
        phases: Sequence[Phase],
        seed: int,
        rank: int | None = None,
        world_size: int | None = None,
        *,
        num_workers: int = 0,
        exhaustion: str | Mapping[str, str] = "repeat",
        **kwargs,
    ):
        manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        rank, world_size = _resolve_rank(rank, world_size)
        self.phases = tuple(phases)
        page = max((p.seq_len for p in self.phases), default=1)
        problems = [] if self.phases else ["give at least one phase"]
        for i, p in enumerate(self.phases):
            batch = p.micro_batch * world_size * p.seq_len
            unit = math.lcm(batch, page)
            if page % p.seq_len:
                problems.append(f"phase {i}: seq_len {p.seq_len} does not divide the longest seq_len {page}")
            elif p.tokens <= 0 or p.tokens % unit:
                problems.append(
                    f"phase {i}: {p.tokens} tokens is not a whole number of global micro-batches (micro_batch "
                    f"{p.micro_batch} × world_size {world_size} × seq_len {p.seq_len}) and pages of the longest "
                    f"seq_len {page}: make it a multiple of {unit}"
                )
        if problems:
            raise ValueError("invalid PhasedLoader: " + "; ".join(problems))
        self.first_tokens = _starts(self.phases)
        self.loaders = [
            MixtureDataLoader(
                MixtureDataset(
                    manifest,
                    schedule,
                    p.seq_len,
                    seed,
                    rank,
                    world_size,
                    batch_size=p.micro_batch,
                    exhaustion=exhaustion,
                    max_sequences=p.tokens // p.seq_len,
                    page_len=page,
                    first_token=first,
                ),
                num_workers=num_workers,
                **kwargs,
            )
            for p, first in zip(self.phases, self.first_tokens[:-1], strict=True)
        ]
        self._phase = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield from self.loaders[self._phase]
            if self._phase + 1 == len(self.loaders):
                return
            self._phase += 1

    def _current(self) -> tuple[int, dict]:
        """The phase the next batch comes from and its loader's state: a phase read to its end is the next
        phase's start, so a state saved at a switch is the one a run resumed there saves too."""
        p = self._phase
        state = self.loaders[p].state_dict()
        if p + 1 < len(self.loaders) and state["position"] * self.phases[p].seq_len == self.phases[p].tokens:
            p, state = p + 1, self.loaders[p + 1].state_dict()
        return p, state

    def state_dict(self) -> dict:
        p, state = self._current()
        tokens = self.first_tokens[p] + state["position"] * self.phases[p].seq_len
        return {"phase": p, "tokens": tokens, "stream": state}

    def load_state_dict(self, state: Mapping) -> None:
        if not isinstance(state, Mapping) or {"phase", "tokens", "stream"} - set(state):
            raise ValueError(
                "this loader state has no phase: it comes from a run without [[train.phase]] tables; resume it "
                "with the config it was saved with"
            )
        p = int(state["phase"])
        if not 0 <= p < len(self.loaders):
            raise ValueError(
                f"this loader state is in phase {p}, and this run has {len(self.loaders)} phases"
            )
        self.loaders[p].load_state_dict(state["stream"])  # refuses another phase layout: its hash differs
        for later in self.loaders[p + 1 :]:
            later.load_state_dict(later.dataset.stream_state().at(0).to_dict())
        self._phase = p
