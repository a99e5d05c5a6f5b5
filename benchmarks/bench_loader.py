"""Loader throughput, time to first batch and resume identity on one set of tokens, in one run: ours in
process and with 1, 2 and 4 DataLoader workers, raw memmap slicing (the limit), and, where installed
(``pip install -e ".[bench]"``), litdata and Mosaic streaming: not measured yet, the line says why.

Tokens: random ids in our shard format, eight domains, documents of 20-2,000 tokens; packed windows of
seq_len + 1 tokens; batches of ``--batch``; domains mixed at Motif's initial weights (the motif-2.6b
preset). Throughput is wall time after a warm-up, page cache warm; the machine's load is printed with it.

    python benchmarks/bench_loader.py [--dir /tmp/motif_bench_loader] [--seconds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from motif_data import DOMAINS
from motif_data.mixer import MixtureSchedule
from motif_data.shards import TOKEN_DTYPE, DomainInfo, Manifest, ShardWriter, TokenizerInfo
from motif_data.trainer_hook import MixtureDataLoader, MixtureDataset, position_ids

EOT = 199_999
WORKERS = (0, 1, 2, 4)


def build(root: Path, shards_per_domain: int, tokens_per_shard: int) -> Path:
    """A manifest of random documents, written with motif_data.shards as the builder does (kept for reuse)."""
    manifest_path = root / "manifest.json"
    if manifest_path.is_file():
        return manifest_path
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    domains = {}
    for name in DOMAINS:
        with ShardWriter(root / name, name, max_tokens=tokens_per_shard) as w:
            left = shards_per_domain * tokens_per_shard
            while left > 0:
                lengths = rng.integers(20, 2000, size=256)  # written in groups of documents, for speed
                tokens = rng.integers(0, EOT, size=int(lengths.sum()), dtype=np.uint32)
                ends = np.cumsum(lengths)
                tokens[ends - 1] = EOT
                for doc in np.split(tokens, ends[:-1]):
                    w.write(doc)
                left -= len(tokens)
        shards = tuple(replace(s, path=f"{name}/{s.path}") for s in w.shards)
        domains[name] = DomainInfo(sum(s.documents for s in shards), sum(s.tokens for s in shards), shards)
    Manifest(TokenizerInfo("o200k_base", "ab" * 32, 200_019, EOT), domains, root).save(manifest_path)
    return manifest_path


def load() -> str:
    return "load " + "/".join(f"{x:.1f}" for x in os.getloadavg())


def throughput(batches: Iterator, tokens_per_batch: int, seconds: float, warm: float = 1.0) -> float:
    """Tokens per second of wall time over ``seconds``, after ``warm`` seconds not counted (worker start,
    first opening of each shard)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < warm:
        next(batches)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(batches)
        n += 1
    return n * tokens_per_batch / (time.perf_counter() - t0)


def first_batch(make: Callable[[], Iterator]) -> tuple[Iterator, float]:
    """The iterator ``make`` builds and the seconds from calling it to the first batch."""
    t0 = time.perf_counter()
    it = make()
    next(it)
    return it, time.perf_counter() - t0


