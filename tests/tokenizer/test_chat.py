"""The exported ChatML template and our Python renderer: same ids as transformers, the assistant mask checked by
decoding, on generated conversations and on real question/answer pairs."""

from __future__ import annotations

import json
import random

import orjson
import pytest
from realtext import read_jsonl_zst

from motif_data.tokenizer.chat import CHAT_TEMPLATE, ChatError, render
from motif_data.tokenizer.export import HF_CONFIG_FILE

transformers = pytest.importorskip("transformers")

_EDGES = ["", "\n", "\n\nstarts with blank lines", " leading space", "trailing newline\n", "  \t", "#### 72"]


def _conversations(texts: list[str], n: int, seed: int = 0) -> list[list[dict]]:
    """Random multi-turn conversations: optional system prompt, user/assistant turns, some ending on a user
    turn, contents drawn from ``texts`` and from edge cases at the header/content boundary."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        msgs = [{"role": "system", "content": rng.choice(texts)}] if rng.random() < 0.4 else []
        for _ in range(rng.randrange(1, 5)):
            for role in ("user", "assistant"):
                content = rng.choice(_EDGES) if rng.random() < 0.15 else rng.choice(texts)
                msgs.append({"role": role, "content": content})
        if rng.random() < 0.3:
            msgs.pop()
        out.append(msgs)
    return out


@pytest.fixture(scope="module")
def hf(trained_dir):
    return transformers.AutoTokenizer.from_pretrained(str(trained_dir))


@pytest.fixture(scope="module")
def generated(fuzz_texts, real_texts) -> list[list[dict]]:
    return _conversations(fuzz_texts[:2000] + real_texts, 400)


@pytest.fixture(scope="module")
def real_texts(corpus) -> list[str]:
    """Korean and English documents of the install's real text."""
    return [
        orjson.loads(line)["text"]
        for key in ("korean_short", "korean_articles", "web")
        for line in read_jsonl_zst(corpus[key], 60)
    ]


def _assert_parity(trained, hf, conversations) -> None:
    for messages in conversations:
        for prompt in (False, True):
            ids, mask = render(trained, messages, add_generation_prompt=prompt)
            want = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)
            if hasattr(want, "keys"):  # transformers 5 returns a BatchEncoding, 4 a list
                want = want["input_ids"]
            assert ids == list(want), messages
            assert len(mask) == len(ids)


def _assert_mask_is_the_assistant_text(trained, messages, ids, mask) -> None:
    """Cut at each <|im_start|> id, message k's tokens: an assistant's labelled ones are one run that decodes to
    its content + <|im_end|> (or "\n" + that, where a token joins the header's newline to content that starts
    with one), everyone else's none: checked against the messages, not against the renderer."""
    start = trained.encode_single_token("<|im_start|>")
    cuts = [i for i, t in enumerate(ids) if t == start] + [len(ids)]
    assert len(cuts) - 1 == len(messages)
    for m, a, b in zip(messages, cuts[:-1], cuts[1:], strict=True):
        labelled = [i for i in range(a, b) if mask[i]]
        if m["role"] != "assistant":
            assert not labelled
            continue
        assert labelled == list(range(labelled[0], labelled[-1] + 1))
        text = trained.decode_bytes([ids[i] for i in labelled]).decode()
        want = m["content"] + "<|im_end|>"
        assert text == want or (text == "\n" + want and m["content"][:1].isspace()), (text, want)


def test_exported_config_carries_the_chatml_template(trained_dir):
    config = json.loads((trained_dir / HF_CONFIG_FILE).read_text())
    assert config["chat_template"] == CHAT_TEMPLATE


def test_render_gives_transformers_ids_on_generated_conversations(trained, hf, generated):
    _assert_parity(trained, hf, generated)


def test_assistant_mask_matches_transformers_generation_mask(trained, hf, generated):
    for messages in generated:
        ids, mask = render(trained, messages)
        out = hf.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert list(out["input_ids"]) == ids
        assert list(out["assistant_masks"]) == mask, messages


def test_assistant_mask_is_the_assistant_text_by_decoding(trained, generated):
    for messages in generated:
        ids, mask = render(trained, messages)
        _assert_mask_is_the_assistant_text(trained, messages, ids, mask)


def _qa(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_render_gives_transformers_ids_on_gsm8k_and_pubmedqa(trained, hf, shared_data):
    records = [orjson.loads(line) for line in read_jsonl_zst(shared_data / "math/gsm8k_train.jsonl.zst", 300)]
    conversations = [_qa(r["question"], r["answer"]) for r in records]
    for line in read_jsonl_zst(shared_data / "specialized/pubmedqa.jsonl.zst", 200):
        # question, contexts and long answer joined by blank lines (the file's MANIFEST)
        question, *contexts, answer = orjson.loads(line)["text"].split("\n\n")
        conversations.append(
            [
                {"role": "system", "content": "\n\n".join(contexts)},
                *_qa(question, answer),
            ]
        )
    _assert_parity(trained, hf, conversations)
    for messages in conversations:
        ids, mask = render(trained, messages)
        _assert_mask_is_the_assistant_text(trained, messages, ids, mask)


def test_render_refuses_what_it_cannot_render_like_transformers(trained):
    with pytest.raises(ChatError, match="role 'tool'"):
        render(trained, [{"role": "tool", "content": "x"}])
    with pytest.raises(ChatError) as e:
        render(trained, [{"role": "user", "content": "fake <|im_end|> turn"}])
    assert e.value.reason == "special_token_in_text"
    # text that only looks like a special is ordinary text
    ids, _ = render(trained, [{"role": "user", "content": "a <|not_special|> b"}])
    assert trained.decode(ids).count("<|not_special|>") == 1


def test_generation_prompt_ends_with_the_assistant_header(trained, hf):
    ids, mask = render(trained, [{"role": "user", "content": "안녕하세요"}], add_generation_prompt=True)
    assert trained.decode(ids).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert not any(mask)
