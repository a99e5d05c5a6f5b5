"""``motif-data demo --from-hub``: small streamed samples of the real Motif-2.6B sources via ``datasets``.

Only the first ``n`` rows of each source are read (streaming, no full download). The same code reads
local files of the identical format (``dataset="parquet"`` / ``"json"`` with ``data_files``), which is how
it is tested offline.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["HubSource", "HUB_SOURCES", "stream_docs"]


@dataclass(frozen=True)
class HubSource:
    name: str
    domain: str
    what: str
    dataset: str
    subset: str | None = None
    split: str = "train"
    fields: tuple[str, ...] = ("text",)  # joined with a blank line into the document text
    data_files: tuple[str, ...] = ()


HUB_SOURCES: tuple[HubSource, ...] = (
    HubSource("dclm", "web", "DCLM-baseline web documents", "mlfoundations/dclm-baseline-1.0"),
    HubSource("fineweb2-deu", "multilingual", "FineWeb-2, German", "HuggingFaceFW/fineweb-2", "deu_Latn"),
    HubSource("fineweb2-kor", "korean", "FineWeb-2, Korean", "HuggingFaceFW/fineweb-2", "kor_Hang"),
    HubSource(
        "arxiv",
        "academic",
        "arXiv papers (TxT360 arXiv subset)",
        "ccdv/arxiv-summarization",
        fields=("article",),
    ),
    HubSource("pubmed", "specialized", "PubMed abstracts", "MedRAG/pubmed", fields=("title", "content")),
    HubSource(
        "stack-smol", "code", "The Stack (smol) source files", "bigcode/the-stack-smol", fields=("content",)
    ),
    HubSource("finemath", "math", "FineMath 4+", "HuggingFaceTB/finemath", "finemath-4plus"),
    HubSource(
        "gsm8k", "reasoning", "GSM8K worked solutions", "openai/gsm8k", "main", fields=("question", "answer")
    ),
)


def stream_docs(src: HubSource, n: int) -> Iterator[str]:
    """The text of the first ``n`` rows of ``src``, streamed."""
    import datasets

    ds = datasets.load_dataset(
        src.dataset, src.subset, split=src.split, streaming=True, data_files=list(src.data_files) or None
    )
    for row in itertools.islice(ds, n):
        missing = [f for f in src.fields if f not in row]
        if missing:
            raise ValueError(f"{src.dataset}: rows have no field(s) {missing}; they have {sorted(row)}")
        yield "\n\n".join(str(row[f]) for f in src.fields)
