"""Real text for the tests from what `pip install -e ".[test]"` itself brings: no ../shared is needed.

`write_corpus(root)` writes one file per domain, each in the format a real source of that domain uses,
from the texts the offline demo harvests (`motif_data.demo.sources`): Python's documentation and standard
library, KoNLPy's Korean corpora (the constitution and National Assembly bills), Babel's CLDR locale data,
SymPy docstrings and the licence texts of the installed packages.

| key | file | format |
|---|---|---|
| korean_articles | korean/konlpy_articles.jsonl.zst | wikiextractor-style JSON Lines (`id, url, title, text`) |
| korean_short | korean/konlpy_lines.jsonl.zst | one short document a line of the constitution (`id, text`) |
| fineweb2 | korean/konlpy_fineweb2.parquet | FineWeb-2's parquet schema, as its `kor_Hang` subset |
| web | web/pydoc_dclm.jsonl.zst | DCLM-baseline JSON Lines with DCLM's fields |
| multilingual, academic, specialized, math, reasoning | DOMAIN/NAME.jsonl.zst | `id, text` JSON Lines |
| code | code/stdlib_sources.jsonl.zst | one file a document (`id, repo, path, license, lang, text`), empty files kept |
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from motif_data.demo.sources import OFFLINE_SOURCES, konlpy_corpus, paragraph_groups

__all__ = ["FILES", "write_corpus", "read_jsonl_zst", "write_jsonl_zst"]

FILES = {
    "korean_articles": "korean/konlpy_articles.jsonl.zst",
    "korean_short": "korean/konlpy_lines.jsonl.zst",
    "fineweb2": "korean/konlpy_fineweb2.parquet",
    "web": "web/pydoc_dclm.jsonl.zst",
    "multilingual": "multilingual/cldr_locales.jsonl.zst",
    "academic": "academic/sympy_refs.jsonl.zst",
    "specialized": "specialized/licences.jsonl.zst",
    "code": "code/stdlib_sources.jsonl.zst",
    "math": "math/sympy_ntheory.jsonl.zst",
    "reasoning": "reasoning/sympy_solvers.jsonl.zst",
}
_BUDGET = 400_000  # bytes of text a harvested source gives at most


def read_jsonl_zst(path: Path, limit: int | None = None) -> list[bytes]:
    """Raw JSON lines of a .jsonl.zst (split on b"\\n" only)."""
    with open(path, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    lines = [line for line in data.split(b"\n") if line.strip()]
    return lines[:limit] if limit else lines


def write_jsonl_zst(path: Path, lines: list[bytes]) -> None:
    """JSON lines (bytes, one record each) as one zstd frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(line + b"\n" for line in lines)))


def _write_records(path: Path, records: list[dict]) -> None:
    write_jsonl_zst(path, [orjson.dumps(r) for r in records])


def _harvested(name: str, min_bytes: int | None) -> list[str]:
    """One harvested source's documents, cut to about `min_bytes` each (None: kept whole)."""
    source = next(s for s in OFFLINE_SOURCES if s.name == name)
    docs = list(source.documents(_BUDGET))
    return docs if min_bytes is None else [d for doc in docs for d in paragraph_groups(doc, min_bytes)]


def _korean_articles() -> list[dict]:
    out = []
    for path in sorted((konlpy_corpus() / "kobill").glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        title = text.strip().splitlines()[0].strip()
        for i, part in enumerate(paragraph_groups(text, 600)):
            out.append(
                {
                    "id": f"{path.stem}-{i}",
                    "url": f"konlpy://kobill/{path.name}",
                    "title": title,
                    "text": part,
                }
            )
    return out


def _korean_lines() -> list[dict]:
    lines = (konlpy_corpus() / "kolaw" / "constitution.txt").read_text(encoding="utf-8").split("\n")
    return [{"id": f"constitution-{i}", "text": t.strip()} for i, t in enumerate(lines) if t.strip()]


def _fineweb2(articles: list[dict]) -> pa.Table:
    # FineWeb-2's own columns; the fields it computes itself (dump, language_score, clusters) are
    # plausible constants, the language and script what its kor_Hang subset holds.
    n = len(articles)
    return pa.table(
        {
            "text": [a["text"] for a in articles],
            "id": [f"<urn:uuid:konlpy-{a['id']}>" for a in articles],
            "dump": ["CC-MAIN-2024-10"] * n,
            "url": [a["url"] for a in articles],
            "date": ["2024-02-20T00:00:00Z"] * n,
            "file_path": [f"konlpy/kobill/{a['id']}.warc.gz" for a in articles],
            "language": ["kor"] * n,
            "language_score": [0.99] * n,
            "language_script": ["Hang"] * n,
            "minhash_cluster_size": [1] * n,
            "top_langs": ['{"kor_Hang_score": 0.99}'] * n,
        }
    )


def _dclm(pages: list[str]) -> list[dict]:
    # DCLM-baseline records: the text with the fields DCLM's pipeline adds (a reader must carry them,
    # never require them).
    return [
        {
            "text": page,
            "url": f"https://docs.python.org/3/reference/topic-{i}.html",
            "warcinfo": "isPartOf: CC-MAIN-2024-10\r\nformat: WARC File Format 1.0",
            "metadata": {"WARC-Type": "response", "Content-Length": str(len(page.encode()))},
            "language_id_whole_page_fasttext": {"en": 0.97},
            "fasttext_openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train_prob": 0.5,
            "previous_word_count": len(page.split()),
            "bff_contained_ngram_count_before_dedup": 0,
        }
        for i, page in enumerate(pages)
    ]


def _code() -> list[dict]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    # every module of a few packages, empty __init__ files included: a reader must count them, not lose them
    files = sorted(
        p for pkg in ("json", "email", "concurrent", "importlib") for p in (stdlib / pkg).rglob("*.py")
    )
    return [
        {
            "id": f"cpython/{p.relative_to(stdlib)}",
            "repo": "python/cpython",
            "path": f"Lib/{p.relative_to(stdlib)}",
            "license": "PSF-2.0",
            "lang": "Python",
            "text": p.read_text(encoding="utf-8", errors="replace"),
        }
        for p in files
        if "test" not in p.parts
    ]


def _plain(name: str, min_bytes: int | None) -> list[dict]:
    return [{"id": f"{name}/{i}", "text": t} for i, t in enumerate(_harvested(name, min_bytes))]


def write_corpus(root: Path) -> dict[str, Path]:
    """Write every file of `FILES` under `root`; returns `{key: path}`."""
    paths = {key: root / rel for key, rel in FILES.items()}
    articles = _korean_articles()
    _write_records(paths["korean_articles"], articles)
    _write_records(paths["korean_short"], _korean_lines())
    pq.write_table(_fineweb2(articles), paths["fineweb2"])
    _write_records(paths["web"], _dclm(_harvested("python-docs", 3000)))
    _write_records(paths["code"], _code())
    for key, name, min_bytes in (
        ("multilingual", "babel-cldr", None),
        ("academic", "sympy-refs", None),
        ("specialized", "licences", 2000),
        ("math", "sympy-ntheory", None),
        ("reasoning", "sympy-solvers", None),
    ):
        _write_records(paths[key], _plain(name, min_bytes))
    return paths
