"""Exact and MinHash dedup against a synthetic set with known injected duplicates (precision and recall)."""

from __future__ import annotations

import json
import random
import re

import orjson
from realtext import read_jsonl_zst, write_jsonl_zst

from motif_data.pipeline import BuildConfig, build

_WORD = re.compile(r"\w+")


def jaccard_5gram(a: str, b: str) -> float:
    """Reference similarity, written independently of datatrove: lower-cased word 5-gram sets."""

    def grams(t: str) -> set:
        w = _WORD.findall(t.lower())
        return {tuple(w[i : i + 5]) for i in range(len(w) - 4)}

    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


def _substitute(text: str, k: int, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), k):
        words[i] = f"zq{rng.randrange(10**6)}"
    return " ".join(words)


def test_dedup_precision_and_recall_on_injected_duplicates(corpus, o200k_path, tmp_path):
    rng = random.Random(0)
    # long real documents of several kinds: web pages, licences, docstrings citing literature
    texts = [
        orjson.loads(x)["text"]
        for key in ("web", "specialized", "academic")
        for x in read_jsonl_zst(corpus[key])
    ][:400]
    bases: list[str] = []
    for t in texts:  # bases must be far from each other, or "duplicates" would be ambiguous
        if len(t.split()) >= 120 and all(jaccard_5gram(t, b) < 0.3 for b in bases):
            bases.append(t)
        if len(bases) == 160:
            break
    assert len(bases) == 160
    exact, near, far = [], [], []
    for b in bases[:30]:
        exact.append((b, "  " + b.replace(" ", "  ", 3) + "\n"))  # same text after whitespace normalization
    for b in bases[30:90]:
        v = _substitute(b, 1, rng)
        if jaccard_5gram(b, v) >= 0.9:
            near.append((b, v))
    for b in bases[90:130]:
        for k in range(2, 40):  # the fewest edits that bring similarity to 0.7 or below
            v = _substitute(b, k, rng)
            if jaccard_5gram(b, v) <= 0.7:
                break
        if jaccard_5gram(b, v) >= 0.4:
            far.append((b, v))
    assert len(near) >= 50 and len(far) >= 25
    academic = bases + [v for _, v in exact + near + far]
    rng.shuffle(academic)
    specialized = bases[130:150]  # the same texts in another domain are not duplicates of these

    def write(name: str, docs: list[str]) -> str:
        path = tmp_path / f"{name}.jsonl.zst"
        write_jsonl_zst(path, [orjson.dumps({"id": f"{name}-{i}", "text": t}) for i, t in enumerate(docs)])
        return str(path)

    half = len(academic) // 2
    cfg = {
        "output": str(tmp_path / "out"),
        "tokenizer": {"path": str(o200k_path)},
        "executor": {"kind": "local", "tasks": 2, "workers": 1},
        "sources": [
            {"name": "a1", "format": "jsonl", "paths": [write("a1", academic[:half])], "domain": "academic"},
            {"name": "a2", "format": "jsonl", "paths": [write("a2", academic[half:])], "domain": "academic"},
            {"name": "s", "format": "jsonl", "paths": [write("s", specialized)], "domain": "specialized"},
        ],
    }
    manifest = build(BuildConfig.from_dict(cfg))
    from motif_data.tokenizer import load_base

    enc = load_base(o200k_path)
    kept: dict[str, set[str]] = {}
    for d in ("academic", "specialized"):
        kept[d] = set()
        for shard in manifest.domains[d].shards:
            r = manifest.open_shard(shard)
            kept[d] |= {enc.decode(r.document(i)[:-1].tolist()) for i in range(r.num_documents)}
    removed = set(academic) - kept["academic"]
    assert kept["specialized"] == set(specialized)

    def collapsed(pairs):  # exactly one of the pair survives
        return sum((a in kept["academic"]) != (b in kept["academic"]) for a, b in pairs)

    injected = exact + near
    true_removals = collapsed(injected)
    precision = true_removals / len(removed)
    recall_exact = collapsed(exact) / len(exact)
    recall_near = collapsed(near) / len(near)
    print(
        f"\ndedup: {len(exact)} exact + {len(near)} near (J≥0.9) injected, {len(far)} far (0.4≤J≤0.7); "
        f"removed {len(removed)}; precision {precision:.3f}, recall exact {recall_exact:.3f}, near {recall_near:.3f}"
    )
    assert recall_exact == 1.0
    assert recall_near >= 0.9
    assert precision >= 0.95
    stats = json.loads((tmp_path / "out/stats.json").read_text())["sources"]
    assert sum(stats[s]["academic"]["exact_duplicates"] for s in ("a1", "a2")) == len(exact)
    assert sum(stats[s]["academic"]["near_duplicates"] for s in ("a1", "a2")) == len(removed) - len(exact)
