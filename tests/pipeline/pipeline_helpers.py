"""Helpers of the pipeline tests: slices of the real-text corpus (tests/realtext.py) and build configs over them."""

from __future__ import annotations

from pathlib import Path

import orjson
from realtext import read_jsonl_zst, write_jsonl_zst

# (domain, corpus key, records kept in the slice); a slice's source is named after its file
SLICES = [
    ("web", "web", 120),
    ("multilingual", "multilingual", 100),
    ("korean", "korean_articles", 80),
    ("korean", "korean_short", 300),
    ("academic", "academic", 100),
    ("specialized", "specialized", 60),
    ("code", "code", 60),
    ("math", "math", 90),
    ("reasoning", "reasoning", 80),
]
PARQUET_ROWS = 60


def make_slices(corpus: dict[str, Path], root: Path) -> dict:
    """``{source name: (domain, path, texts)}`` for slices of every corpus file, in their own formats."""
    import pyarrow.parquet as pq

    out = {}
    for domain, key, n in SLICES:
        lines = read_jsonl_zst(corpus[key], n)
        path = root / corpus[key].name
        write_jsonl_zst(path, lines)
        out[path.name.split(".")[0]] = (domain, path, [orjson.loads(x)["text"] for x in lines])
    table = pq.read_table(corpus["fineweb2"]).slice(0, PARQUET_ROWS)
    path = root / corpus["fineweb2"].name
    pq.write_table(table, path)
    out["fineweb2"] = ("korean", path, table.column("text").to_pylist())
    return out


def slice_config(slices: dict, output: Path, tokenizer: Path, **overrides) -> dict:
    """A config mapping building every slice into its domain (FineWeb-2 rows routed by script)."""
    sources = []
    for name, (domain, path, _) in slices.items():
        if name == "fineweb2":
            sources.append(
                {
                    "name": name,
                    "format": "fineweb2",
                    "paths": [str(path)],
                    "route": [{"script": "Hang", "domain": "korean"}],
                    "default_domain": "multilingual",
                }
            )
        else:
            fmt = "dclm" if domain == "web" else "jsonl"
            sources.append({"name": name, "format": fmt, "paths": [str(path)], "domain": domain})
    cfg = {
        "output": str(output),
        "tokenizer": {"path": str(tokenizer)},
        "executor": {"kind": "local", "tasks": 2, "workers": 1},
        "dedup": {"bands": 20, "rows": 20},
        "sources": sources,
    }
    cfg.update(overrides)
    return cfg


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a finished build except the work folder: what must be byte-identical."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".build" not in p.relative_to(out).parts
    }
