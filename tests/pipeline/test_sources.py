"""Source formats beyond the shared samples' own: `hf` (datasets streaming), plain text files, fsspec URLs."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from motif_data.pipeline import build, parse_config


def test_hf_text_and_url_sources_build_with_every_record_accounted(
    sample_slices, o200k_path, o200k, tmp_path
):
    _, parquet, parquet_texts = sample_slices["fineweb2"]
    _, kowiki, kowiki_texts = sample_slices["kowiki_train"]
    text_dir = tmp_path / "texts"
    text_dir.mkdir()
    for i, t in enumerate(kowiki_texts[:5]):
        (text_dir / f"{i}.txt").write_text(t, encoding="utf-8")
    (text_dir / "5.txt").write_text("", encoding="utf-8")
    cfg = {
        "output": str(tmp_path / "out"),
        "tokenizer": {"path": str(o200k_path)},
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
    manifest = build(parse_config(cfg))
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
