"""Loader throughput, time to first batch and resume identity on one set of tokens, in one run: ours in
process and with 1, 2 and 4 DataLoader workers, raw memmap slicing (the limit), litdata and Mosaic streaming
(each on the same packed windows, with its preparation time).

The peers are benchmark-only installs. ``pip install litdata mosaicml-streaming`` pulls torchvision and with
it a CUDA torch; this keeps torch as it is (check ``python -c "import torch; print(torch.__version__)"``):

    pip install --no-deps litdata==0.2.76 mosaicml-streaming==0.13.0 lightning-utilities==0.15.3
    pip install boto3 Brotli python-snappy zstd catalogue   # what the two import at start-up; no torch

torchvision stays out: PyPI's wheels are built against CUDA torch and fail to load beside a CPU build, and
Mosaic's top-level package imports its vision datasets, so the script imports it with stand-ins for the two
torchvision names those modules use (``_import_mosaic``). Mosaic pins numpy<2.2; it runs here with numpy 2.4.

Tokens: random ids in our shard format, eight domains, documents of 20-2,000 tokens; packed windows of
seq_len + 1 tokens; batches of ``--batch``; domains mixed at Motif's initial weights (the motif-2.6b
preset). Throughput is wall time after a warm-up, page cache warm; the machine's load is printed with it.

    python benchmarks/bench_loader.py [--dir /tmp/motif_bench_loader] [--seconds 3]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.machinery
import importlib.metadata
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import sys
import time
import types
import warnings
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
warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on 2 cores: meant
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # Mosaic's collate
WORKERS = (0, 1, 2, 4)
RESUMES = [  # phases (world_size, num_workers, global batches), each resuming the previous one's state
    ("workers 2 -> 4 -> 0", [(1, 2, 16), (1, 4, 16), (1, 0, 16)]),
    ("world 1 -> 2 -> 4 (global batch kept)", [(1, 0, 16), (2, 1, 16), (4, 0, 16)]),
]


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


# -- the peers: litdata and Mosaic streaming on the same packed windows ---------------------------------------


@functools.lru_cache(maxsize=1)
def domain_windows(path: Path, name: str, span: int) -> np.ndarray:
    """A domain's packed windows, (n, span) int32: its shards' tokens in manifest order cut every ``span``
    tokens, the windows our loader draws from."""
    manifest = Manifest.load(path)
    tokens = np.concatenate(
        [
            np.memmap(manifest.root / s.path, dtype=TOKEN_DTYPE, mode="r")
            for s in manifest.domains[name].shards
        ]
    )
    n = len(tokens) // span
    return tokens[: n * span].view(np.int32).reshape(n, span)


def _litdata_item(path: Path, name: str, span: int, per: int, i: int) -> Iterator[torch.Tensor]:
    yield torch.from_numpy(
        np.ascontiguousarray(domain_windows(path, name, span)[i * per : (i + 1) * per]).ravel()
    )


def _prepared(root: Path, make: Callable[[Path], None]) -> float:
    """Seconds ``make`` took to write ``root`` (measured when it ran, reused with the output afterwards)."""
    done = root / "prepared_seconds.json"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        make(root)
        done.write_text(json.dumps(time.perf_counter() - t))
    return json.loads(done.read_text())


def prepare_litdata(path: Path, root: Path, span: int, per: int = 512) -> float:
    """``litdata.optimize`` of every domain's windows into TokensLoader chunks of ``per`` windows (2 processes)."""
    from litdata import TokensLoader, optimize

    def make(root: Path) -> None:
        for name in DOMAINS:
            n = len(domain_windows(path, name, span))
            optimize(fn=functools.partial(_litdata_item, path, name, span, per), inputs=list(range(-(-n // per))),
                     output_dir=str(root / name), chunk_size=span * per, item_loader=TokensLoader(),
                     num_workers=2, verbose=False)  # fmt: skip

    return _prepared(root, make)


def prepare_mds(path: Path, root: Path, span: int) -> float:
    """Mosaic's ``MDSWriter``, one sample (an int32 ndarray of ``span`` tokens) per window, a folder per domain."""
    from streaming import MDSWriter

    def make(root: Path) -> None:
        for name in DOMAINS:
            with MDSWriter(
                out=str(root / name), columns={"tokens": f"ndarray:int32:{span}"}, size_limit=1 << 26
            ) as w:
                for row in domain_windows(path, name, span):
                    w.write({"tokens": row})

    return _prepared(root, make)


def litdata_loader(root: Path, weights: dict[str, float], span: int, batch: int, workers: int):
    """``CombinedStreamingDataset`` over one shuffled ``StreamingDataset`` per domain, at the schedule's
    initial weights, in a ``StreamingDataLoader``."""
    from litdata import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset, TokensLoader

    names = [n for n in DOMAINS if weights.get(n)]
    datasets = [StreamingDataset(str(root / n), item_loader=TokensLoader(block_size=span), shuffle=True, seed=0)
                for n in names]  # fmt: skip
    combined = CombinedStreamingDataset(
        datasets, seed=0, weights=[weights[n] for n in names], iterate_over_all=False
    )
    return StreamingDataLoader(combined, batch_size=batch, num_workers=workers)


def mosaic_loader(root: Path, weights: dict[str, float], batch: int, workers: int, clean: bool = True):
    """Mosaic's ``StreamingDataset`` with one ``Stream(proportion=weight)`` per domain, shuffled, in its
    ``StreamingDataLoader``; batches are ``{"tokens": (batch, span) int32}``."""
    from streaming import Stream, StreamingDataLoader, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    if clean:  # a previous loader of this process leaves its shared memory behind (never with ranks alive)
        clean_stale_shared_memory()
    streams = [Stream(local=str(root / n), proportion=w) for n, w in weights.items() if w]
    ds = StreamingDataset(streams=streams, shuffle=True, shuffle_seed=0, batch_size=batch)
    return StreamingDataLoader(ds, batch_size=batch, num_workers=workers)


def _import_mosaic() -> None:
    """Import ``streaming`` where torchvision cannot load: its top-level package imports its vision datasets,
    which subclass torchvision's, and PyPI's torchvision wheels are built against CUDA torch (their ``_C.so``
    needs ``libc10_cuda.so``). The text path never touches them, so stand-ins are enough for the import."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        for key in [k for k in sys.modules if k.startswith("torchvision")]:
            del sys.modules[key]
        names = (
            "torchvision",
            "torchvision.datasets",
            "torchvision.transforms",
            "torchvision.transforms.functional",
        )
        mods = {n: types.ModuleType(n) for n in names}
        for n, m in mods.items():
            m.__spec__ = importlib.machinery.ModuleSpec(n, None)
        mods["torchvision.datasets"].VisionDataset = type("VisionDataset", (), {})
        mods["torchvision.datasets"].CIFAR10 = None
        mods["torchvision.transforms.functional"].to_tensor = None
        mods["torchvision"].datasets, mods["torchvision"].transforms = mods["torchvision.datasets"], mods[
            "torchvision.transforms"]  # fmt: skip
        mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
        sys.modules.update(mods)
    import streaming  # noqa: F401


def _epochs(loader) -> Iterator:
    """The loader's batches, epoch after epoch: both peers' streams end where ours repeats a domain."""
    while True:
        yield from loader


def warm_page_cache(root: Path) -> None:
    """Read every file under ``root`` once, so that each row measures the loader, not the disk."""
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass


def _tokens(batch) -> torch.Tensor:
    return batch["tokens"] if isinstance(batch, dict) else batch


def _peer_rank(kind: str, root: str, weights: dict, span: int, batch: int, rank: int, world: int, port: int,
               workers: int, state, steps: int, out) -> None:  # fmt: skip
    """One rank of a peer loader (a process of its own, as in training): ``steps`` batches after ``state``;
    puts (rank, rows' sha256 per batch, state_dict after them) on ``out``."""
    mp.set_start_method("fork", force=True)  # DataLoader workers inherit the torchvision stand-ins
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    try:
        if kind == "litdata":  # else Mosaic
            if world > 1:
                torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
            loader = litdata_loader(Path(root), weights, span, batch, workers)
        else:
            _import_mosaic()
            loader = mosaic_loader(Path(root), weights, batch, workers, clean=False)
        if state is not None:
            loader.load_state_dict(state)
        rows = []
        for _, b in zip(range(steps), loader, strict=False):
            rows.append([hashlib.sha256(r.tobytes()).hexdigest() for r in _tokens(b).numpy()])
        out.put((rank, rows, loader.state_dict()))
    except Exception as e:  # reported, not raised: a refusal is a result
        out.put((rank, None, f"{type(e).__name__}: {str(e).splitlines()[0][:230] if str(e) else ''}"))


def peer_stream(
    kind: str, root: Path, weights: dict, span: int, batch: int, layout: list[tuple[int, int, int]]
):
    """The global stream of a peer read in phases ``(world_size, num_workers, steps)`` with the global batch
    kept at ``batch``, each phase's ranks loading rank 0's state of the previous one: a list of global
    batches (lists of row hashes, rank by rank), or the error that stopped it."""
    ctx, stream, state = mp.get_context("spawn"), [], None
    for world, workers, steps in layout:
        if kind == "Mosaic":  # what the previous phase's ranks left, while no rank runs
            from streaming.base.util import clean_stale_shared_memory

            clean_stale_shared_memory()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = ctx.Queue()
        procs = [ctx.Process(target=_peer_rank, args=(kind, str(root), weights, span, batch // world, r, world, port,
                                                      workers, state, steps, out)) for r in range(world)]  # fmt: skip
        for p in procs:
            p.start()
        results = dict((r, (rows, st)) for r, rows, st in (out.get(timeout=600) for _ in procs))
        for p in procs:
            p.join()
        errors = [st for rows, st in results.values() if rows is None]
        if errors:
            return errors[0]
        per_rank = [results[r][0] for r in range(world)]
        if any(len(rows) < steps for rows in per_rank):
            return f"stopped after {min(len(rows) for rows in per_rank)} of {steps} batches"
        stream += [sum(rows, []) for rows in zip(*per_rank, strict=True)]
        state = results[0][1]
    return stream


def same_stream(got, reference) -> str:
    if isinstance(got, str):
        return f"refused or failed ({got})"
    if got == reference:
        return "identical"
    if [sorted(b) for b in got] == [sorted(b) for b in reference]:
        return "same sequences per global batch, order inside it differs"
    seen = [h for b in got for h in b]
    repeats = len(seen) - len(set(seen))
    return f"DIFFERENT ({repeats} repeated of {len(seen)}; {len(set(seen) - {h for b in reference for h in b})} not in the reference)"


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
    warm_page_cache(path.parent)
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
    for label, layout in RESUMES:
        got = stream_hash(path, sched, L, B, layout)
        print(
            f"  ours, {label:<38} {got}  {'identical' if got == reference else 'DIFFERENT'} (uninterrupted {reference})"
        )

    weights = dict(sched.weights_at(0))
    lit_root, mds_root = path.parent / f"litdata-{span}", path.parent / f"mds-{span}"
    peers = [  # label, package, importer, preparation, loader of num_workers
        ("litdata", "litdata", lambda: importlib.import_module("litdata"),
         lambda: prepare_litdata(path, lit_root, span), lambda w: litdata_loader(lit_root, weights, span, B, w)),
        ("Mosaic", "mosaicml-streaming", _import_mosaic,
         lambda: prepare_mds(path, mds_root, span), lambda w: mosaic_loader(mds_root, weights, B, w)),
    ]  # fmt: skip
    print("\npeers, on the same packed windows (benchmark-only installs, see the docstring)")
    for label, package, importer, prepare, loader in peers:
        try:
            importer()
        except Exception as e:
            print(f"  {package}: cannot run here ({type(e).__name__}: {e}); not measured")
            continue
        print(
            f"  {package} {_version(package)}: prepared in {prepare():.1f} s (made by this run or an earlier one)"
        )
        for workers in (0, 2):
            name = f"{label}, {'in process' if workers == 0 else f'{workers} workers'}"
            measure(name, lambda w=workers, make=loader: _epochs(make(w)))
        root = lit_root if label == "litdata" else mds_root
        reference = peer_stream(label, root, weights, span, B, [(1, 0, 48)])
        if isinstance(reference, str):
            print(f"  {label}: the uninterrupted run failed: {reference}")
            continue
        for what, layout in RESUMES:
            got = peer_stream(label, root, weights, span, B, layout)
            print(f"  {label}, {what:<38} {same_stream(got, reference)}", flush=True)

    in_process, two = rows["ours, in process"][0], rows["ours, 2 workers"][0]
    lit = rows.get("litdata, 2 workers", (float("nan"), 0))[0]
    print(f"\nacceptance: in process {in_process / rows['raw memmap slicing (limit)'][0]:.2f}x the limit (>= 0.5); "
          f"2 workers {two / in_process:.2f}x in process (>= 0.5) and {two / lit:.2f}x litdata's 2 workers (>= 2)")  # fmt: skip
    print(f"{load()} after")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
