"""Corpus-builder speed and memory on the shared samples, each figure next to an anchor measured in this run.

    python benchmarks/bench_build.py            # everything (≈ 4 min on 2 cores)
    python benchmarks/bench_build.py --quick    # skip the end-to-end build

Prints: end-to-end docs/s and MB/s per core (configs/shared-sample.toml); the tokenize+write stage alone on the
Korean Wikipedia .jsonl.zst (one core, peak RSS, at 1× and 3× the input) against a bare datatrove JsonlReader +
tiktoken o200k loop; datatrove's own DocumentTokenizer (HF tokenizers on o200k exported to tokenizer.json) on the
same documents; the dedup stages alone and the end-to-end build, each with ``dedup.engine = "datatrove"`` (the
anchor) and ``"rensa"``, at ``--dedup BANDSxROWS`` (default 45x25). Each measurement runs in its own process so
that its peak RSS is its own (end to end: the peak of the summed RSS of the process and its datatrove workers).
CPU timings on a shared machine are noisy: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOTIF_SHARED", ROOT.parent / "shared"))
KOREAN = SHARED / "data/korean/kowiki_train.jsonl.zst"
O200K = SHARED / "tokenizers/o200k_base.tiktoken"
META = {"source": "kowiki", "domain": "korean"}
ENGINES = ("datatrove", "rensa")  # the anchor first


def _reader(path: Path):
    from datatrove.pipeline.readers import JsonlReader

    return JsonlReader(str(path.parent), glob_pattern=path.name, compression="zstd", default_metadata=META)


def _text_mb(path: Path) -> tuple[int, float]:
    from datatrove.pipeline.readers import JsonlReader

    docs = nbytes = 0
    for doc in JsonlReader(str(path.parent), glob_pattern=path.name, compression="zstd")():
        docs += 1
        nbytes += len(doc.text.encode("utf-8"))
    return docs, nbytes / 1e6


def _tree_rss_mb() -> float:
    """RSS of this process and all its descendants (datatrove's workers), summed: shared pages count twice."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    pages, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _e2e(engine: str, bands: int, rows: int, work: Path) -> dict:
    """The end-to-end build of configs/shared-sample.toml with this engine; wall and per-stage seconds, peak RSS."""
    from motif_data.pipeline import BuildConfig, build

    config = BuildConfig.load(ROOT / "configs/shared-sample.toml")
    dedup = dataclasses.replace(config.dedup, engine=engine, bands=bands, rows=rows)
    config = dataclasses.replace(config, dedup=dedup)
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], _tree_rss_mb())

    threading.Thread(target=sample, daemon=True).start()
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    # "[3/7] minhash-signatures: done in 12.3 s"
    build(
        config,
        out=work,
        log=lambda m: (
            stages.update({m.split()[1].rstrip(":"): float(m.split()[-2])}) if "done in" in m else None
        ),
    )
    wall = time.perf_counter() - t0
    done.set()
    return {"seconds": wall, "stages": stages, "rss_mb": peak[0], "read": _records_read(work)}


def _records_read(out: Path) -> int:
    stats = json.loads((out / "stats.json").read_text())["sources"]
    return sum(row["read"] for rows in stats.values() for row in rows.values())


