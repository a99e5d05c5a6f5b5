"""The resumable mixture stream a trainer iterates: packed sequences of a build, mixed by a schedule.

Global sequence g → (domain, k-th draw of that domain) comes from the mixer's QuotaSampler; the k-th draw
→ a packed window through a keyed permutation per (seed, domain, epoch). Everything is a pure function of
g, so the state is one integer (the global position) plus a hash of the configuration, and ranks and
DataLoader workers split the stream by arithmetic alone.

Layout: the stream is consumed in global micro-batches of ``batch_size × world_size`` sequences; in each,
rank r takes the r-th run of ``batch_size`` consecutive sequences. A rank's runs go to its DataLoader
workers round-robin, the order in which ``torch.utils.data.DataLoader`` collects them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from motif_data import DOMAINS
from motif_data.mixer.permutation import hash64, permute
from motif_data.mixer.plan import packed_sequences
from motif_data.mixer.sampler import QuotaSampler
from motif_data.mixer.schedule import MixtureSchedule
from motif_data.shards import Manifest, ShardError, ShardReader

__all__ = ["MixtureDataset", "MixtureDataLoader", "DomainExhaustedError", "STATE_VERSION"]

STATE_VERSION = 1
_POLICIES = ("repeat", "error")


class DomainExhaustedError(RuntimeError):
    """A domain with exhaustion policy ``error`` was asked for more sequences than one epoch holds."""


class _DomainData:
    """One domain's packed view: shards in manifest order, their cumulative token starts, lazy readers."""

    def __init__(self, manifest: Manifest, name: str, seq_len: int):
        info = manifest.domains[name]
        self.manifest = manifest
        self.shards = info.shards
        self.starts = np.concatenate([[0], np.cumsum([s.tokens for s in info.shards], dtype=np.int64)])
        self.sequences = packed_sequences(int(self.starts[-1]), seq_len)
        self.readers: dict[int, ShardReader] = {}

    def reader(self, i: int) -> ShardReader:
        r = self.readers.get(i)
        if r is None:
            r = self.readers[i] = self.manifest.open_shard(self.shards[i])
        return r

    def window(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens ``[start, start + length)`` of the domain stream (int64) and their positions in documents."""
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        r = self.reader(i)
        off = start - int(self.starts[i])
        if off + length <= r.num_tokens:  # the common case: one shard
            return r.tokens[off : off + length].astype(np.int64), _positions(r.offsets, off, length)
        tokens, positions = [], []
        while length > 0:  # a window crossing shard ends; every shard starts with a new document
            n = min(length, r.num_tokens - off)
            tokens.append(r.tokens[off : off + n].astype(np.int64))
            positions.append(_positions(r.offsets, off, n))
            length -= n
            i, off = i + 1, 0
            if length:
                r = self.reader(i)
        return np.concatenate(tokens), np.concatenate(positions)


def _positions(offsets: np.ndarray, off: int, length: int) -> np.ndarray:
    """Position of each token of ``[off, off + length)`` inside its document (0 at each document start)."""
    first = int(np.searchsorted(offsets, off, side="right")) - 1
    last = int(np.searchsorted(offsets, off + length, side="left"))
    starts = offsets[first:last].astype(np.int64) - off  # document starts, relative; the first may be < 0
    if len(starts) == 1:
        return np.arange(-starts[0], length - starts[0], dtype=np.int64)
    seg = np.diff(np.append(np.maximum(starts, 0), length))
    return np.arange(length, dtype=np.int64) - np.repeat(starts, seg)


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None and world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if rank is None or world_size is None:
        raise ValueError(
            f"give both rank and world_size or neither, got rank={rank}, world_size={world_size}"
        )
    return int(rank), int(world_size)


class MixtureDataset(IterableDataset):
    """Infinite (or ``max_sequences``-long) stream of packed sequences mixed by ``schedule``.

    Items: ``input_ids`` (seq_len + 1, int64; train on ``[:-1]`` → ``[1:]``), ``domain`` (int64 index into
    DOMAINS), ``position_ids`` (seq_len + 1, int64, restarting at 0 at each document: feed ``[:-1]`` to the
    model for RoPE and document-masked attention).

    ``exhaustion``: ``"repeat"`` (a new shuffled epoch of the domain) or ``"error"``, or a dict per domain.
    ``tokenizer``: a ``tiktoken.Encoding`` or fingerprint string that must match the manifest's tokenizer.
    ``verify``: check every shard's sha256 against the manifest once, at construction.
    """

    def __init__(
        self,
        manifest: str | os.PathLike | Manifest,
        schedule: MixtureSchedule,
        seq_len: int,
        seed: int,
        rank: int | None = None,
        world_size: int | None = None,
        *,
        batch_size: int = 1,
        exhaustion: str | Mapping[str, str] = "repeat",
        tokenizer=None,
        verify: bool = False,
        max_sequences: int | None = None,
    ):
        super().__init__()
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        self.rank, self.world_size = _resolve_rank(rank, world_size)
        policies = {d: exhaustion for d in DOMAINS} if isinstance(exhaustion, str) else dict(exhaustion)
        problems = []
        if not isinstance(seq_len, (int, np.integer)) or seq_len <= 0:
            problems.append(f"seq_len must be a positive integer, got {seq_len!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            problems.append(f"seed must be a non-negative integer, got {seed!r}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            problems.append(f"batch_size must be a positive integer, got {batch_size!r}")
        if not (self.world_size >= 1 and 0 <= self.rank < self.world_size):
            problems.append(
                f"need 0 <= rank < world_size, got rank={self.rank}, world_size={self.world_size}"
            )
        bad = {d: p for d, p in policies.items() if d not in DOMAINS or p not in _POLICIES}
        if bad:
            problems.append(f"exhaustion must map domains of {DOMAINS} to one of {_POLICIES}, got {bad}")
        if max_sequences is not None and max_sequences < 0:
            problems.append(f"max_sequences must be >= 0, got {max_sequences}")
        if problems:
            raise ValueError("invalid MixtureDataset: " + "; ".join(problems))
        self.schedule, self.seq_len, self.seed = schedule, int(seq_len), int(seed)
        self.batch_size, self.max_sequences = int(batch_size), max_sequences
        self.policies = {d: policies.get(d, "repeat") for d in DOMAINS}
        if tokenizer is not None:
            self._check_tokenizer(tokenizer)
        self.sampler = QuotaSampler(schedule, self.seq_len, self.seed)
        self.domains: dict[int, _DomainData] = {}
        missing = []
        for d, name in enumerate(DOMAINS):
            if name in self.manifest.domains:
                self.domains[d] = _DomainData(self.manifest, name, self.seq_len)
            if name in schedule.active_domains() and (d not in self.domains or not self.domains[d].sequences):
                missing.append(name)
        if missing:
            raise ValueError(
                f"the schedule draws from {missing} but the manifest has no packed sequence of "
                f"{self.seq_len + 1} tokens for them: build those domains or give them weight 0"
            )
        self._check_files(verify)
        self.config_hash = self._config_hash()
        self._state = {"position": 0, "chunk": 0, "item": 0, "worker": None}

    # -- validation ---------------------------------------------------------------------------------------

    def _check_tokenizer(self, tokenizer) -> None:
        if isinstance(tokenizer, str):
            got = tokenizer
        else:
            from motif_data.tokenizer.base import fingerprint

            got = fingerprint(tokenizer)
        want = self.manifest.tokenizer.sha256
        if got != want:
            raise ValueError(
                f"tokenizer fingerprint {got[:16]}… does not match the manifest's {self.manifest.tokenizer.name!r} "
                f"({want[:16]}…): load the tokenizer the build was made with, or rebuild the shards"
            )

    def _check_files(self, verify: bool) -> None:
        """Cheap existence and size check of every shard now, so a bad build fails before training starts."""
        root = self.manifest.root
        for dom in self.domains.values():
            for s in dom.shards:
                path = root / s.path
                try:
                    size = path.stat().st_size
                    (root / s.index_path).stat()
                except FileNotFoundError:
                    raise ShardError(
                        f"shard {path} listed in the manifest is missing: rebuild or fix the manifest"
                    ) from None
                if size != 4 * s.tokens:
                    raise ShardError(
                        f"shard {path} is truncated: {size} bytes, the manifest says {4 * s.tokens}"
                    )
                if verify:
                    self.manifest.open_shard(s, verify=True)

    def _config_hash(self) -> str:
        spec = {
            "schedule": self.schedule.to_dict(),
            "seq_len": self.seq_len,
            "seed": self.seed,
            "exhaustion": self.policies,
            "tokenizer": self.manifest.tokenizer.sha256,
            "shards": {
                DOMAINS[d]: [[s.tokens, s.sha256] for s in dom.shards] for d, dom in self.domains.items()
            },
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    # -- pure functions of the global index ---------------------------------------------------------------

    @property
    def global_batch(self) -> int:
        """Sequences per global micro-batch: ``batch_size × world_size``."""
        return self.batch_size * self.world_size

    def locate(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For global sequences ``start .. stop - 1``: domain index, epoch of that domain, packed window."""
        dom, k = self.sampler.draws(start, stop)
        epoch = np.zeros_like(k)
        window = np.zeros_like(k)
        for d in np.unique(dom):
            sel = dom == d
            n = self.domains[int(d)].sequences
            e, j = np.divmod(k[sel], n)
            if self.policies[DOMAINS[d]] == "error" and e.max() > 0:
                g = start + int(np.flatnonzero(sel)[np.argmax(e > 0)])
                raise DomainExhaustedError(
                    f"domain {DOMAINS[d]!r} is exhausted at global sequence {g}: it holds {n} packed sequences "
                    f"of {self.seq_len + 1} tokens; add data, lower its weight, or use exhaustion='repeat'"
                )
            w = np.empty_like(j)
            for ep in np.unique(e):
                m = e == ep
                w[m] = permute(j[m], n, hash64(self.seed, int(d), int(ep))).astype(np.int64)
            epoch[sel], window[sel] = e, w
        return dom, epoch, window

    def sequence(self, domain: int, window: int) -> dict[str, torch.Tensor]:
        """The item for packed window ``window`` of domain ``domain``."""
        span = self.seq_len + 1
        tokens, positions = self.domains[domain].window(window * span, span)
        return {
            "input_ids": torch.from_numpy(tokens),
            "domain": torch.tensor(domain, dtype=torch.int64),
            "position_ids": torch.from_numpy(positions),
        }

    def items(self, start: int, stop: int) -> Iterator[dict[str, torch.Tensor]]:
        """Items of global sequences ``start .. stop - 1`` in order (no rank or worker split)."""
        dom, _, window = self.locate(start, stop)
        for d, w in zip(dom.tolist(), window.tolist(), strict=True):
            yield self.sequence(d, w)

    def epochs(self, position: int) -> dict[str, float]:
        """Epochs of each domain's data consumed by the first ``position`` global sequences."""
        counts = self.sampler.counts_before(position)
        return {DOMAINS[d]: counts[d] / dom.sequences for d, dom in self.domains.items() if dom.sequences}

    # -- iteration and state -----------------------------------------------------------------------------

    def _split(self) -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, workers = self._split()
        st = self._state
        if st["worker"] is not None and st["worker"] != [worker, workers]:
            raise ValueError(
                f"this state belongs to DataLoader worker {st['worker'][0]} of {st['worker'][1]}, not worker "
                f"{worker} of {workers}: resume with the same num_workers, or from a MixtureDataLoader state"
            )
        position, b, G = st["position"], self.batch_size, self.global_batch
        chunk = st["chunk"] if st["worker"] is not None else worker
        item = st["item"] if st["worker"] is not None else 0
        limit = self.max_sequences
        while True:
            # The rank's chunk-th run of b sequences sits in global micro-batch `chunk` at offset rank * b.
            start = position + chunk * G + self.rank * b
            stop = start + b if limit is None else min(start + b, limit)
            if stop <= start + item:
                return
            dom, _, window = self.locate(start + item, stop)
            for d, w in zip(dom.tolist(), window.tolist(), strict=True):
                item += 1
                if item == b:
                    chunk, item = chunk + workers, 0
                self._state = {
                    "position": position,
                    "chunk": chunk,
                    "item": item,
                    "worker": [worker, workers],
                }
                yield self.sequence(d, w)

    def state_dict(self) -> dict:
        """A few integers and the configuration hash. In the main process and at a batch boundary the
        position alone says where the stream stands, and any world size / worker count may resume it."""
        st = dict(self._state)
        if st["worker"] is not None and st["worker"][1] == 1:
            st["position"] += st["chunk"] * self.global_batch
            st["chunk"] = 0
            if st["item"] == 0:
                st["worker"] = None
        return {"version": STATE_VERSION, "config": self.config_hash, "world_size": self.world_size,
                "batch_size": self.batch_size, **st}  # fmt: skip

    def load_state_dict(self, state: Mapping) -> None:
        self._state = self._checked_state(state)

    def _checked_state(self, state: Mapping) -> dict:
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"unknown loader state version {state.get('version')!r}, expected {STATE_VERSION}"
            )
        if state["config"] != self.config_hash:
            raise ValueError(
                "this loader state comes from another configuration (schedule, seed, seq_len, exhaustion "
                "policy or manifest differ): resume with the same ones, or start a new run"
            )
        position = int(state["position"])
        if state["worker"] is not None:
            same = state["world_size"] == self.world_size and state["batch_size"] == self.batch_size
            if not same:
                raise ValueError(
                    "this state was saved mid-batch or inside a DataLoader worker; it resumes only with the same "
                    "world size, batch size and num_workers. Save states at batch boundaries (MixtureDataLoader "
                    "does) to change them."
                )
            return {"position": position, "chunk": int(state["chunk"]), "item": int(state["item"]),
                    "worker": list(state["worker"])}  # fmt: skip
        if position % self.global_batch:
            raise ValueError(
                f"position {position} is not a multiple of the global micro-batch {self.global_batch} "
                f"(batch_size {self.batch_size} × world_size {self.world_size}): keep batch_size × world_size "
                f"a divisor of the sequences consumed (e.g. keep the global batch fixed when changing GPUs)"
            )
        return {"position": position, "chunk": 0, "item": 0, "worker": None}


