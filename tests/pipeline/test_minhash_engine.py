"""Both MinHash signature engines, through datatrove's own bucket, cluster and filter stages, against planted
near-duplicates whose similarity is measured by brute force (word 5-gram sets), not assumed."""

from __future__ import annotations

import random

import orjson
import pytest
from datatrove.data import Document
from datatrove.io import get_datafolder
from datatrove.pipeline.dedup.minhash import read_sigs
from near_duplicates import distinct_bases, jaccard, kept_after_dedup, plant
from realtext import read_jsonl_zst

from motif_data.pipeline.config import MINHASH_ENGINES, DedupConfig
from motif_data.pipeline.dedup import minhash_config, signature_step


def _texts(corpus) -> list[str]:
    return [
        orjson.loads(x)["text"]
        for key in ("web", "specialized", "academic")
        for x in read_jsonl_zst(corpus[key])
    ]


def _doc(i: int, text: str, domain: str) -> Document:
    return Document(text=text, id=f"{domain}-{i}", metadata={"domain": domain})


@pytest.mark.parametrize("engine", MINHASH_ENGINES)
def test_removes_exactly_the_planted_near_duplicates_and_keeps_other_domains(engine, corpus, tmp_path):
    rng = random.Random(0)
    bases = distinct_bases(_texts(corpus), 110)
    assert len(bases) == 110
    near: dict[int, str] = {}  # base index → its planted near-duplicate
    far = []
    for i, b in enumerate(
        bases[:40]
    ):  # clearly above any LSH threshold in use: P(band hit) > 0.999 at 20×20, 45×25
        if (v := plant(b, 0.96, rng)) and v[1] >= 0.95:
            near[i] = v[0]
    for b in bases[40:80]:  # clearly below: P < 1e-4
        if (v := plant(b, 0.45, rng)) and v[1] < 0.5:
            far.append(v[0])
    assert len(near) >= 30 and len(far) >= 30
    academic = bases[:80] + list(near.values()) + far
    order = list(range(len(academic)))
    rng.shuffle(order)  # pairs are spread over both ranks' files
    docs = [_doc(i, academic[i], "academic") for i in order]
    # the same texts, and near-duplicates of texts only in academic, in another domain: nothing to remove there
    others = bases[80:110] + bases[:20] + [v for i, v in near.items() if i >= 20]
    other = [_doc(i, t, "specialized") for i, t in enumerate(others)]
    half = len(docs) // 2
    kept = kept_after_dedup(
        [docs[:half] + other[:25], docs[half:] + other[25:]], DedupConfig(engine=engine), tmp_path
    )
    assert {d.id for d in other} <= kept
    removed = {d.id for d in docs} - kept
    pairs = [{f"academic-{i}", f"academic-{80 + k}"} for k, i in enumerate(near)]
    assert len(removed) == len(pairs)
    assert all(
        len(pair & removed) == 1 for pair in pairs
    )  # one of each planted pair, whichever datatrove keeps


def test_rensa_signatures_agree_with_brute_force_jaccard(corpus, tmp_path):
    rng = random.Random(1)
    bases = distinct_bases(_texts(corpus), 12)
    targets = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4] * 2
    pairs = [(b, v[0]) for b, t in zip(bases, targets, strict=True) if (v := plant(b, t, rng))]
    assert len(pairs) >= 10
    cfg = DedupConfig(engine="rensa", bands=100, rows=10)  # 1000 hashes: an estimate's sd is ≤ 0.016
    docs = [_doc(i, t, "academic") for i, pair in enumerate(pairs) for t in pair]
    signature_step(cfg, str(tmp_path)).run(iter(docs))
    sigs: dict[int, list] = {}
    mcfg = minhash_config(cfg)
    for band in range(cfg.bands):
        file = get_datafolder(str(tmp_path)).open(f"bucket_{band:03d}/00000.minhash.sig", mode="rb")
        for s in read_sigs(file, 0, mcfg):  # datatrove's reader, which also checks the sort order
            sigs.setdefault(s.doc_id, []).extend(s.sig)
    assert sorted(sigs) == list(range(len(docs)))
    for k, (a, b) in enumerate(pairs):
        x, y = sigs[2 * k], sigs[2 * k + 1]
        estimate = sum(p == q for p, q in zip(x, y, strict=True)) / len(x)
        assert abs(estimate - jaccard(a, b)) < 0.07, (k, estimate, jaccard(a, b))


def test_rensa_signature_files_are_the_same_on_every_run(corpus, tmp_path):
    docs = [_doc(i, t, "web") for i, t in enumerate(_texts(corpus)[:300])]
    for run in ("a", "b"):
        signature_step(DedupConfig(engine="rensa"), str(tmp_path / run)).run(iter(docs))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.sig"))
    assert len(files) == DedupConfig().bands
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