def _child(kind: str, path: Path, work: Path, shape: str) -> dict:
    """One measurement, in this (fresh) process; returns seconds, CPU seconds and peak RSS."""
    from datatrove.executor import LocalPipelineExecutor

    bands, rows = map(int, shape.split("x"))
    if kind.startswith("e2e-"):
        return _e2e(kind.removeprefix("e2e-"), bands, rows, work)
    start, cpu0 = time.perf_counter(), time.process_time()
    stages: dict[str, float] = {}
    if kind == "tokenize":
        from motif_data.pipeline.config import FilterConfig, SourceConfig
        from motif_data.pipeline.tokenize import TokenizeStep
        from motif_data.pipeline.write import ShardWriteStep

        src = SourceConfig(name="kowiki", format="jsonl", domain="korean", filters=FilterConfig(min_tokens=0))
        steps = [
            _reader(path),
            TokenizeStep(str(O200K), (src,)),
            ShardWriteStep(str(work / "out"), str(work), 1 << 28),
        ]
        LocalPipelineExecutor(steps, tasks=1, workers=1, logging_dir=str(work / "logs")).run()
    elif kind == "anchor":
        from motif_data.tokenizer import load_base

        enc = load_base(O200K)
        n = 0
        for doc in _reader(path)():
            n += len(enc.encode_ordinary(doc.text)) + 1
    elif kind == "datatrove-tokenizer":
        from datatrove.pipeline.tokens import DocumentTokenizer

        steps = [
            _reader(path),
            DocumentTokenizer(
                str(work / "dt"),
                tokenizer_name_or_path=str(work.parent / "tokenizer.json"),
                eos_token="<|endoftext|>",
                shuffle_documents=False,
            ),
        ]
        LocalPipelineExecutor(steps, tasks=1, workers=1, logging_dir=str(work / "logs")).run()
    elif kind.startswith("dedup-"):
        from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
        from datatrove.pipeline.dedup.exact_dedup import (
            ExactDedupFilter,
            ExactDedupSignature,
            ExactFindDedups,
        )

        from motif_data.pipeline.config import DedupConfig
        from motif_data.pipeline.dedup import exact_config, minhash_config, signature_step

        cfg = DedupConfig(engine=kind.removeprefix("dedup-"), bands=bands, rows=rows)
        ecfg, mcfg = exact_config(), minhash_config(cfg)
        w = str(work)
        plan = [
            ("exact-signatures", [_reader(path), ExactDedupSignature(f"{w}/es", config=ecfg)], 1),
            ("exact-find", [ExactFindDedups(f"{w}/es", f"{w}/ed", ecfg)], 1),
            (
                "minhash-signatures",
                [_reader(path), ExactDedupFilter(f"{w}/ed", ecfg), signature_step(cfg, f"{w}/ms")],
                1,
            ),
            ("minhash-buckets", [MinhashDedupBuckets(f"{w}/ms", f"{w}/mb", config=mcfg)], mcfg.num_buckets),
            ("minhash-clusters", [MinhashDedupCluster(f"{w}/mb", f"{w}/mr", config=mcfg)], 1),
            ("filter", [_reader(path), ExactDedupFilter(f"{w}/ed", ecfg), MinhashDedupFilter(f"{w}/mr")], 1),
        ]
        for i, (name, steps, tasks) in enumerate(plan):
            t = time.perf_counter()
            LocalPipelineExecutor(steps, tasks=tasks, workers=1, logging_dir=f"{w}/logs{i}").run()
            stages[name] = time.perf_counter() - t
    return {
        "seconds": time.perf_counter() - start,
        "cpu": time.process_time() - cpu0,
        "rss_mb": _peak_rss_mb(),
        "stages": stages,
    }


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak across fork+exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(kind: str, path: Path, work: Path, shape: str = "45x25") -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--input",
            str(path),
            "--work",
            str(work),
            "--dedup",
            shape,
        ],
        capture_output=True,
        text=True,
        check=False,
        # single-core figures: HF tokenizers would otherwise spread a batch over every core
        env=os.environ | {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(name: str, mb: float, docs: int, r: dict, anchor_rate: float | None = None) -> str:
    rate = mb / r["seconds"]
    ratio = f"{rate / anchor_rate:.2f}×" if anchor_rate else "—"
    return (
        f"{name:<46}{r['seconds']:>8.1f}{docs / r['seconds']:>10,.0f}{rate:>9.2f}{mb / max(r['cpu'], 1e-9):>10.2f}"
        f"{r['rss_mb']:>10,.0f}{ratio:>9}"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child")
    p.add_argument("--input")
    p.add_argument("--work")
    p.add_argument("--quick", action="store_true", help="skip the end-to-end build")
    p.add_argument("--dedup", default="45x25", help="MinHash bands x rows for both engines")
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, Path(args.input), Path(args.work), args.dedup)))
        return

    from importlib.metadata import version

    import datatrove
    import tiktoken
    import tokenizers

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
        f"datatrove {datatrove.__version__ if hasattr(datatrove, '__version__') else '0.10'}, tiktoken {tiktoken.__version__}, "
        f"tokenizers {tokenizers.__version__}, rensa {version('rensa')}"
    )
    print(f"load average before: {os.getloadavg()}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_build."))
    try:
        docs, mb = _text_mb(KOREAN)
        triple = tmp / "kowiki_x3.jsonl.zst"
        triple.write_bytes(KOREAN.read_bytes() * 3)  # concatenated zstd frames form a valid stream
        from motif_data.tokenizer import load_base
        from motif_data.tokenizer.export import to_hf

        to_hf(load_base(O200K)).save(str(tmp / "tokenizer.json"))
        hdr = f"{'':<46}{'wall s':>8}{'docs/s':>10}{'MB/s':>9}{'MB/cpu-s':>10}{'RSS MB':>10}{'vs anchor':>9}"

        print(f"\nsingle core, Korean Wikipedia .jsonl.zst: {docs:,} docs, {mb:.1f} MB of text")
        print(hdr)
        runs = {}
        for kind, path, scale in [
            ("anchor", KOREAN, 1),
            ("tokenize", KOREAN, 1),
            ("tokenize", triple, 3),
            ("datatrove-tokenizer", KOREAN, 1),
        ]:
            work = tmp / f"{kind}-{scale}"
            work.mkdir()
            runs[(kind, scale)] = _measure(kind, path, work)
            shutil.rmtree(work)
        anchor_rate = mb / runs[("anchor", 1)]["seconds"]
        names = {
            ("anchor", 1): "anchor: datatrove JsonlReader + tiktoken o200k",
            ("tokenize", 1): "ours: read + tokenize + write shards",
            ("tokenize", 3): "ours: read + tokenize + write shards, 3× input",
            ("datatrove-tokenizer", 1): "datatrove DocumentTokenizer (HF tokenizer.json)",
        }
        for key, r in runs.items():
            print(_row(names[key], mb * key[1], docs * key[1], r, anchor_rate))

        print(
            f"\ndedup alone (exact + MinHash 5-grams, {args.dedup.replace('x', ' bands × ')} rows, all stages, 1 core), "
            "same file:"
        )
        print(hdr)
        dedup = {}
        for engine in ENGINES:
            work = tmp / f"dedup-{engine}"
            work.mkdir()
            dedup[engine] = _measure(f"dedup-{engine}", KOREAN, work, args.dedup)
            shutil.rmtree(work)
        anchor = mb / dedup["datatrove"]["seconds"]
        for engine, r in dedup.items():
            print(_row(f"dedup stages, engine {engine}", mb, docs, r, anchor))
        names = list(dedup["datatrove"]["stages"])
        print(f"  {'stage seconds':<26}" + "".join(f"{n:>19}" for n in names))
        for engine, r in dedup.items():
            print(f"  {engine:<26}" + "".join(f"{r['stages'][n]:>19.1f}" for n in names))
        for engine, r in dedup.items():
            sig = r["stages"]["minhash-signatures"]
            print(
                f"  minhash-signatures stage, {engine}: {mb / sig:.2f} MB/s on one core (read + exact filter + sigs)"
            )

        if not args.quick:
            from motif_data.pipeline import BuildConfig
            from motif_data.pipeline.config import expand_paths
            from motif_data.pipeline.readers import read_records

            config = BuildConfig.load(ROOT / "configs/shared-sample.toml")
            text_mb = 0.0
            for s in config.sources:
                for f in expand_paths(s):
                    for rec, _ in read_records(s, f):
                        if rec and isinstance(rec.get(s.text_field), str):
                            text_mb += len(rec[s.text_field].encode("utf-8")) / 1e6
            cores = min(config.executor.workers, os.cpu_count() or 1)
            runs = {e: _measure(f"e2e-{e}", KOREAN, tmp / f"e2e-{e}", args.dedup) for e in ENGINES}
            read = runs["rensa"]["read"]
            print(
                f"\nend to end, configs/shared-sample.toml ({len(config.sources)} sources, {read:,} records, "
                f"{text_mb:.1f} MB of text), {config.executor.tasks} tasks on {cores} workers, "
                f"dedup {args.dedup}:"
            )
            for engine, r in runs.items():
                wall = r["seconds"]
                print(
                    f"  engine {engine:<10} wall {wall:6.1f} s → {read / wall:,.0f} docs/s, {text_mb / wall:.2f} MB/s; "
                    f"per core {text_mb / wall / cores:.2f} MB/s; peak RSS (all processes) {r['rss_mb']:,.0f} MB; "
                    f"{runs['datatrove']['seconds'] / wall:.2f}× the anchor"
                )
            names = list(runs["datatrove"]["stages"])
            print(f"  {'stage seconds':<17}" + "".join(f"{n:>19}" for n in names))
            for engine, r in runs.items():
                print(f"  {engine:<17}" + "".join(f"{r['stages'].get(n, 0):>19.1f}" for n in names))
        print(f"\nload average after: {os.getloadavg()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
