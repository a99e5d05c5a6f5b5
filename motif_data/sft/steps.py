"""The SFT build's own datatrove steps; everything else (readers' record parsing and file assignment, spill
files, exact and MinHash dedup, tallies) is the corpus builder's.

- ``ConversationReader``: a source's records → ``Document``s whose text is the rendered conversation (what dedup
  compares) and whose metadata carries the messages; counts ``read`` and ``errored``.
- ``VerifyNearDuplicates``: keeps an LSH candidate pair only if its shingle sets' Jaccard ≥ the threshold.
- ``RenderStep``: ids + assistant mask with the tokenizer's template renderer; drops ``short`` samples.
- ``MaskedShardWriteStep``: token, index and mask shards per task, and the task's result file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep

from motif_data.atomic import atomic_write_text, naming_output, output_error
from motif_data.pipeline.accounting import key
from motif_data.pipeline.readers import assign_files, read_records
from motif_data.sft.config import SftSourceConfig
from motif_data.sft.formats import to_messages, to_pair
from motif_data.shards import MaskedShardWriter
from motif_data.tokenizer.chat import ChatError, render, render_text

__all__ = ["DOMAIN", "ConversationReader", "VerifyNearDuplicates", "RenderStep", "MaskedShardWriteStep"]

#: the one "domain" of an SFT build: dedup (salted per domain in the corpus builder) spans the whole mixture
DOMAIN = "chat"
_MESSAGES, _REJECTED = "messages", "rejected"
_TOKENS, _MASK = "_tokens", "_mask"


def _utf8_size(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].encode()) for m in messages)


class ConversationReader(PipelineStep):
    """Reads one source's files (those ``assign_files`` gives this task) through the corpus builder's
    ``read_records``; every record is counted ``read``, and one that is no usable conversation ``errored``."""

    type = "📖 - READER"
    name = "motif conversation reader"

    def __init__(self, source: SftSourceConfig, sources: tuple[SftSourceConfig, ...]):
        super().__init__()
        self.source, self.sources = source, sources

    def _document(self, record: dict | None, error: str | None, ref: str) -> Document | None:
        name = self.source.name
        self.stat_update(key("read", name, DOMAIN))
        if record is not None:
            try:
                if self.source.schema == "preference":
                    prompt, chosen, rejected = to_pair(self.source, record)
                    messages = [*prompt, chosen, rejected]
                else:
                    messages = to_messages(self.source, record)
                chars = sum(len(m["content"]) for m in messages)
                if 4 * chars > self.source.max_bytes and _utf8_size(messages) > self.source.max_bytes:
                    raise ChatError("too_large", f"more than {self.source.max_bytes} bytes of text")
            except ChatError as e:
                error = e.reason
        if error is not None:
            self.stat_update(key("errored", name, DOMAIN, error))
            return None
        doc_id = str(record.get(self.source.id_field, ref))
        meta = {"source": name, "domain": DOMAIN, _MESSAGES: [[m["role"], m["content"]] for m in messages]}
        if self.source.schema == "preference":
            # the pair is one sample of the mixture: dedup compares prompt, chosen and rejected together
            meta[_REJECTED] = meta[_MESSAGES].pop()
        return Document(text=render_text(messages), id=doc_id, metadata=meta)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        files = assign_files(self.sources, world_size)[self.source.name]
        for path, r, part, parts in files:
            if r != rank:
                continue
            self.stat_update("files")
            for i, (record, error) in enumerate(read_records(self.source, path, part, parts)):
                with self.track_time():
                    doc = self._document(record, error, f"{os.path.basename(path)}#{part + i * parts}")
                if doc is not None:
                    yield doc


class VerifyNearDuplicates(PipelineStep):
    """Between datatrove's MinHash bucket and cluster stages (one task): rewrites each ``.dups`` file keeping
    the pairs whose shingle sets have Jaccard ≥ ``threshold``. Shingles come from the signature stage's own
    ``get_shingles`` over the same spill → exact-filter stream, so document indices and sets are the ones the
    signatures were made of."""

    type = "🫂 - DEDUP"
    name = "motif near-duplicate check"

    def __init__(self, candidates: str, verified: str, spill, exact_filter, signature, threshold: float):
        super().__init__()
        self.candidates, self.verified = candidates, verified
        self.spill, self.exact_filter, self.signature = spill, exact_filter, signature
        self.threshold = threshold

    def _shingles(self, wanted: dict[int, set[int]]) -> dict[tuple[int, int], np.ndarray]:
        found = {}
        for task, docs in sorted(wanted.items()):
            stream = self.spill.run(rank=task)
            if self.exact_filter is not None:
                stream = self.exact_filter.run(stream, rank=task)
            for i, doc in enumerate(stream):
                if i in docs:
                    found[(task, i)] = np.unique(self.signature.get_shingles(doc.text))
        return found

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        source, out = get_datafolder(self.candidates), get_datafolder(self.verified)
        pairs = {}
        for name in source.list_files(glob_pattern="*.dups"):
            with source.open(name, "rb") as f:
                pairs[name] = np.frombuffer(f.read(), dtype="<u4").reshape(-1, 4)
        with self.track_time():
            wanted: dict[int, set[int]] = {}
            for rows in pairs.values():
                for f1, d1, f2, d2 in rows.tolist():
                    wanted.setdefault(f1, set()).add(d1)
                    wanted.setdefault(f2, set()).add(d2)
            shingles = self._shingles(wanted)
            for name, rows in pairs.items():
                keep = []
                for f1, d1, f2, d2 in rows.tolist():
                    a, b = shingles[(f1, d1)], shingles[(f2, d2)]
                    common = len(np.intersect1d(a, b, assume_unique=True))
                    union = len(a) + len(b) - common
                    keep.append(union > 0 and common >= self.threshold * union)
                self.stat_update("candidate_pairs", value=len(keep))
                self.stat_update("verified_pairs", value=sum(keep))
                with out.open(name, "wb") as f:
                    f.write(rows[np.array(keep, dtype=bool)].tobytes() if keep else b"")
        return iter(())


def _render_pair(enc, messages: list[dict], rejected: dict) -> tuple[list, list]:
    """Chosen and rejected conversations, each labelled on its last message only (what DPO scores). What comes
    before the first labelled token, the prompt, must be the same ids in both: it is, but where an answer's first
    token joins the assistant header's newline in one and not in the other."""
    prompt = len(render(enc, messages[:-1])[0])
    samples = [render(enc, messages), render(enc, [*messages[:-1], rejected])]
    for _, mask in samples:
        mask[:prompt] = [0] * prompt
    (chosen, c_mask), (other, r_mask) = samples
    first = c_mask.index(1)
    if r_mask.index(1) != first or chosen[:first] != other[:first]:
        raise ChatError("prompt_mismatch", "the answers change the prompt's last token")
    return [chosen, other], [c_mask, r_mask]


