"""Source formats beyond the corpus files' own: `hf` (datasets streaming), plain text files, fsspec URLs."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from motif_data.pipeline import BuildConfig, build


def test_hf_text_and_url_sources_build_with_every_record_accounted(sample_slices, o200k, tmp_path):
    from motif_data.tokenizer import fingerprint, save

    tokenizer_dir = save(
        o200k, tmp_path / "tokenizer"
    )  # a tokenizer directory, as `motif-data tokenizer` writes
    _, parquet, parquet_texts = sample_slices["fineweb2"]
    _, kowiki, kowiki_texts = sample_slices["konlpy_articles"]
    text_dir = tmp_path / "texts"
    text_dir.mkdir()
    for i, t in enumerate(kowiki_texts[:5]):
        (text_dir / f"{i}.txt").write_text(t, encoding="utf-8")
    (text_dir / "5.txt").write_text("", encoding="utf-8")
    cfg = {
        "output": str(tmp_path / "out"),
        "tokenizer": {"path": str(tokenizer_dir)},
        "executor": {"kind": "local", "tasks": 2, "workers": 1},
        "dedup": {"near": False},
        "sources": [
            # the same rows as a Hugging Face dataset, streamed by `datasets` and split between the tasks
            {
                "name": "hf-parquet",
                "format": "hf",
                "dataset": "parquet",
                "data_files": [str(parquet)],
                "route": [{"field": "language", "values": ["kor"], "domain": "korean"}],
                "default_domain": "multilingual",
            },
            {"name": "txt", "format": "text", "paths": [str(text_dir / "*.txt")], "domain": "academic"},
            {"name": "url", "format": "jsonl", "paths": [f"file://{kowiki}"], "domain": "specialized"},
        ],
    }
    manifest = build(BuildConfig.from_dict(cfg))
    assert manifest.tokenizer.sha256 == fingerprint(o200k)
    stats = json.loads((tmp_path / "out/stats.json").read_text())["sources"]
    assert stats["hf-parquet"]["korean"]["read"] == pq.read_metadata(parquet).num_rows == len(parquet_texts)
    assert set(stats["hf-parquet"]) == {"korean"}  # every FineWeb-2 row says language=kor
    assert stats["txt"]["academic"]["read"] == 6 and stats["txt"]["academic"]["errored"] == {"empty_text": 1}
    assert stats["url"]["specialized"]["read"] == len(kowiki_texts)

    def decoded(domain: str) -> list[str]:
        out = []
        for shard in manifest.domains[domain].shards:
            r = manifest.open_shard(shard)
            out += [o200k.decode(r.document(i)[:-1].tolist()) for i in range(r.num_documents)]
        return out

    assert sorted(decoded("academic")) == sorted(kowiki_texts[:5])
    assert set(decoded("korean")) <= set(parquet_texts)
    assert len(decoded("korean")) == stats["hf-parquet"]["korean"]["kept"] > 0
    assert set(decoded("specialized")) <= set(kowiki_texts)


def test_quality_filters_drop_with_reasons_and_language_id_without_model_is_skipped(
    sample_slices, o200k_path, o200k, tmp_path
):
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    from motif_data.pipeline.words import ScriptWordTokenizer

    _, dclm, texts = sample_slices["pydoc_dclm"]
    filters = {
        "quality": ["gopher", "c4", "fineweb"],
        "language_id": {"languages": ["en"], "model": "/nonexistent"},
    }
    cfg = {
        "output": str(tmp_path / "out"),
        "tokenizer": {"path": str(o200k_path)},
        "dedup": {"exact": False, "near": False},
        "sources": [
            {"name": "dclm", "format": "dclm", "paths": [str(dclm)], "domain": "web", "filters": filters}
        ],
    }
    manifest = build(BuildConfig.from_dict(cfg))
    stats = json.loads((tmp_path / "out/stats.json").read_text())
    assert any("language id skipped" in n for n in stats["notes"])
    row = stats["sources"]["dclm"]["web"]
    prefixes = {reason.split(":")[0] for reason in row["filtered"]}
    assert prefixes & {"gopher_repetition", "gopher_quality", "c4", "fineweb"}, row["filtered"]
    assert row["read"] == len(texts)
    # reference: datatrove's filters applied directly, in order, to the original texts (C4 may rewrite a text)
    words = ScriptWordTokenizer()
    direct = [
        GopherRepetitionFilter(language=words),
        GopherQualityFilter(language=words),
        C4QualityFilter(language=words, filter_no_terminal_punct=False),
        FineWebQualityFilter(language=words),
    ]
    expected = []
    for t in texts:
        doc = Document(text=t, id="x", metadata={})
        if not t.strip() or not all(_passes(f, doc) for f in direct):
            continue
        if len(o200k.encode_ordinary(doc.text)) >= 24:
            expected.append(doc.text)
    kept = []
    for shard in manifest.domains["web"].shards:
        r = manifest.open_shard(shard)
        kept += [o200k.decode(r.document(i)[:-1].tolist()) for i in range(r.num_documents)]
    assert sorted(kept) == sorted(expected) and len(kept) == row["kept"] > 0


def _passes(f, doc) -> bool:
    result = f.filter(doc)
    return result if isinstance(result, bool) else result[0]
