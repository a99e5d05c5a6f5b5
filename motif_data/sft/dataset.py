"""The SFT stream a fine-tune iterates: rows of one or several samples of an SFT build, with assistant-only labels.

Epoch e visits every sample once in the order of a keyed permutation of (seed, e); ``packing`` puts consecutive
samples of that order into a row while they fit (a sample longer than ``seq_len`` is cut to it), otherwise a row
holds one sample, padded. Rows are a pure function of (seed, epoch, the samples' lengths), so where a stream
stands is one integer, and ranks and DataLoader workers split it by arithmetic alone.

Items (``seq_len`` each, int64), in the convention of transformers' padding-free collator: ``input_ids``,
``labels`` (the token where the loss mask says assistant, −100 elsewhere, on padding and on each sample's first
token, so that a model shifting labels never predicts across a boundary), ``position_ids`` restarting at 0 at
each sample (and at the padding), ``attention_mask`` (0 on padding).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from motif_data.mixer.permutation import hash64, permute
from motif_data.shards import SftManifest

__all__ = ["IGNORE_INDEX", "SftDataset", "SftDataLoader", "PreferenceDataset", "pack_rows"]

IGNORE_INDEX = -100
_STATE_VERSION = 1


def pack_rows(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """Start (in ``lengths``' order) of each row when samples of these lengths, each cut to ``seq_len``, are put
    into rows of ``seq_len`` tokens greedily in order; a final entry ``len(lengths)``."""
    starts, fill = [0], 0
    for i, n in enumerate(np.minimum(lengths, seq_len).tolist()):
        if fill + n > seq_len:
            starts.append(i)
            fill = 0
        fill += n
    if len(lengths):
        starts.append(len(lengths))
    return np.asarray(starts, dtype=np.int64)


class SftDataset(IterableDataset):
    """Rows of an SFT build (``manifest``: its folder, manifest.json or an ``SftManifest``), ``epochs`` times
    (None: without end). ``batch_size`` is the DataLoader's, so that its workers together give the order one
    process would. ``state_dict`` / ``load_state_dict`` resume the stream exactly."""

    def __init__(
        self,
        manifest: str | os.PathLike | SftManifest,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        packing: bool = True,
        batch_size: int = 1,
        epochs: int | None = None,
        weights: Mapping[str, float] | None = None,
        verify: bool = False,
    ):
        super().__init__()
        self.manifest = manifest if isinstance(manifest, SftManifest) else SftManifest.load(manifest)
        problems = []
        for name, value, low in (("seq_len", seq_len, 1), ("seed", seed, 0), ("batch_size", batch_size, 1)):
            if not isinstance(value, int) or value < low:
                problems.append(f"{name} must be an integer ≥ {low}, got {value!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
            problems.append(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
            problems.append(f"epochs must be None (no end) or an integer ≥ 1, got {epochs!r}")
        if self.manifest.kind != "sft":
            problems.append(
                f"the build at {self.manifest.root} holds {self.manifest.kind} pairs: read it with PreferenceDataset"
            )
        sources = self.manifest.sources
        weights = {name: 1.0 for name in sources} | dict(weights or {})
        unknown = sorted(set(weights) - set(sources))
        if unknown:
            problems.append(f"weights name sources the build does not hold: {unknown}; it holds {sources}")
        if any(not isinstance(w, int | float) or w < 0 for w in weights.values()):
            problems.append(
                f"weights must be numbers ≥ 0 (times each source's samples per epoch), got {weights}"
            )
        elif not problems and not any(round(weights[s.source] * s.documents) for s in self.manifest.shards):
            problems.append(
                f"the build at {self.manifest.root} with weights {weights} gives no sample an epoch"
            )
        if problems:
            raise ValueError("invalid SftDataset: " + "; ".join(problems))
        self.seq_len, self.seed, self.packing = seq_len, seed, packing
        self.rank, self.world_size, self.batch_size, self.epochs = rank, world_size, batch_size, epochs
        self.pad_id, self.weights = self.manifest.pad_id, {name: float(weights[name]) for name in sources}
        self._readers = [self.manifest.open_shard(s, verify=verify) for s in self.manifest.shards]
        per_shard = [np.diff(r.offsets.view(np.ndarray)).astype(np.int64) for r in self._readers]
        self.lengths = np.concatenate(per_shard)
        self._shard_start = np.concatenate([[0], np.cumsum([len(p) for p in per_shard])])
        self._by_source = [  # per source: the build's indices of its samples
            np.concatenate(
                [
                    np.arange(self._shard_start[i], self._shard_start[i + 1])
                    for i, s in enumerate(self.manifest.shards)
                    if s.source == name
                ]  # fmt: skip
            )
            for name in sources
        ]
        self._plans: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._epoch_rows: list[int] = []  # rows of epochs 0, 1, … as far as computed
        self.config_hash = hashlib.sha256(
            json.dumps(
                [
                    seq_len,
                    seed,
                    packing,
                    self.weights,
                    [[s.tokens, s.sha256, s.mask_sha256] for s in self.manifest.shards],
                ]
            ).encode()
        ).hexdigest()
        self._position = 0  # rows of this rank consumed by the iterator of this process

    def __getstate__(self) -> dict:
        # memmaps and plans are per process: a DataLoader worker reopens and recomputes what it needs
        return {**self.__dict__, "_readers": None, "_plans": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._readers = [self.manifest.open_shard(s) for s in self.manifest.shards]

    # -- pure functions of the index -------------------------------------------------------------------

    def _draws(self, epoch: int) -> np.ndarray:
        """The samples of epoch ``epoch``: ``round(weight × n)`` of each source's n, a new keyed permutation of
        the source for every full pass (weight 2: each sample twice; 0.5: half of them, others next epoch)."""
        picks = []
        for s, (idx, weight) in enumerate(zip(self._by_source, self.weights.values(), strict=True)):
            n, count = len(idx), round(weight * len(idx))
            k = np.arange(epoch * count, (epoch + 1) * count)  # the source's draws continue across epochs
            passes, j = np.divmod(k, n)
            chosen = np.empty(count, dtype=np.int64)
            for r in np.unique(passes).tolist():
                m = passes == r
                chosen[m] = idx[permute(j[m], n, hash64(self.seed, s, r)).astype(np.int64)]
            picks.append(chosen)
        return np.concatenate(picks)

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch ``epoch``'s sample order and its row starts into that order."""
        if epoch not in self._plans:
            draws = self._draws(epoch)
            n = len(draws)
            order = draws[permute(np.arange(n), n, hash64(self.seed, epoch)).astype(np.int64)]
            starts = pack_rows(self.lengths[order], self.seq_len) if self.packing else np.arange(n + 1)
            if len(self._plans) > 2:
                self._plans.pop(min(self._plans))
            self._plans[epoch] = (order, starts)
        return self._plans[epoch]

    def rows_in_epoch(self, epoch: int) -> int:
        while len(self._epoch_rows) <= epoch:
            self._epoch_rows.append(len(self.plan(len(self._epoch_rows))[1]) - 1)
        return self._epoch_rows[epoch]

    @property
    def total_rows(self) -> int | None:
        """Rows of all epochs together (None without an end)."""
        return None if self.epochs is None else sum(self.rows_in_epoch(e) for e in range(self.epochs))

    def _where(self, g: int) -> tuple[int, int] | None:
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            n = self.rows_in_epoch(epoch)
            if g < n:
                return epoch, g
            g, epoch = g - n, epoch + 1
        return None

    def row(self, g: int) -> dict[str, torch.Tensor]:
        """Global row ``g`` of the stream (all ranks together)."""
        where = self._where(g)
        if where is None:
            raise IndexError(f"row {g} is past the last of {self.epochs} epoch(s)")
        order, starts = self.plan(where[0])
        samples = order[starts[where[1]] : starts[where[1] + 1]]
        ids = np.full(self.seq_len, self.pad_id, dtype=np.int64)
        labels = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        positions = np.zeros(self.seq_len, dtype=np.int64)
        attention = np.zeros(self.seq_len, dtype=np.int64)
        fill = 0
        for j in samples.tolist():
            shard = int(np.searchsorted(self._shard_start, j, side="right")) - 1
            tokens, mask = self._readers[shard].sample(j - int(self._shard_start[shard]))
            n = min(len(tokens), self.seq_len - fill)
            part = slice(fill, fill + n)
            ids[part] = tokens[:n]
            labels[part] = np.where(mask[:n] != 0, ids[part], IGNORE_INDEX)  # int64: -100 must not wrap
            labels[fill] = IGNORE_INDEX
            positions[part] = np.arange(n)
            attention[part] = 1
            fill += n
        positions[fill:] = np.arange(self.seq_len - fill)
        return {
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(positions),
            "attention_mask": torch.from_numpy(attention),
        }

    # -- iteration and state ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        total = self.total_rows
        k = start = self._position
        while True:
            g = k * self.world_size + self.rank
            if total is not None and g >= total:
                return
            # Batches count from where this iteration starts: the DataLoader takes its first batch from worker
            # 0, also when a resumed stream starts at a batch that another worker would have had.
            if ((k - start) // self.batch_size) % workers == worker:
                item = self.row(g)
                if info is None:
                    self._position = k + 1
                yield item
            k += 1

    def state_dict(self) -> dict:
        """Where this process's iteration stands (iterate in the main process, or count rows yourself and
        pass ``{"position": n}`` with the rest of this dict)."""
        return {
            "version": _STATE_VERSION,
            "config": self.config_hash,
            "world_size": self.world_size,
            "position": self._position,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"unknown SftDataset state version {state.get('version')!r}, expected {_STATE_VERSION}"
            )
        if state.get("config") != self.config_hash or state.get("world_size") != self.world_size:
            raise ValueError(
                "this state belongs to another SFT stream (build, seq_len, seed, packing or world size differ): "
                "resume with the dataset it was saved from"
            )
        self._position = int(state["position"])


class SftDataLoader:
    """A ``DataLoader`` of ``dataset.batch_size`` rows a batch over an SftDataset, whose state counts the rows
    handed out here: exact with DataLoader workers too (whose copies of the dataset the main process does not
    see) and whatever they had prefetched. ``kwargs`` go to the DataLoader (``pin_memory``)."""

    def __init__(self, dataset: SftDataset, num_workers: int = 0, **kwargs):
        self.dataset, self.num_workers, self.kwargs = dataset, num_workers, kwargs
        self._position = dataset.state_dict()["position"]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.dataset.load_state_dict(self.state_dict())
        loader = DataLoader(
            self.dataset, batch_size=self.dataset.batch_size, num_workers=self.num_workers, **self.kwargs
        )
        for batch in loader:
            self._position += len(batch["input_ids"])
            yield batch

    def state_dict(self) -> dict:
        return self.dataset.state_dict() | {"position": self._position}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)
        self._position = int(state["position"])


class PreferenceDataset(Dataset):
    """The pairs of a preference build (``kind = "preference"``), in the columns TRL's DPO trainer tokenizes a
    dataset into and its collator pads: ``prompt_input_ids`` (the conversation up to the assistant header),
    ``chosen_input_ids`` and ``rejected_input_ids`` (each answer through its ``<|im_end|>``), lists of ids."""

    def __init__(self, manifest: str | os.PathLike | SftManifest, *, verify: bool = False):
        super().__init__()
        self.manifest = manifest if isinstance(manifest, SftManifest) else SftManifest.load(manifest)
        if self.manifest.kind != "preference":
            raise ValueError(
                f"the build at {self.manifest.root} is of kind {self.manifest.kind!r}: build it with "
                'kind = "preference", or read it with SftDataset'
            )
        self._readers = [self.manifest.open_shard(s, verify=verify) for s in self.manifest.shards]
        self._starts = np.concatenate([[0], np.cumsum([r.num_documents for r in self._readers])])

    def __len__(self) -> int:
        return int(self._starts[-1]) // 2

    def _sample(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        shard = int(np.searchsorted(self._starts, j, side="right")) - 1
        return self._readers[shard].sample(j - int(self._starts[shard]))

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        if not 0 <= i < len(self):
            raise IndexError(f"pair {i} of {len(self)}")
        out = {}
        for name, j in (("chosen", 2 * i), ("rejected", 2 * i + 1)):
            ids, mask = self._sample(j)
            labelled = np.flatnonzero(mask)
            out.setdefault("prompt_input_ids", ids[: labelled[0]].tolist())
            out[f"{name}_input_ids"] = ids[labelled[0] : labelled[-1] + 1].tolist()
        return out
