"""Helpers of the pipeline tests: slices of the real shared samples and build configs over them."""

from __future__ import annotations

from pathlib import Path

import orjson
import zstandard

# (domain, file, records kept in the slice)
SLICES = [
    ("web", "web/dclm_samples.jsonl.zst", 300),
    ("multilingual", "multilingual/xquad_contexts.jsonl.zst", 120),
    ("korean", "korean/kowiki_train.jsonl.zst", 80),
    ("korean", "korean/nsmc_reviews.jsonl.zst", 400),
    ("academic", "academic/arxiv_abstracts.jsonl.zst", 120),
    ("specialized", "specialized/pubmedqa.jsonl.zst", 60),
    ("code", "code/github_sources.jsonl.zst", 60),
    ("math", "math/gsm8k_train.jsonl.zst", 150),
    ("reasoning", "reasoning/gsm8k_socratic.jsonl.zst", 80),
]
PARQUET = ("korean/kowiki_fineweb2_schema.parquet", 60)


def read_jsonl_zst(path: Path, limit: int | None = None) -> list[bytes]:
    """Raw JSON lines of a .jsonl.zst (split on b"\\n" only)."""
    with open(path, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    lines = [line for line in data.split(b"\n") if line.strip()]
    return lines[:limit] if limit else lines


def write_jsonl_zst(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(line + b"\n" for line in lines)))


def make_slices(data: Path, root: Path) -> dict:
    """``{source name: (domain, path, texts)}`` for slices of every shared sample, in their own formats."""
    import pyarrow.parquet as pq

    out = {}
    for domain, rel, n in SLICES:
        lines = read_jsonl_zst(data / rel, n)
        path = root / Path(rel).name
        write_jsonl_zst(path, lines)
        out[Path(rel).name.split(".")[0]] = (domain, path, [orjson.loads(x)["text"] for x in lines])
    rel, n = PARQUET
    table = pq.read_table(data / rel).slice(0, n)
    path = root / Path(rel).name
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
