"""An SFT build of real pairs: GSM8K's question/answer columns and PubMedQA's question → long answer, with
near copies planted among them; checked against brute-force Jaccard and by decoding the loss mask."""

from __future__ import annotations

import collections
import itertools
import json

import orjson
import pytest
from realtext import read_jsonl_zst, write_jsonl_zst

from motif_data.tokenizer.chat import render_text

_GSM8K = 1500


def _shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def _close_pairs(texts: list[str], threshold: float) -> set[tuple[int, int]]:
    """Every pair with Jaccard ≥ threshold, exactly: pairs sharing no shingle (Jaccard 0) are never compared."""
    sets = [_shingles(t) for t in texts]
    holders = collections.defaultdict(list)
    for i, s in enumerate(sets):
        for sh in s:
            holders[sh].append(i)
    candidates = {p for ids in holders.values() if len(ids) < 50 for p in itertools.combinations(ids, 2)}
    return {(a, b) for a, b in candidates if len(sets[a] & sets[b]) >= threshold * len(sets[a] | sets[b])}


def _upper_first_word(text: str) -> str:
    first, _, rest = text.partition(" ")
    return f"{first.upper()} {rest}"


@pytest.fixture(scope="module")
def real_build(shared_data, chat_tokenizer_dir, tmp_path_factory):
    from motif_data.sft import SftConfig, build_sft

    root = tmp_path_factory.mktemp("sft-real")
    gsm = [orjson.loads(line) for line in read_jsonl_zst(shared_data / "math/gsm8k_train.jsonl.zst", _GSM8K)]
    # near copies: 20 with the answer's first word upper-cased (dedup lower-cases; exact dedup does not), 20 of
    # the longest answers with a word inserted in the middle
    cased = [i for i, r in enumerate(gsm) if _upper_first_word(r["answer"]) != r["answer"]][:20]
    longest = sorted(set(range(len(gsm))) - set(cased), key=lambda i: -len(gsm[i]["answer"].split()))[:20]
    planted = [dict(gsm[i], id=f"{i}-copy", answer=_upper_first_word(gsm[i]["answer"])) for i in cased]
    for i in longest:
        words = gsm[i]["answer"].split(" ")
        middle = len(words) // 2
        planted.append(
            dict(gsm[i], id=f"{i}-copy", answer=" ".join(words[:middle] + ["indeed"] + words[middle:]))
        )
    originals = cased + longest
    write_jsonl_zst(root / "gsm8k.jsonl.zst", [orjson.dumps(r) for r in gsm + planted])
    pubmed = []
    for line in read_jsonl_zst(shared_data / "specialized/pubmedqa.jsonl.zst"):
        record = orjson.loads(line)
        question, *_, answer = record["text"].split("\n\n")  # question, contexts, long answer (MANIFEST.md)
        pubmed.append({"id": record["id"], "prompt": question, "response": answer})
    write_jsonl_zst(root / "pubmedqa.jsonl.zst", [orjson.dumps(r) for r in pubmed])
    (root / "sft.toml").write_text(
        f"""output = "out"
tokenizer = "{chat_tokenizer_dir}"
[executor]
tasks = 2
[[sources]]
name = "gsm8k"
schema = "prompt_response"
paths = ["{root / "gsm8k.jsonl.zst"}"]
prompt_field = "question"
response_field = "answer"
[[sources]]
name = "pubmedqa"
schema = "prompt_response"
paths = ["{root / "pubmedqa.jsonl.zst"}"]
system = "Answer the biomedical question."
"""
    )
    manifest = build_sft(SftConfig.load(root / "sft.toml"), out=root / "out", log=lambda _: None)
    conversations = [
        [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
        for r in gsm + planted
    ] + [
        [
            {"role": "system", "content": "Answer the biomedical question."},
            {"role": "user", "content": r["prompt"]},
            {"role": "assistant", "content": r["response"]},
        ]
        for r in pubmed
    ]
    stats = json.loads((root / "out" / "stats.json").read_text())
    return manifest, stats, conversations, [(i, _GSM8K + k) for k, i in enumerate(originals)]


def test_real_pairs_are_accounted_and_planted_copies_removed(real_build, chat_tokenizer):
    manifest, stats, conversations, planted_pairs = real_build
    for name, row in stats["sources"].items():
        dropped = (
            row["exact_duplicates"] + row["near_duplicates"] + row["short"] + sum(row["errored"].values())
        )
        assert row["read"] == row["kept"] + dropped, name
    assert stats["sources"]["gsm8k"]["read"] == _GSM8K + len(planted_pairs)
    texts = [render_text(c) for c in conversations]
    surely, maybe = _close_pairs(texts, 0.92), _close_pairs(texts, 0.85)
    assert set(planted_pairs) <= surely, "a planted copy is not a near duplicate by brute force"
    near = stats["total"]["near_duplicates"] + stats["total"]["exact_duplicates"]
    assert len(surely) <= near <= len(maybe)
    kept = collections.Counter()
    for shard in manifest.shards:
        reader = manifest.open_shard(shard, verify=True)
        kept.update(chat_tokenizer.decode(reader.sample(i)[0].tolist()) for i in range(reader.num_documents))
    both = [(a, b) for a, b in planted_pairs if kept[texts[a]] + kept[texts[b]] != 1]
    assert both == []


def test_real_loss_mask_decodes_to_the_answers(real_build, chat_tokenizer):
    manifest, stats, conversations, _ = real_build
    answers = {render_text(c): c[-1]["content"] + "<|im_end|>" for c in conversations}
    n = 0
    for shard in manifest.shards:
        reader = manifest.open_shard(shard)
        for i in range(reader.num_documents):
            ids, mask = reader.sample(i)
            text = chat_tokenizer.decode(ids.tolist())
            assert chat_tokenizer.decode(ids[mask == 1].tolist()) == answers[text]
            n += 1
    assert n == stats["total"]["kept"] == manifest.samples
