"""torchdata's `StatefulDataLoader` over a MixtureDataset, with a clear error where torchdata has a bare
assertion: its state keeps one stream state per worker, so it resumes only with the worker count it was
saved with. Import it only where torchdata is installed. (`MixtureDataLoader` resumes with any count.)"""

from __future__ import annotations

from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

from motif_data.trainer_hook.dataset import MixtureDataset

__all__ = ["StatefulMixtureDataLoader"]


def _saved_workers(state: dict[str, Any]) -> int:
    # torchdata's layout: a multi-process state keeps the count in its main snapshot; a single-process
    # state (num_workers=0) has no snapshot.
    snapshot = state.get("_snapshot")
    return int(snapshot["_main_snapshot"]["_num_workers"]) if snapshot is not None else 0


class StatefulMixtureDataLoader(StatefulDataLoader):
    """``StatefulDataLoader(dataset, batch_size=dataset.batch_size, **kwargs)``; ``load_state_dict`` refuses,
    naming both counts and the fix, a state saved with another ``num_workers``."""

    def __init__(self, dataset: MixtureDataset, **kwargs: Any) -> None:
        kwargs.setdefault("batch_size", dataset.batch_size)
        super().__init__(dataset, **kwargs)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = _saved_workers(state_dict) if state_dict else self.num_workers
        if saved != self.num_workers:
            raise ValueError(
                f"this StatefulDataLoader state was saved with num_workers={saved}, and this loader has "
                f"num_workers={self.num_workers}: torchdata keeps one stream state per worker, so resume with "
                f"num_workers={saved}, or train with MixtureDataLoader, whose state resumes with any count"
            )
        super().load_state_dict(state_dict)