class RenderStep(PipelineStep):
    """Ids and assistant mask of each conversation (of a preference pair: chosen, then rejected); fewer than
    ``min_tokens`` ids (in either of a pair) is ``short``."""

    type = "🔢 - TOKENIZER"
    name = "motif chat renderer"

    def __init__(self, tokenizer: str, min_tokens: int):
        super().__init__()
        self.tokenizer, self.min_tokens = tokenizer, min_tokens

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from motif_data.pipeline.tokenize import load_tokenizer

        enc = load_tokenizer(self.tokenizer)
        for doc in data:
            with self.track_time():
                source = doc.metadata["source"]
                messages = [{"role": r, "content": c} for r, c in doc.metadata.pop(_MESSAGES)]
                rejected = doc.metadata.pop(_REJECTED, None)
                try:
                    if rejected is None:
                        ids, mask = render(enc, messages)
                        ids, mask = [ids], [mask]
                    else:
                        ids, mask = _render_pair(enc, messages, {"role": rejected[0], "content": rejected[1]})
                except ChatError as e:
                    self.stat_update(key("errored", source, DOMAIN, e.reason))
                    continue
                if min(map(len, ids)) < self.min_tokens:
                    self.stat_update(key("filtered", source, DOMAIN, "short"))
                    continue
                doc.metadata[_TOKENS] = [np.array(i, dtype=np.uint32) for i in ids]
                doc.metadata[_MASK] = [np.array(m, dtype=np.uint8) for m in mask]
            yield doc


class MaskedShardWriteStep(PipelineStep):
    """Streams this task's samples into ``shards/{source}/{rank:05d}-{n:05d}.bin/.idx/.mask`` (a preference pair: two
    consecutive samples, so that pair i is samples 2i and 2i + 1 of the whole build) and lists them in
    ``results/{rank:05d}.json``; counts ``kept`` (conversations or pairs), ``tokens`` and ``labelled`` per
    source."""

    type = "💽 - WRITER"
    name = "motif masked shard writer"

    def __init__(self, shard_dir: str, results_dir: str, max_tokens: int):
        super().__init__()
        self.shard_dir, self.results_dir, self.max_tokens = shard_dir, results_dir, max_tokens

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        writers: dict[str, MaskedShardWriter] = {}
        for doc in data:
            with self.track_time():
                samples = list(zip(doc.metadata.pop(_TOKENS), doc.metadata.pop(_MASK), strict=True))
                source = doc.metadata["source"]
                if source not in writers:
                    writers[source] = MaskedShardWriter(
                        f"{self.shard_dir}/{source}", f"{rank:05d}", self.max_tokens
                    )
                try:
                    for tokens, mask in samples:
                        writers[source].write(tokens, mask)
                except OSError as e:
                    raise output_error(e, f"{self.shard_dir}/{source}", self.name) from e
                self.stat_update(key("kept", source, DOMAIN))
                self.stat_update(key("tokens", source, DOMAIN), value=sum(len(t) for t, _ in samples))
                self.stat_update(key("labelled", source, DOMAIN), value=sum(int(m.sum()) for _, m in samples))
            yield doc
        shards = []
        for source, writer in sorted(writers.items()):
            with naming_output(f"{self.shard_dir}/{source}", self.name):
                shards += [
                    asdict(s) | {"path": f"{source}/{s.path}", "source": source} for s in writer.close()
                ]
        results = f"{self.results_dir}/{rank:05d}.json"
        with naming_output(results, self.name):
            atomic_write_text(results, json.dumps(shards, indent=1))


class SftFinalizeStep(PipelineStep):
    """stats.json and manifest.json of an SFT build as a one-task job, for executors (Slurm) that run the
    stages away from the caller."""

    type = "🧾 - MANIFEST"
    name = "motif sft manifest"

    def __init__(self, config):
        super().__init__()
        self.config = config

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from datatrove.utils.logging import logger

        from motif_data.sft.build import finalize_sft

        # On Slurm this runs as a job of its own: the summary belongs in that task's log.
        finalize_sft(self.config, logger.info)
        return iter(())
