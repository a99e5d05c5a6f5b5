"""Loader throughput and start-up, with two baselines measured in the same run.

Builds a synthetic manifest of >= 1,000 shards (written with motif_data.shards, as the builder does), then:
  * start-up: MixtureDataset construction over the manifest, and time to the first item
  * baseline 1: raw memmap slicing of random (seq_len + 1)-token windows into int64 tensors
  * baseline 2: naive open + seek + np.fromfile per sequence
  * ours: MixtureDataset items (mixing, permutation, packing, position_ids) in-process, and
    MixtureDataLoader batches with 0 / 2 / 4 DataLoader workers

    python benchmarks/bench_loader.py [--dir /tmp/bench_loader] [--seq-len 4096] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from motif_data import DOMAINS
from motif_data.mixer import MixtureSchedule
from motif_data.shards import DomainInfo, Manifest, ShardWriter, TokenizerInfo
from motif_data.trainer_hook import MixtureDataLoader, MixtureDataset

EOT = 199_999


def build(root: Path, shards_per_domain: int, tokens_per_shard: int) -> Path:
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
                # documents of ~1,000 tokens on average, written in shard-sized groups for speed
                lengths = rng.integers(20, 2000, size=256)
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


def rate(fn, seconds: float, warm: float = 1.5, clock=time.perf_counter) -> float:
    """Steady-state tokens per second of ``fn`` (returns tokens produced per call), over ``seconds``.

    The first ``warm`` seconds are not counted: every process opens each of the ~1,000 shards once
    (about 0.2 ms each), a start-up cost reported separately. ``clock=time.process_time`` measures the
    CPU time of this process, which other jobs on a shared machine disturb less than wall time.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < warm:
        fn()
    n, w0, c0 = 0, time.perf_counter(), clock()
    while time.perf_counter() - w0 < seconds:
        n += fn()
    return n / (clock() - c0)


class _Prefilled(torch.utils.data.IterableDataset):
    """Anchor for DataLoader workers: batches of the same shape, made shared and written by one copy from
    a template, no data work at all: what moving a batch between processes costs on this machine."""

    def __init__(self, batch: int, span: int):
        super().__init__()
        self.batch, self.span = batch, span

    def __iter__(self):
        template = torch.arange(self.batch * self.span, dtype=torch.int64).reshape(self.batch, self.span)
        while True:
            tokens, positions = torch.empty_like(template), torch.empty_like(template)
            if torch.utils.data.get_worker_info() is not None:
                tokens.share_memory_()
                positions.share_memory_()
            tokens.copy_(template)
            positions.copy_(template)
            yield {
                "input_ids": tokens,
                "domain": torch.zeros(self.batch, dtype=torch.int64),
                "position_ids": positions,
            }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/motif_bench_loader")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--shards-per-domain", type=int, default=128)
    ap.add_argument("--tokens-per-shard", type=int, default=1 << 17)
    ap.add_argument("--batch", type=int, default=16, help="per-rank batch size for the batched rows")
    args = ap.parse_args()
    L = args.seq_len
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}, "
          f"numpy {np.__version__}, torch {torch.__version__}")  # fmt: skip
    print(f"load average before: {os.getloadavg()} (other jobs share this machine: timings are noisy)")
    t = time.perf_counter()
    path = build(Path(args.dir), args.shards_per_domain, args.tokens_per_shard)
    manifest = Manifest.load(path)
    n_shards = sum(len(d.shards) for d in manifest.domains.values())
    total = sum(d.tokens for d in manifest.domains.values())
    print(
        f"build: {n_shards} shards, {total / 1e6:.0f}M tokens ({time.perf_counter() - t:.1f} s to make or find)"
    )
    sched = MixtureSchedule.preset("motif-2.6b")

    t = time.perf_counter()
    ds = MixtureDataset(path, sched, L, seed=0, batch_size=args.batch)
    t_init = time.perf_counter() - t
    first = next(iter(ds))
    t_first = time.perf_counter() - t
    print(f"\nstart-up over {n_shards} shards: construct {t_init * 1e3:.0f} ms, first item {t_first * 1e3:.0f} ms "
          f"(goal <= 1000 ms)")  # fmt: skip
    assert first["input_ids"].shape == (L + 1,)

    # Baselines read the same shards at uniformly random offsets.
    shards = [(path.parent / s.path, s.tokens) for d in manifest.domains.values() for s in d.shards]
    maps = [np.memmap(p, dtype="<u4", mode="r") for p, _ in shards]
    rng = np.random.default_rng(1)

    def raw_memmap(batch=64):
        for _ in range(batch):
            i = int(rng.integers(len(maps)))
            o = int(rng.integers(0, len(maps[i]) - L - 1))
            torch.from_numpy(maps[i][o : o + L + 1].astype(np.int64))
        return batch * (L + 1)

    def naive_fromfile(batch=64):
        for _ in range(batch):
            i = int(rng.integers(len(shards)))
            o = int(rng.integers(0, shards[i][1] - L - 1))
            with open(shards[i][0], "rb") as f:
                f.seek(4 * o)
                torch.from_numpy(np.fromfile(f, dtype="<u4", count=L + 1).astype(np.int64))
        return batch * (L + 1)

    it = iter(ds)

    def ours_items(batch=64):
        for _ in range(batch):
            next(it)
        return batch * (L + 1)

    batches = MixtureDataset(path, sched, L, seed=0, batch_size=args.batch).iter_batches()

    def ours_batches(n=8):
        for _ in range(n):
            next(batches)
        return n * args.batch * (L + 1)

    cpu = time.process_time
    rows = [
        ("baseline: raw memmap slice -> int64 tensor", rate(raw_memmap, args.seconds, clock=cpu)),
        ("baseline: open + np.fromfile per sequence", rate(naive_fromfile, args.seconds, clock=cpu)),
        ("MixtureDataset items (dicts), in-process", rate(ours_items, args.seconds, clock=cpu)),
        (
            f"MixtureDataset.iter_batches({args.batch}), in-process",
            rate(ours_batches, args.seconds, clock=cpu),
        ),
    ]
    r_raw = rows[0][1]
    print(
        f"\nper process, CPU time of this process; seq_len {L}, mixing + permutation + packing + position_ids"
    )
    print(f"{'':<52}{'tokens/s':>12}{'vs raw':>9}")
    for name, r in rows:
        print(f"{name:<52}{r / 1e6:>10.0f} M{r / r_raw:>8.2f}x")
    print("goal: >= 300 M tokens/s per process and >= 0.5x raw slicing")

    print(f"\nthrough torch DataLoader (wall time, batches of {args.batch}); anchor = workers yielding "
          f"prefilled batches of the same shape (the cost of moving batches between processes)")  # fmt: skip
    print(f"{'workers':>8}{'MixtureDataLoader':>20}{'per worker':>13}{'prefilled anchor':>19}")
    for workers in (0, 2, 4):
        loader = iter(
            MixtureDataLoader(
                MixtureDataset(path, sched, L, seed=0, batch_size=args.batch), num_workers=workers
            )
        )
        empty = iter(
            torch.utils.data.DataLoader(_Prefilled(args.batch, L + 1), batch_size=None, num_workers=workers)
        )

        def pull(source, n=4):
            for _ in range(n):
                next(source)
            return n * args.batch * (L + 1)

        r = rate(lambda loader=loader: pull(loader), args.seconds)
        r_empty = rate(lambda empty=empty: pull(empty), args.seconds, warm=0.5)
        print(f"{workers:>8}{r / 1e6:>18.0f} M{r / max(workers, 1) / 1e6:>11.0f} M{r_empty / 1e6:>17.0f} M")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
