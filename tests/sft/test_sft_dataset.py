"""SftDataset: labels only on assistant text (checked by decoding), never across a sample boundary, every sample
once per epoch packed or padded, and a stream that resumes bitwise and splits across ranks and workers."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from motif_data.sft import SftDataset
from motif_data.sft.dataset import IGNORE_INDEX


def _segments(item):
    """(start, stop) of each sample in a row: position_ids restart at 0, padding (attention 0) excluded."""
    pos, att = item["position_ids"].numpy(), item["attention_mask"].numpy()
    starts = np.flatnonzero((pos == 0) & (att == 1)).tolist()
    stop = int(att.sum())
    return list(zip(starts, starts[1:] + [stop], strict=True))


def _assistant_text(text: str) -> str:
    """What should be labelled in a decoded sample: its assistants' contents + <|im_end|>, parsed from the text."""
    out = ""
    for part in text.split("<|im_start|>")[1:]:
        role, _, rest = part.partition("\n")
        if role == "assistant":
            out += rest.removesuffix("\n").removesuffix("<|im_end|>") + "<|im_end|>"
    return out


def _rows(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("packing", [True, False])
def test_labels_are_the_assistant_text_and_never_cross_samples(sft_build, chat_tokenizer, packing):
    manifest, _, _ = sft_build
    ds = SftDataset(manifest, seq_len=1024, seed=3, packing=packing, epochs=1)
    seen = collections.Counter()
    for item in ds:
        ids, labels = item["input_ids"].numpy(), item["labels"].numpy()
        assert (labels[item["attention_mask"].numpy() == 0] == IGNORE_INDEX).all()
        assert (ids[item["attention_mask"].numpy() == 0] == manifest.pad_id).all()
        segments = _segments(item)
        assert packing or len(segments) == 1
        for a, b in segments:
            # a model shifting labels never predicts a sample from the one before it
            assert labels[a] == IGNORE_INDEX
            text = chat_tokenizer.decode(ids[a:b].tolist())
            labelled = [int(t) for t, lab in zip(ids[a:b], labels[a:b], strict=True) if lab != IGNORE_INDEX]
            assert all(labels[a:b][labels[a:b] != IGNORE_INDEX] == ids[a:b][labels[a:b] != IGNORE_INDEX])
            assert chat_tokenizer.decode(labelled) == _assistant_text(text)
            seen[text] += 1
    built = collections.Counter()
    for shard in manifest.shards:
        reader = manifest.open_shard(shard)
        built.update(chat_tokenizer.decode(reader.sample(i)[0].tolist()) for i in range(reader.num_documents))
    assert seen == built  # every sample exactly once in the epoch


def test_packing_fills_rows_and_cuts_long_samples(sft_build):
    manifest, _, _ = sft_build
    packed = SftDataset(manifest, seq_len=1024, seed=0, epochs=1)
    padded = SftDataset(manifest, seq_len=1024, seed=0, packing=False, epochs=1)
    assert padded.total_rows == manifest.samples
    assert packed.total_rows < manifest.samples / 2
    cut = SftDataset(manifest, seq_len=64, seed=0, packing=False, epochs=1)
    item = next(iter(cut))
    assert item["input_ids"].shape == (64,)
    assert int(item["attention_mask"].sum()) == min(64, int(cut.lengths[cut.plan(0)[0][0]]))


def test_epochs_reshuffle(sft_build):
    manifest, _, _ = sft_build
    ds = SftDataset(manifest, seq_len=1024, seed=0, epochs=2)
    assert not np.array_equal(ds.plan(0)[0], ds.plan(1)[0])
    assert sorted(ds.plan(0)[0].tolist()) == sorted(ds.plan(1)[0].tolist())
    assert len(list(ds)) == ds.total_rows == ds.rows_in_epoch(0) + ds.rows_in_epoch(1)


def test_resume_from_state_dict_is_bitwise_identical(sft_build):
    manifest, _, _ = sft_build
    ds = SftDataset(manifest, seq_len=512, seed=5)
    it = iter(ds)
    for _ in range(7):
        next(it)
    state = ds.state_dict()
    rest = [next(it) for _ in range(40)]  # runs into the second epoch
    again = SftDataset(manifest, seq_len=512, seed=5)
    again.load_state_dict(state)
    for a, b in zip(rest, _rows(again, 40), strict=True):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    with pytest.raises(ValueError, match="another SFT stream"):
        SftDataset(manifest, seq_len=512, seed=6).load_state_dict(state)


def test_ranks_and_workers_split_the_one_stream(sft_build):
    manifest, _, _ = sft_build
    one = _rows(SftDataset(manifest, seq_len=512, seed=1), 24)
    ranks = [_rows(SftDataset(manifest, seq_len=512, seed=1, rank=r, world_size=2), 12) for r in (0, 1)]
    for g, item in enumerate(one):
        assert torch.equal(item["input_ids"], ranks[g % 2][g // 2]["input_ids"])
    ds = SftDataset(manifest, seq_len=512, seed=1, batch_size=4, epochs=1)
    with_workers = list(DataLoader(ds, batch_size=4, num_workers=2))
    alone = list(DataLoader(SftDataset(manifest, seq_len=512, seed=1, batch_size=4, epochs=1), batch_size=4))
    assert len(with_workers) == len(alone)
    for a, b in zip(with_workers, alone, strict=True):
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["input_ids"], b["input_ids"])


def test_source_weights_set_each_source_share_of_an_epoch(sft_build, chat_tokenizer):
    manifest, _, _ = sft_build
    texts = collections.defaultdict(collections.Counter)  # source → its samples, by decoding the shards
    for shard in manifest.shards:
        reader = manifest.open_shard(shard)
        for i in range(reader.num_documents):
            texts[shard.source][chat_tokenizer.decode(reader.sample(i)[0].tolist())] += 1
    assert set(texts) == {"chat", "share", "qa"}
    ds = SftDataset(manifest, seq_len=1024, seed=2, epochs=1, weights={"chat": 2, "share": 0})
    seen = collections.Counter()
    for item in ds:
        for a, b in _segments(item):
            seen[chat_tokenizer.decode(item["input_ids"][a:b].tolist())] += 1
    assert seen == texts["chat"] + texts["chat"] + texts["qa"]  # chat twice, share never, qa once
    half = SftDataset(manifest, seq_len=1024, seed=2, epochs=2, weights={"chat": 0.5, "share": 0, "qa": 0})
    starts = np.cumsum([0] + [s.documents for s in manifest.shards])
    chat = [
        j
        for i, s in enumerate(manifest.shards)
        if s.source == "chat"
        for j in range(starts[i], starts[i + 1])
    ]
    # half of the chat samples an epoch, the other half the next
    assert sorted(np.concatenate([half.plan(e)[0] for e in (0, 1)]).tolist()) == chat
    with pytest.raises(ValueError, match=r"weights name sources the build does not hold: \['web'\]"):
        SftDataset(manifest, seq_len=128, seed=0, weights={"web": 1})
