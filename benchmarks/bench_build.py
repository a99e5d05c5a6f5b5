"""Corpus-builder speed and memory on the shared samples, each figure next to an anchor measured in this run.

    python benchmarks/bench_build.py            # everything (≈ 4 min on 2 cores)
    python benchmarks/bench_build.py --quick    # skip the end-to-end build

Prints: end-to-end docs/s and MB/s per core (configs/shared-sample.toml); the tokenize+write stage alone on the
Korean Wikipedia .jsonl.zst (one core, peak RSS, at 1× and 3× the input) against a bare datatrove JsonlReader +
tiktoken o200k loop; datatrove's own DocumentTokenizer (HF tokenizers on o200k exported to tokenizer.json) on the
same documents; the dedup stages alone. Each single-core measurement runs in its own process so that its peak
RSS is its own. CPU timings on a shared machine are noisy: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOTIF_SHARED", ROOT.parent / "shared"))
KOREAN = SHARED / "data/korean/kowiki_train.jsonl.zst"
O200K = SHARED / "tokenizers/o200k_base.tiktoken"
META = {"source": "kowiki", "domain": "korean"}


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


def _child(kind: str, path: Path, work: Path) -> dict:
    """One measurement, in this (fresh) process; returns seconds, CPU seconds and peak RSS."""
    from datatrove.executor import LocalPipelineExecutor

    start, cpu0 = time.perf_counter(), time.process_time()
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
    elif kind == "dedup":
        from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
        from datatrove.pipeline.dedup.exact_dedup import (
            ExactDedupFilter,
            ExactDedupSignature,
            ExactFindDedups,
        )

        from motif_data.pipeline.config import DedupConfig
        from motif_data.pipeline.dedup import DomainMinhashSignature, exact_config, minhash_config

        ecfg, mcfg = exact_config(), minhash_config(DedupConfig())
        w = str(work)
        plan = [
            ([_reader(path), ExactDedupSignature(f"{w}/es", config=ecfg)], 1),
            ([ExactFindDedups(f"{w}/es", f"{w}/ed", ecfg)], 1),
            ([_reader(path), ExactDedupFilter(f"{w}/ed", ecfg), DomainMinhashSignature(f"{w}/ms", mcfg)], 1),
            ([MinhashDedupBuckets(f"{w}/ms", f"{w}/mb", config=mcfg)], mcfg.num_buckets),
            ([MinhashDedupCluster(f"{w}/mb", f"{w}/mr", config=mcfg)], 1),
            ([_reader(path), ExactDedupFilter(f"{w}/ed", ecfg), MinhashDedupFilter(f"{w}/mr")], 1),
        ]
        for i, (steps, tasks) in enumerate(plan):
            LocalPipelineExecutor(steps, tasks=tasks, workers=1, logging_dir=f"{w}/logs{i}").run()
    return {
        "seconds": time.perf_counter() - start,
        "cpu": time.process_time() - cpu0,
        "rss_mb": _peak_rss_mb(),
    }


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak across fork+exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(kind: str, path: Path, work: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--input", str(path), "--work", str(work)],
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
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, Path(args.input), Path(args.work))))
        return

    import datatrove
    import tiktoken
    import tokenizers

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
        f"datatrove {datatrove.__version__ if hasattr(datatrove, '__version__') else '0.10'}, tiktoken {tiktoken.__version__}, "
        f"tokenizers {tokenizers.__version__}"
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

        work = tmp / "dedup"
        work.mkdir()
        r = _measure("dedup", KOREAN, work)
        print("\ndedup alone (exact + MinHash 5-grams, 20 bands × 20 rows, all stages, 1 core), same file:")
        print(hdr)
        print(_row("dedup stages", mb, docs, r))

        if not args.quick:
            from motif_data.pipeline import build, load_config

            config = load_config(ROOT / "configs/shared-sample.toml")
            out = tmp / "e2e"
            stage_times: list[str] = []
            # CPU time is not reported here: datatrove's pool workers are children of a forkserver, not ours
            t0 = time.perf_counter()
            build(config, out=out, log=lambda m: stage_times.append(m) if "done in" in m else None)
            wall = time.perf_counter() - t0
            stats = json.loads((out / "stats.json").read_text())["sources"]
            read = sum(row["read"] for rows in stats.values() for row in rows.values())
            text_mb = 0.0
            for s in config.sources:
                from motif_data.pipeline.config import expand_paths
                from motif_data.pipeline.readers import read_records

                for f in expand_paths(s):
                    for rec, _ in read_records(s, f):
                        if rec and isinstance(rec.get(s.text_field), str):
                            text_mb += len(rec[s.text_field].encode("utf-8")) / 1e6
            cores = min(config.executor.workers, os.cpu_count() or 1)
            print(
                f"\nend to end, configs/shared-sample.toml ({len(config.sources)} sources, {read:,} records, "
                f"{text_mb:.1f} MB of text), {config.executor.tasks} tasks on {cores} workers:"
            )
            print(
                f"  wall {wall:.1f} s → {read / wall:,.0f} docs/s, {text_mb / wall:.2f} MB/s; "
                f"per core {read / wall / cores:,.0f} docs/s, {text_mb / wall / cores:.2f} MB/s"
            )
            for line in stage_times:
                print(f"  {line}")
        print(f"\nload average after: {os.getloadavg()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
