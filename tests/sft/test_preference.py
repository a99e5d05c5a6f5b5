"""Preference builds: (prompt, chosen, rejected) as text columns or Tulu-3-style message lists become pairs whose
prompt + answer ids are transformers' chat template, each answer labelled alone; every record accounted for."""

from __future__ import annotations

import json
import random

import orjson
import pytest
from realtext import write_jsonl_zst

from motif_data.tokenizer.chat import render_text


@pytest.fixture(scope="module")
def pairs(words, chat_tokenizer_dir, tmp_path_factory):
    from motif_data.sft import SftConfig, build_sft

    rng = random.Random(3)
    root = tmp_path_factory.mktemp("pref")

    def text(n):
        return " ".join(rng.choice(words) for _ in range(n))

    columns = [{"prompt": text(20), "chosen": text(60), "rejected": text(50)} for _ in range(20)]
    columns += [
        columns[0],  # an exact duplicate
        {"prompt": "hi", "chosen": "ok", "rejected": "no"},  # short
        {"prompt": text(10), "chosen": text(30)},  # no rejected answer
    ]
    tulu = []
    for i in range(12):
        head = [{"role": "user", "content": text(15)}]
        if i % 3 == 0:  # multi-turn: the earlier assistant turn is prompt, not scored
            head += [{"role": "assistant", "content": text(20)}, {"role": "user", "content": text(10)}]
        tulu.append(
            {
                "chosen": head + [{"role": "assistant", "content": text(40)}],
                "rejected": head + [{"role": "assistant", "content": text(35)}],
            }
        )
    tulu.append(
        {
            "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": text(30)}],
            "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": text(30)}],
        }
    )
    write_jsonl_zst(root / "columns.jsonl.zst", [orjson.dumps(r) for r in columns])
    write_jsonl_zst(root / "tulu.jsonl.zst", [orjson.dumps(r) for r in tulu])
    (root / "pref.toml").write_text(
        f"""output = "out"
tokenizer = "{chat_tokenizer_dir}"
kind = "preference"
[[sources]]
name = "columns"
schema = "preference"
paths = ["{root / "columns.jsonl.zst"}"]
[[sources]]
name = "tulu"
schema = "preference"
paths = ["{root / "tulu.jsonl.zst"}"]
"""
    )
    manifest = build_sft(SftConfig.load(root / "pref.toml"), out=root / "out", log=lambda _: None)
    expected = [
        ([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"]) for r in columns[:20]
    ] + [(r["chosen"][:-1], r["chosen"][-1]["content"], r["rejected"][-1]["content"]) for r in tulu[:12]]
    return manifest, json.loads((root / "out" / "stats.json").read_text()), expected


def test_every_preference_record_is_accounted_for(pairs):
    _, stats, _ = pairs
    assert stats["kind"] == "preference"
    columns, tulu = stats["sources"]["columns"], stats["sources"]["tulu"]
    assert (columns["read"], columns["kept"], columns["exact_duplicates"], columns["short"]) == (23, 20, 1, 1)
    assert columns["errored"] == {"missing_text": 1}
    assert (tulu["read"], tulu["kept"], tulu["errored"]) == (13, 12, {"prompt_mismatch": 1})


def test_pairs_are_the_chat_template_split_at_the_answer(pairs, hf_chat, chat_tokenizer):
    from motif_data.sft import PreferenceDataset

    manifest, _, expected = pairs
    ds = PreferenceDataset(manifest, verify=True)
    assert len(ds) == len(expected)
    newline = chat_tokenizer.encode_ordinary("\n")
    by_prompt = {render_text(p): (p, c, r) for p, c, r in expected}
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"prompt_input_ids", "chosen_input_ids", "rejected_input_ids"}
        shown = chat_tokenizer.decode(item["prompt_input_ids"])
        assert shown.endswith("<|im_start|>assistant\n")
        prompt, chosen, rejected = by_prompt[shown.removesuffix("<|im_start|>assistant\n")]
        assert chat_tokenizer.decode(item["chosen_input_ids"]) == chosen + "<|im_end|>"
        assert chat_tokenizer.decode(item["rejected_input_ids"]) == rejected + "<|im_end|>"
        for answer, ids in ((chosen, item["chosen_input_ids"]), (rejected, item["rejected_input_ids"])):
            want = hf_chat.apply_chat_template(
                [*prompt, {"role": "assistant", "content": answer}], tokenize=True, return_dict=True
            )["input_ids"]
            assert item["prompt_input_ids"] + ids + newline == list(want)


def test_the_sft_dataset_refuses_a_preference_build(pairs):
    from motif_data.sft import SftDataset

    with pytest.raises(ValueError, match="PreferenceDataset"):
        SftDataset(pairs[0], seq_len=128, seed=0)


def test_kind_and_schemas_must_agree(pairs, chat_tokenizer_dir):
    from motif_data.sft import SftConfig

    manifest, _, _ = pairs
    source = {"name": "p", "schema": "preference", "paths": [str(manifest.root.parent / "columns.jsonl.zst")]}
    with pytest.raises(
        ValueError, match=r"sources\[0\]\.schema: a build of kind = 'sft' reads no 'preference'"
    ):
        SftConfig.from_dict({"output": "o", "tokenizer": str(chat_tokenizer_dir), "sources": [source]})
