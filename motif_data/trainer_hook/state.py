"""Where a mixture stream stands: `StreamState`, the one type the dataset, `MixtureDataLoader` and the
Hugging Face callback save and load (as a plain dict of integers and one hash, for ``torch.save``, JSON and
torchdata alike)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__ = ["StreamState", "STATE_VERSION"]

STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class StreamState:
    """``position``: global sequences consumed before this state's first micro-batch. At a batch boundary
    in the main process that is all (``worker`` None) and any world size or worker count may resume it.
    Inside a DataLoader worker, or mid-batch, ``chunk`` (the rank's next run), ``item`` (within it) and
    ``worker`` (id, count) say more, and only the same layout resumes it.
    ``config``: the dataset's configuration hash (schedule, seed, seq_len, policies, shards)."""

    config: str
    world_size: int
    batch_size: int
    position: int
    chunk: int = 0
    item: int = 0
    worker: tuple[int, int] | None = None
    version: int = STATE_VERSION

    @property
    def at_boundary(self) -> bool:
        return self.worker is None

    def at(self, position: int) -> StreamState:
        """The batch-boundary state of the same stream at global sequence ``position``."""
        return dataclasses.replace(self, position=position, chunk=0, item=0, worker=None)

    def to_dict(self) -> dict:
        state = dataclasses.asdict(self)
        state["worker"] = list(self.worker) if self.worker is not None else None
        return state

    @classmethod
    def from_dict(cls, state: Mapping) -> StreamState:
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            got = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"unknown loader state version {got!r}, expected {STATE_VERSION}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in state]
        if missing:
            raise ValueError(f"loader state lacks {missing}: it was not saved by a MixtureDataset")
        worker = state["worker"]
        return cls(
            config=str(state["config"]),
            world_size=int(state["world_size"]),
            batch_size=int(state["batch_size"]),
            position=int(state["position"]),
            chunk=int(state["chunk"]),
            item=int(state["item"]),
            worker=(int(worker[0]), int(worker[1])) if worker is not None else None,
        )
