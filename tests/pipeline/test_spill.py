"""The spill files between stages: byte for byte what datatrove's own JSON Lines writer writes."""

from __future__ import annotations

import orjson
from datatrove.data import Document
from datatrove.pipeline.writers import JsonlWriter
from realtext import read_jsonl_zst

from motif_data.pipeline.write import SpillWriter


def test_spill_files_are_datatrove_jsonl_writer_files(corpus, tmp_path):
    docs = [
        Document(
            text=orjson.loads(x)["text"], id=f"{key}-{i}", metadata={"source": key, "domain": key, "n": i}
        )
        for key in ("web", "korean_articles", "code")
        for i, x in enumerate(read_jsonl_zst(corpus[key]))
    ]
    docs += [
        Document(text="", id="empty-text", metadata={"source": "s", "domain": "d"}),
        Document(text="no metadata", id="bare", metadata={}),
        Document(text="no id", id="", metadata={"nested": {"a": [1, 2]}, "t": (1, 2)}),
    ]
    for rank in (0, 3):
        with SpillWriter(str(tmp_path / "ours")) as ours:
            for d in docs:
                ours.write(d, rank)
        with JsonlWriter(
            str(tmp_path / "datatrove"), output_filename="${rank}.jsonl", compression=None
        ) as ref:
            for d in docs:
                ref.write(d, rank)
        name = f"{rank:05d}.jsonl"
        expected = (tmp_path / "datatrove" / name).read_bytes()
        assert expected.count(b"\n") == len(docs)
        assert (tmp_path / "ours" / name).read_bytes() == expected