class MixtureDataLoader:
    """A ``torch.utils.data.DataLoader`` over a MixtureDataset whose state is the global position, so a
    run can resume with another ``num_workers`` or world size (global batch fixed)."""

    def __init__(self, dataset: MixtureDataset, num_workers: int = 0, **kwargs):
        if "batch_size" in kwargs or "shuffle" in kwargs or kwargs.get("persistent_workers"):
            raise ValueError(
                "MixtureDataLoader sets batch_size from the dataset and keeps no persistent workers; "
                "set batch_size on MixtureDataset"
            )
        self.dataset, self.num_workers, self.kwargs = dataset, num_workers, kwargs
        self._position = 0
        self.load_state_dict(dataset.state_dict())

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.dataset.load_state_dict(self.state_dict())
        loader = DataLoader(self.dataset, batch_size=self.dataset.batch_size, num_workers=self.num_workers,
                            **self.kwargs)  # fmt: skip
        for batch in loader:
            self._position += self.dataset.global_batch
            yield batch

    def state_dict(self) -> dict:
        d = self.dataset
        return {"version": STATE_VERSION, "config": d.config_hash, "world_size": d.world_size,
                "batch_size": d.batch_size, "position": self._position, "chunk": 0, "item": 0, "worker": None}  # fmt: skip

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("worker") is not None:
            raise ValueError(
                "this dataset state was saved mid-batch or inside a DataLoader worker: resume it with the "
                "same num_workers (torchdata's StatefulDataLoader does), or save MixtureDataLoader states"
            )
        self._position = self.dataset._checked_state(state)["position"]
