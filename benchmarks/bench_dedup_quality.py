"""MinHash dedup quality of both signature engines, through datatrove's bucket, cluster and filter stages.

    python benchmarks/bench_dedup_quality.py                          # 20×20 and 45×25 (the default)
    python benchmarks/bench_dedup_quality.py --shapes 20x20 40x24     # bands x rows to compare

Real documents (../shared/data, or $MOTIF_SHARED; else the text the test install brings) each get one planted
edit whose brute-force Jaccard on word 5-grams is 0.95, 0.9, 0.85, 0.8 or 0.7 (±0.015). A pair counts as found
when the dedup keeps exactly one of the two. Prints, per engine and shape, the share found at each level next
to the LSH S-curve 1 - (1 - J^rows)^bands, recall at J ≥ 0.9, false positives at J ≤ 0.7 and the seconds
the four dedup stages took (one core). Acceptance: recall ≥ 0.95, false positives ≤ 1 %.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOTIF_SHARED", ROOT.parent / "shared"))
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests/pipeline")]  # the tests' planting and dedup helpers

from near_duplicates import distinct_bases, kept_after_dedup, plant  # noqa: E402

LEVELS = (0.95, 0.9, 0.85, 0.8, 0.7, 0.7)  # 0.7 twice: false positives are the rarer event to count
SHARED_FILES = (
    "web/dclm_samples.jsonl.zst",
    "academic/arxiv_abstracts.jsonl.zst",
    "specialized/pubmedqa.jsonl.zst",
    "code/github_sources.jsonl.zst",
    "multilingual/xquad_contexts.jsonl.zst",
    "korean/kowiki_train.jsonl.zst",
)


def _texts(per_file: int) -> tuple[str, list[str]]:
    from realtext import read_jsonl_zst, write_corpus

    if (SHARED / "data").is_dir():
        paths = [SHARED / "data" / f for f in SHARED_FILES]
        where = f"{SHARED / 'data'}"
    else:
        corpus = write_corpus(Path(tempfile.mkdtemp(prefix="bench_quality.")))
        paths = [corpus[k] for k in ("web", "specialized", "academic", "code", "korean_articles")]
        where = "texts the install brings (tests/realtext.py)"
    texts = [orjson.loads(x)["text"] for p in paths for x in read_jsonl_zst(p, per_file)]
    return where, texts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", nargs="+", default=["20x20", "45x25"], help="bands x rows")
    p.add_argument("--bases", type=int, default=900)
    args = p.parse_args()

    from importlib.metadata import version

    from datatrove.data import Document
    from loguru import logger

    logger.disable("datatrove")  # its per-bucket progress lines would bury the table

    from motif_data.pipeline.config import MINHASH_ENGINES, DedupConfig

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}; "
        f"python {platform.python_version()}, datatrove {version('datatrove')}, rensa {version('rensa')}"
    )
    where, texts = _texts(400)
    rng = random.Random(0)
    rng.shuffle(texts)
    start = time.perf_counter()
    bases = distinct_bases(texts, args.bases)
    planted: list[tuple[float, int, str]] = []  # (level, base index, edit)
    for i, b in enumerate(bases):
        level = LEVELS[i % len(LEVELS)]
        if edit := plant(b, level, rng):
            planted.append((level, i, edit[0]))
    print(
        f"{len(bases)} real documents from {where}, {len(planted)} planted pairs "
        f"({time.perf_counter() - start:.0f} s to plant and measure)"
    )
    docs = [Document(text=t, id=f"b{i}", metadata={"domain": "web"}) for i, t in enumerate(bases)]
    docs += [Document(text=t, id=f"e{k}", metadata={"domain": "web"}) for k, (_, _, t) in enumerate(planted)]
    rng.shuffle(docs)
    levels = sorted(set(LEVELS), reverse=True)
    counts = {lv: sum(p[0] == lv for p in planted) for lv in levels}
    head = "".join(f"{f'J={lv} ({counts[lv]})':>16}" for lv in levels)
    print(f"\n{'engine':<10}{'bands×rows':>11}{head}{'recall≥0.9':>12}{'FP≤0.7':>9}{'dedup s':>9}")
    for shape in args.shapes:
        bands, rows = map(int, shape.split("x"))
        curve = "".join(f"{1 - (1 - lv**rows) ** bands:>16.3f}" for lv in levels)
        print(f"{'S-curve':<10}{shape:>11}{curve}")
        for engine in MINHASH_ENGINES[::-1]:  # the anchor first
            cfg = DedupConfig(engine=engine, bands=bands, rows=rows)
            with tempfile.TemporaryDirectory() as work:
                t0 = time.perf_counter()
                kept = kept_after_dedup([docs[::2], docs[1::2]], cfg, Path(work))
                seconds = time.perf_counter() - t0
            found = {lv: 0 for lv in levels}
            for k, (level, i, _) in enumerate(planted):
                found[level] += (f"b{i}" in kept) != (f"e{k}" in kept)
            rate = {lv: found[lv] / counts[lv] for lv in levels}
            high = [lv for lv in levels if lv >= 0.9]
            recall = sum(found[lv] for lv in high) / sum(counts[lv] for lv in high)
            cells = "".join(f"{rate[lv]:>16.3f}" for lv in levels)
            print(f"{engine:<10}{shape:>11}{cells}{recall:>12.3f}{rate[0.7]:>9.3%}{seconds:>9.1f}")


if __name__ == "__main__":
    main()
