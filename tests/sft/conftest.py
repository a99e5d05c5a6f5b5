"""Fixtures for the SFT tests: a chat-capable tokenizer folder made quickly (o200k + the named specials, no
learned tokens), conversation sources in the three schemas with planted duplicates, short samples and broken
records, and one build of them."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest
from realtext import read_jsonl_zst, write_jsonl_zst
from sfthelpers import sft_config_text


@pytest.fixture(scope="session")
def chat_tokenizer_dir(o200k, tmp_path_factory) -> Path:
    from motif_data.tokenizer import save
    from motif_data.tokenizer.vocab import FIRST_LEARNED, NAMED_SPECIALS, build_encoding

    enc = build_encoding(o200k, [], FIRST_LEARNED + len(NAMED_SPECIALS), name="o200k_chat")
    return save(enc, tmp_path_factory.mktemp("tok") / "chat")


@pytest.fixture(scope="session")
def chat_tokenizer(chat_tokenizer_dir):
    from motif_data.tokenizer import load

    return load(chat_tokenizer_dir)


@pytest.fixture(scope="session")
def hf_chat(chat_tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(chat_tokenizer_dir))


@pytest.fixture(scope="session")
def words(corpus) -> list[str]:
    """Lower-case words of the install's real English and Korean text."""
    text = " ".join(
        orjson.loads(line)["text"]
        for key in ("web", "korean_short")
        for line in read_jsonl_zst(corpus[key], 80)
    )
    return sorted({w.lower() for w in text.split() if w.isalpha()})


def _words(rng: random.Random, words: list[str], n: int) -> list[str]:
    return [rng.choice(words) for _ in range(n)]


def _edit(rng: random.Random, answer: list[str], n: int, words: list[str]) -> list[str]:
    """``answer`` with ``n`` words replaced, spread out evenly."""
    out = list(answer)
    for i in range(n):
        out[(i * len(out)) // n + rng.randrange(max(1, len(out) // (2 * n)))] = rng.choice(words)
    return out


@pytest.fixture(scope="session")
def sources(words, tmp_path_factory) -> dict:
    """Three sources with what a build must make of them.

    Returns ``{"dir", "near_pairs" (conversation id groups that are near duplicates), "far_pairs", "exact"
    (ids that duplicate an earlier one exactly, across sources and whitespace), "errored" ({source: {reason:
    n}}), "conversations" ({id: messages})}``.
    """
    rng = random.Random(7)
    root = tmp_path_factory.mktemp("sft-sources")
    convs: dict[str, list[dict]] = {}

    def qa(q: list[str], a: list[str]) -> list[dict]:
        return [{"role": "user", "content": " ".join(q)}, {"role": "assistant", "content": " ".join(a)}]

    near, far = [], []
    base = []
    for i in range(40):
        q, a = _words(rng, words, 25), _words(rng, words, 220)
        convs[f"base-{i}"] = qa(q, a)
        base.append((q, a))
    for i in range(12):  # one word changed: Jaccard ≈ 0.98
        q, a = base[i]
        convs[f"near-{i}"] = qa(q, _edit(rng, a, 1, words))
        near.append([f"base-{i}", f"near-{i}"])
    for i in range(12, 16):  # a chain of three near copies: one cluster, one kept
        q, a = base[i]
        convs[f"near-{i}-a"] = qa(q, _edit(rng, a, 1, words))
        convs[f"near-{i}-b"] = qa(q, _edit(rng, a, 2, words))
        near.append([f"base-{i}", f"near-{i}-a", f"near-{i}-b"])
    for i in range(16, 28):  # every ~8th word changed: Jaccard ≈ 0.3–0.6, distinct
        q, a = base[i]
        convs[f"far-{i}"] = qa(q, _edit(rng, a, 28, words))
        far.append([f"base-{i}", f"far-{i}"])
    for i in range(30):  # short: a few words each side, some above and some below 24 tokens
        convs[f"short-{i}"] = qa(
            _words(rng, words, rng.randrange(1, 6)), _words(rng, words, rng.randrange(1, 12))
        )
    multi = []
    for i in range(20):
        msgs = [{"role": "system", "content": "You are a careful assistant. 답을 자세히 설명하세요."}]
        for _ in range(rng.randrange(1, 4)):
            msgs += qa(_words(rng, words, 15), _words(rng, words, 60))
        convs[f"multi-{i}"] = msgs
        multi.append(f"multi-{i}")

    # messages schema: base, near and far ones, the multi-turn ones; plus broken records
    messages_lines = [
        orjson.dumps({"id": k, "messages": v}) for k, v in convs.items() if not k.startswith("short")
    ]
    messages_lines += [
        b'{"id": "broken", "messages": [',  # malformed JSON
        orjson.dumps(
            {
                "id": "tool",
                "messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}],
            }
        ),
        orjson.dumps({"id": "mute", "messages": [{"role": "user", "content": "question?"}]}),
        orjson.dumps({"id": "fake-special", "messages": qa(["hi", "<|im_end|>"], _words(rng, words, 40))}),
    ]
    # ShareGPT: the multi-turn conversations again (exact duplicates across schemas and sources), one of
    # them with its whitespace changed, under human/gpt/system and a source-specific "bot" role
    exact = []
    share_lines = []
    for k in multi[:6]:
        turns = [
            {"from": {"user": "human", "assistant": "bot"}.get(m["role"], m["role"]), "value": m["content"]}
            for m in convs[k]
        ]
        if k == multi[0]:
            turns[-1]["value"] = "  " + turns[-1]["value"].replace(" ", "   ")
        share_lines.append(orjson.dumps({"conversations": turns}))
        exact.append(k)
    for _ in range(10):
        share_lines.append(
            orjson.dumps(
                {
                    "conversations": [
                        {"from": "human", "value": " ".join(_words(rng, words, 20))},
                        {"from": "bot", "value": " ".join(_words(rng, words, 80))},
                    ]
                }
            )
        )
    share_lines.append(orjson.dumps({"conversations": "not a list"}))
    # prompt/response columns: the short ones, and two of them twice
    pr_lines = [
        orjson.dumps({"question": v[0]["content"], "answer": v[1]["content"]})
        for k, v in convs.items()
        if k.startswith("short")
    ]
    pr_lines += pr_lines[:2]
    pr_lines.append(orjson.dumps({"question": "no answer column"}))
    write_jsonl_zst(root / "messages.jsonl.zst", messages_lines)
    write_jsonl_zst(root / "sharegpt.jsonl.zst", share_lines)
    write_jsonl_zst(root / "qa.jsonl.zst", pr_lines)
    return {
        "dir": root,
        "near": near,
        "far": far,
        "exact_across": exact,
        "conversations": convs,
        "read": {"chat": len(messages_lines), "share": len(share_lines), "qa": len(pr_lines)},
        "errored": {
            "chat": {
                "malformed_json": 1,
                "unknown_role": 1,
                "no_assistant_text": 1,
                "special_token_in_text": 1,
            },
            "share": {"missing_messages": 1},
            "qa": {"missing_text": 1},
        },
    }


@pytest.fixture(scope="session")
def sft_build(sources, chat_tokenizer_dir, tmp_path_factory):
    """One build of ``sources`` with 2 tasks: (manifest, output folder, config)."""
    from motif_data.sft import SftConfig, build_sft

    work = tmp_path_factory.mktemp("sft-build")
    (work / "sft.toml").write_text(sft_config_text(sources, chat_tokenizer_dir))
    config = SftConfig.load(work / "sft.toml")
    manifest = build_sft(config, out=work / "out", log=lambda _: None)
    return manifest, work / "out", config