def raw_memmap(path: Path, batch: int, span: int) -> Iterator[torch.Tensor]:
    """The limit: batches of packed windows sliced from the shards' memmaps at random, copied into one
    int32 tensor, with no mixing, no permutation, no document boundaries."""
    manifest = Manifest.load(path)
    maps = [
        np.memmap(path.parent / s.path, dtype=TOKEN_DTYPE, mode="r").view(np.ndarray)
        for d in manifest.domains.values()
        for s in d.shards
    ]
    windows = [len(m) // span for m in maps]
    rng = np.random.default_rng(1)
    while True:
        out = np.empty((batch, span), dtype=TOKEN_DTYPE)
        for row in range(batch):
            i = int(rng.integers(len(maps)))
            w = int(rng.integers(windows[i]))
            out[row] = maps[i][w * span : (w + 1) * span]
        yield torch.from_numpy(out.view(np.int32))


def stream_hash(path: Path, sched, seq_len: int, batch: int, layout: list[tuple[int, int, int]]) -> str:
    """sha256 of the global stream's tokens and position_ids, read in phases: ``(world_size, num_workers,
    steps)`` each, every phase resuming the previous one's saved state; the global batch stays ``batch``."""
    digest, state = hashlib.sha256(), None
    for world, workers, steps in layout:
        loaders = []
        for rank in range(world):
            ds = MixtureDataset(path, sched, seq_len, 0, rank, world, batch_size=batch // world)
            loader = MixtureDataLoader(ds, num_workers=workers, batches_per_transfer=4)
            if state is not None:
                loader.load_state_dict(state)
            loaders.append(loader)
        for _, *batches in zip(range(steps), *loaders, strict=False):
            for b in batches:  # row by row: the bytes then do not depend on how rows split into ranks
                for ids, pos in zip(b["input_ids"].numpy(), position_ids(b).numpy(), strict=True):
                    digest.update(ids.tobytes() + pos.tobytes())
        state = loaders[0].state_dict()
    return digest.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/motif_bench_loader")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--shards-per-domain", type=int, default=128)
    ap.add_argument("--tokens-per-shard", type=int, default=234_375, help="default: 240 M tokens in all")
    args = ap.parse_args()
    L, B = args.seq_len, args.batch
    span = L + 1
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; python "
          f"{platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}")  # fmt: skip
    print(f"{load()} before (other jobs share this machine)")
    t = time.perf_counter()
    path = build(Path(args.dir) / f"{args.shards_per_domain}x{args.tokens_per_shard}", args.shards_per_domain,
                 args.tokens_per_shard)  # fmt: skip
    manifest = Manifest.load(path)
    n_shards = sum(len(d.shards) for d in manifest.domains.values())
    total = sum(d.tokens for d in manifest.domains.values())
    print(f"tokens: {n_shards} shards, {total / 1e6:.0f} M tokens ({time.perf_counter() - t:.1f} s to make or "
          f"find); windows of {span} tokens, batches of {B}")  # fmt: skip
    sched = MixtureSchedule.preset("motif-2.6b")

    def ours(workers: int) -> Iterator:
        return iter(
            MixtureDataLoader(MixtureDataset(path, sched, L, seed=0, batch_size=B), num_workers=workers)
        )

    print(f"\n{'':<40}{'tokens/s':>10}{'vs limit':>10}{'vs ours 0':>11}{'1st batch':>11}  load")
    rows: dict[str, tuple[float, float]] = {}

    def measure(name: str, make: Callable[[], Iterator], ratio_to: str | None = "ours, in process") -> None:
        it, t_first = first_batch(make)
        r = throughput(it, B * span, args.seconds)
        del it  # workers stop before the next row starts
        rows[name] = (r, t_first)
        limit = rows.get("raw memmap slicing (limit)", (r, 0))[0]
        own = rows.get(ratio_to, (r, 0))[0] if ratio_to else r
        print(f"{name:<40}{r / 1e6:>8.0f} M{r / limit:>9.2f}x{r / own:>10.2f}x{t_first * 1e3:>9.0f} ms  {load()}",
              flush=True)  # fmt: skip

    measure("raw memmap slicing (limit)", lambda: raw_memmap(path, B, span))
    for workers in WORKERS:
        measure("ours, in process" if workers == 0 else f"ours, {workers} workers", lambda w=workers: ours(w))

    print("\nresume: sha256 of tokens + position_ids over 48 global batches, against an uninterrupted run")
    reference = stream_hash(path, sched, L, B, [(1, 0, 48)])
    for label, layout in [
        ("workers 2 -> 4 -> 0", [(1, 2, 16), (1, 4, 16), (1, 0, 16)]),
        ("world 1 -> 2 -> 4 (global batch kept)", [(1, 0, 16), (2, 1, 16), (4, 0, 16)]),
    ]:
        got = stream_hash(path, sched, L, B, layout)
        print(
            f"  ours, {label:<38} {got}  {'identical' if got == reference else 'DIFFERENT'} (uninterrupted {reference})"
        )

    for package in ("litdata", "mosaicml-streaming"):
        # Both need torchvision, which pip resolves to a CUDA torch build: not installed beside torch CPU.
        print(f"  {package}: {_version(package)}; not measured (its comparison is not written yet)")

    in_process, two = rows["ours, in process"][0], rows["ours, 2 workers"][0]
    print(f"\nacceptance: in process {in_process / rows['raw memmap slicing (limit)'][0]:.2f}x the limit (>= 0.5); "
          f"2 workers {two / in_process:.2f}x in process (>= 0.5)")  # fmt: skip
    print(f"{load()} after")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
