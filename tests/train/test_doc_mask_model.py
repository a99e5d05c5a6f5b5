"""Document masking in the model (`[model] doc_mask`, `rope_positions`): a packed row must compute what each of
its documents computes alone, the independent reference being the same model run on the documents one by one
(no mask needed there: a row is one document)."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

from motif_data.train.config import ModelConfig, TrainConfig
from motif_data.train.model import Motif

BASE = ModelConfig(n_layers=2, d_model=32, n_heads=4, head_dim=8, ffn_dim=96, vocab_size=300)
ATTENTIONS = {
    "differential": BASE,
    "grouped_differential": dataclasses.replace(
        BASE, n_heads=5, attention="grouped_differential", noise_heads=1
    ),
    "standard": dataclasses.replace(BASE, attention="standard", mlp="swiglu"),
}
LENGTHS = (1, 6, 9, 1, 7)  # a one-token document among them; 24 tokens in all


def _packed(lengths, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, vocab, (n + 1,), generator=g) for n in lengths]  # inputs + the next token
    ids = torch.cat([d[:-1] for d in docs])[None]
    targets = torch.cat([d[1:] for d in docs])[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return docs, ids, targets, positions


def _alone(model, docs):
    """Per-token losses and hidden states of each document run by itself, concatenated."""
    losses = [model(d[None, :-1], d[None, 1:])[0] for d in docs]
    hidden = [model(d[None, :-1])[0] for d in docs]
    return torch.cat(losses), torch.cat(hidden)


@pytest.mark.parametrize("rope_positions", ["document", "sequence"])
@pytest.mark.parametrize("attention", list(ATTENTIONS))
def test_a_packed_row_with_doc_mask_computes_each_document_alone(attention, rope_positions):
    cfg = dataclasses.replace(ATTENTIONS[attention], doc_mask=True, rope_positions=rope_positions)
    torch.manual_seed(0)
    model = Motif(cfg).double()
    docs, ids, targets, positions = _packed(LENGTHS)
    losses, hidden = model(ids, targets, positions)[0], model(ids, None, positions)[0]
    ref_losses, ref_hidden = _alone(model, docs)
    # "sequence" RoPE gives the later documents other absolute angles, but attention scores depend only on
    # the distance between query and key: equal in exact arithmetic, apart from the fp32 tables' rounding.
    tol = 1e-12 if rope_positions == "document" else 1e-6
    torch.testing.assert_close(losses, ref_losses, rtol=tol, atol=tol)
    torch.testing.assert_close(hidden, ref_hidden, rtol=tol, atol=tol)


@pytest.mark.parametrize("attention", list(ATTENTIONS))
def test_without_doc_mask_later_documents_see_earlier_ones(attention):
    # The check above can fail: unmasked, a packed row differs from its documents alone after the first.
    torch.manual_seed(0)
    model = Motif(ATTENTIONS[attention]).double()
    docs, ids, targets, positions = _packed(LENGTHS)
    losses = model(ids, targets, positions)[0]
    ref_losses, _ = _alone(model, docs)
    torch.testing.assert_close(losses[:1], ref_losses[:1])  # the first document is alone either way
    assert (losses[1:] - ref_losses[1:]).abs().max() > 1e-4


def test_rotary_tables_at_given_positions_follow_the_rope_formula():
    cfg = dataclasses.replace(BASE, rope_base=500.0)
    model = Motif(cfg)
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4], [5, 6, 0, 1, 0, 0, 1, 2]])
    cos, sin = model.rotary(positions.shape[1], positions)
    d = cfg.head_dim
    angles = positions[..., None].double() / 500.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    assert cos.shape == (2, 1, 8, d // 2)
    torch.testing.assert_close(cos[:, 0].double(), angles.cos(), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin[:, 0].double(), angles.sin(), rtol=0, atol=1e-6)


def test_a_document_continued_from_an_earlier_window_restarts_its_rope_positions_at_the_row_start():
    # The loader counts a continued document's positions from where it began (100 here); "document" RoPE
    # restarts them in the row, so the row computes what it computes when they start at 0.
    cfg = dataclasses.replace(BASE, doc_mask=True, rope_positions="document")
    torch.manual_seed(0)
    model = Motif(cfg).double()
    _, ids, targets, positions = _packed((5, 4))
    continued = positions.clone()
    continued[0, :5] += 100
    torch.testing.assert_close(model(ids, targets, continued), model(ids, targets, positions), rtol=0, atol=0)


def test_no_position_ids_means_one_document_a_row():
    cfg = dataclasses.replace(BASE, doc_mask=True, rope_positions="document")
    torch.manual_seed(0)
    masked, plain = Motif(cfg), Motif(BASE)
    plain.load_state_dict(masked.state_dict())
    ids = torch.randint(0, 300, (2, 12))
    torch.testing.assert_close(masked(ids[:, :-1], ids[:, 1:]), plain(ids[:, :-1], ids[:, 1:]))


def test_model_config_names_the_rope_positions_choices():
    with pytest.raises(ValueError, match="rope_positions") as raised:
        TrainConfig.from_dict({"model": {"preset": "tiny", "rope_positions": "doc"}, "train": {}})
    assert "document" in str(raised.value) and "sequence" in str(raised.value)


def test_a_training_step_with_doc_mask_computes_the_loaders_documents_alone(tmp_path, synthetic_manifest):
    # The loop must hand the model the loader's document positions: the first step's loss (before any
    # update) equals the initial model's loss over the first batch's documents run one by one.
    from motif_data.mixer import MixtureSchedule
    from motif_data.shards import Manifest
    from motif_data.train.loop import train
    from motif_data.trainer_hook import MixtureDataLoader, MixtureDataset, position_ids

    model = dataclasses.replace(BASE, vocab_size=None, doc_mask=True, rope_positions="document")
    cfg = TrainConfig(model=model, seq_len=48, micro_batch=3, steps=1, warmup_steps=0, save_checkpoints=False)
    train(cfg, tmp_path / "run", synthetic_manifest)
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["loss"]

    manifest = Manifest.load(synthetic_manifest)
    dataset = MixtureDataset(manifest, MixtureSchedule.load(cfg.schedule), cfg.seq_len, cfg.seed, 0, 1,
                             batch_size=cfg.micro_batch)  # fmt: skip
    batch = next(iter(MixtureDataLoader(dataset)))
    torch.manual_seed(cfg.seed)
    initial = Motif(dataclasses.replace(model, vocab_size=manifest.tokenizer.vocab_size))
    ids, positions = batch["input_ids"].long(), position_ids(batch)
    losses = []
    for row, pos in zip(ids, positions, strict=True):
        starts = [i for i in range(len(row) - 1) if i == 0 or pos[i] != pos[i - 1] + 1] + [len(row) - 1]
        for a, b in itertools.pairwise(starts):
            losses.append(initial(row[None, a:b], row[None, a + 1 : b + 1])[0])
    assert len(losses) > cfg.micro_batch  # rows of several documents, or the test proves nothing
    expect = torch.cat(losses).double().mean().item()
    assert logged == pytest.approx(expect, rel=1e-5)
