"""Fine-tuning with `motif-data train` on an SFT build (CPU, fp32): a `tiny` model started from a pre-training
checkpoint learns generated conversations, the loss counts labelled tokens only, a resumed fine-tune equals an
uninterrupted one bitwise, and a checkpoint of another model is refused by name."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import orjson
import pytest
import torch

from motif_data.cli import main
from motif_data.sft.dataset import SftDataset
from motif_data.shards import SftManifest
from motif_data.train.checkpoint import latest_checkpoint
from motif_data.train.config import TrainConfig
from motif_data.train.loop import _setup, train, train_step
from motif_data.train.model import Motif

# Assistant replies the model can learn: one sentence, its last word one of three. The user's turn is random
# words, so a loss that (wrongly) counted the user's tokens could not fall as far.
REPLIES = ("Thank you, my answer is yes.", "Thank you, my answer is no.", "Thank you, my answer is maybe.")
SYLLABLES = ("ka", "to", "mi", "re", "su", "no", "pa", "li", "go", "ve", "ru", "xi", "bo", "de", "fa", "ze")


@pytest.fixture(scope="module")
def chat_tokenizer_dir(o200k, tmp_path_factory):
    """o200k with the named specials (ChatML among them) and no learned tokens: quick to make."""
    from motif_data.tokenizer import save
    from motif_data.tokenizer.vocab import FIRST_LEARNED, NAMED_SPECIALS, build_encoding

    enc = build_encoding(o200k, [], FIRST_LEARNED + len(NAMED_SPECIALS), name="o200k_chat")
    return save(enc, tmp_path_factory.mktemp("tok") / "chat")


@pytest.fixture(scope="module")
def sft_manifest(chat_tokenizer_dir, tmp_path_factory):
    """An SFT build, through `motif-data sft build`, of 120 short HF-chat conversations in a jsonl file (~28
    tokens each, so that rows of 33 hold them: the 200k-wide loss head makes every token count on a CPU)."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("sft-finetune")
    lines = []
    for _ in range(120):
        words = ["".join(rng.choices(SYLLABLES, k=rng.randint(2, 3))) for _ in range(rng.randint(4, 6))]
        messages = [
            {"role": "user", "content": " ".join(words)},
            {"role": "assistant", "content": rng.choice(REPLIES)},
        ]
        lines.append(orjson.dumps({"messages": messages}).decode())
    (root / "chat.jsonl").write_text("\n".join(lines) + "\n")
    (root / "sft.toml").write_text(
        f'output = "out"\ntokenizer = "{chat_tokenizer_dir}"\nmin_tokens = 8\n[executor]\ntasks = 1\n[dedup]\nnear = false\n'
        f'[[sources]]\nname = "chat"\nschema = "messages"\npaths = ["{root / "chat.jsonl"}"]\n'
    )
    assert main(["sft", "build", str(root / "sft.toml"), "--out", str(root / "out")]) == 0
    return root / "out" / "manifest.json"


def vocab_size(manifest) -> int:
    return SftManifest.load(manifest).tokenizer.vocab_size


def finetune_config(manifest, init_from, model: dict | None = None, **train) -> TrainConfig:
    settings = dict(seq_len=32, micro_batch=2, steps=20, lr=2e-2, warmup_steps=2, decay_fraction=0.0,
                    log_every=100, init_from=str(init_from), corpus=str(manifest)) | train  # fmt: skip
    return TrainConfig.from_dict(
        {"model": {"preset": "tiny", "vocab_size": vocab_size(manifest)} | (model or {}), "train": settings}
    )


@pytest.fixture(scope="module")
def base_run(sft_manifest, synthetic_manifest, tmp_path_factory):
    """A pre-training run of the same `tiny` model (the embedding sized for the chat tokenizer) on the
    synthetic corpus: the checkpoint a fine-tune starts from."""
    run = tmp_path_factory.mktemp("base") / "run"
    cfg = TrainConfig.from_dict(
        {
            "model": {"preset": "tiny", "vocab_size": vocab_size(sft_manifest)},
            "train": {"seq_len": 32, "micro_batch": 2, "steps": 2, "warmup_steps": 1, "log_every": 100},
        }
    )
    train(cfg, run, synthetic_manifest)
    return run


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def masked_mean_loss(model: Motif, rows: list[dict]) -> torch.Tensor:
    """Brute force: every row's per-token cross-entropy from the full logits, averaged over the positions whose
    next token is labelled (labels != -100) across all rows together."""
    picked = []
    for row in rows:
        ids, labels = row["input_ids"], row["labels"]
        logits = model(ids[None, :-1])[0] @ model.embed_tokens.weight.T
        logp = torch.log_softmax(logits.double(), dim=-1)
        for t in range(len(ids) - 1):
            if labels[t + 1] != -100:
                picked.append(-logp[t, labels[t + 1]])
    return torch.stack(picked).mean()


def test_a_tiny_finetune_from_a_checkpoint_learns_the_replies(tmp_path, sft_manifest, base_run):
    cfg = finetune_config(sft_manifest, base_run)
    train(cfg, tmp_path, sft_manifest)
    got = losses(tmp_path)
    # Step 1's loss is that of the checkpoint's weights on the stream's first rows, over labelled tokens only.
    base = Motif(cfg.model)
    base.load_state_dict(torch.load(latest_checkpoint(base_run / "checkpoints"), weights_only=False)["model"])
    stream = SftDataset(sft_manifest, cfg.seq_len + 1, cfg.seed, packing=True)
    with torch.no_grad():
        expected = masked_mean_loss(base, [stream.row(g) for g in range(cfg.micro_batch)])
    assert got[0] == pytest.approx(float(expected), rel=1e-5)
    first, last = sum(got[:3]) / 3, sum(got[-3:]) / 3
    print(f"labelled-token loss: first 3 steps {first:.3f}, last 3 steps {last:.3f}")
    # From ~12 nats (a vocabulary of 200k) down: here 2.1 after 20 steps. A no-op optimizer stays at the start;
    # the same run with every next token a target (user turns, headers) ends at 4.8, 0.40 of its start.
    assert last < 3.5 and last < 0.3 * first
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["domain_tokens"] == {"sft": cfg.steps * cfg.micro_batch * cfg.seq_len}
    assert all(
        r["domain_loss"] == {"sft": r["loss"]}
        for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
    )


def test_the_loss_is_the_mean_over_the_labelled_tokens_of_the_whole_step(sft_manifest, base_run):
    cfg = finetune_config(sft_manifest, base_run, seq_len=24, micro_batch=2, grad_accum=2, grad_clip=1e9)
    run = _setup(cfg, SftManifest.load(sft_manifest))
    reference = copy.deepcopy(run.raw_model)
    # Hand-set labels: few in the first micro-batch, many in the second, so a mean per micro-batch (or per
    # token of the batch) differs from the mean over the step's labelled tokens.
    g = torch.Generator().manual_seed(1)
    rows, batches = [], []
    for share in (0.1, 0.7):
        ids = torch.randint(0, vocab_size(sft_manifest), (2, cfg.seq_len + 1), generator=g)
        labels = torch.where(torch.rand(ids.shape, generator=g) < share, ids, torch.tensor(-100))
        position_ids = torch.arange(cfg.seq_len + 1).expand(2, -1)
        batches.append({"input_ids": ids, "labels": labels, "position_ids": position_ids})
        rows += [{"input_ids": ids[i], "labels": labels[i]} for i in range(2)]
    grads = {}
    run.optimizer.step = lambda: grads.update(
        {n: p.grad.clone() for n, p in run.raw_model.named_parameters()}
    )
    out = train_step(run, iter(batches), 0)

    expected = masked_mean_loss(reference, rows)
    expected.backward()
    assert float(out["sums"].sum() / out["counts"].sum()) == pytest.approx(expected.item(), rel=1e-6)
    assert int(out["counts"].sum()) == sum(int((r["labels"][1:] != -100).sum()) for r in rows)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-8, msg=name)


def test_a_resumed_finetune_equals_an_uninterrupted_one_bitwise(tmp_path, sft_manifest, base_run):
    cfg = finetune_config(
        sft_manifest, base_run, steps=4, ckpt_every=3, keep_checkpoints=5, sft_packing="pad"
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(cfg, straight, sft_manifest)
    train(cfg, resumed, sft_manifest)
    (resumed / "checkpoints" / "step-0000004.pt").unlink()  # "killed" after step 3's checkpoint
    # Resumed with two DataLoader workers: the stream resumes at row 6, a batch that is worker 1's from row 0.
    # The run's own checkpoint wins over init_from, which is not even read (it names no file now).
    train(cfg.replace(num_workers=2, init_from=str(tmp_path / "gone")), resumed, sft_manifest, resume=True)
    assert losses(resumed) == losses(straight) and len(losses(straight)) == 4
    a = torch.load(latest_checkpoint(straight / "checkpoints"), weights_only=False)
    b = torch.load(latest_checkpoint(resumed / "checkpoints"), weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][n], b["model"][n]) for n in a["model"])
    assert a["loader"] == b["loader"]


def test_init_from_a_checkpoint_of_another_model_names_the_keys(tmp_path, sft_manifest, base_run):
    cfg = finetune_config(sft_manifest, base_run, model={"ffn_dim": 96})
    with pytest.raises(
        ValueError, match=r"train\.init_from: .* differs .* in ffn_dim \(checkpoint 128, \[model\] 96\)"
    ):
        train(cfg, tmp_path, sft_manifest)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_sft_settings_on_a_pretraining_corpus_are_refused_by_key(tmp_path, synthetic_manifest, sft_manifest):
    with pytest.raises(ValueError, match=r"train\.sft_packing: applies to an SFT corpus only"):
        TrainConfig.from_dict({"model": {"preset": "tiny"}, "train": {"sft_packing": "pad"}})
    cfg = TrainConfig.from_dict(
        {"model": {"preset": "tiny"}, "train": {"sft_packing": "pad", "corpus": str(synthetic_manifest)}}
    )
    with pytest.raises(ValueError, match=r"train\.sft_packing: applies to an SFT corpus only"):
        train(cfg, tmp_path / "a", synthetic_manifest)
    with pytest.raises(ValueError, match=r"train\.fit_schedule: .* an SFT corpus has none"):
        train(finetune_config(sft_manifest, "unused", fit_schedule=True), tmp_path / "b", sft_manifest)


def test_the_shipped_finetune_config_names_the_gsm8k_build_and_a_base_run():
    root = Path(__file__).resolve().parents[2]
    cfg = TrainConfig.load(root / "configs" / "sft-tiny.toml")
    assert cfg.preset == "tiny" and cfg.model.vocab_size == 219_520
    assert Path(cfg.corpus) == root / "build" / "sft-gsm8k" / "manifest.json"
    assert Path(cfg.init_from) == root / "runs" / "tiny-base"


def test_sft_weights_reach_the_stream_and_are_checked_by_key(tmp_path, sft_manifest, base_run):
    # Weighted, the run's first step reads the rows of SftDataset with those weights (each sample twice an
    # epoch here: another order than unweighted), and its loss is theirs.
    cfg = finetune_config(sft_manifest, base_run, steps=1, warmup_steps=0, sft_weights={"chat": 2})
    train(cfg, tmp_path / "weighted", sft_manifest)
    base = Motif(cfg.model)
    base.load_state_dict(torch.load(latest_checkpoint(base_run / "checkpoints"), weights_only=False)["model"])
    rows = {}
    for weights in ({"chat": 2.0}, None):
        stream = SftDataset(sft_manifest, cfg.seq_len + 1, cfg.seed, packing=True, weights=weights)
        rows[weights is None] = [stream.row(g) for g in range(cfg.micro_batch)]
    assert any(
        not torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(rows[False], rows[True], strict=True)
    )
    with torch.no_grad():
        expected = masked_mean_loss(base, rows[False])
    assert losses(tmp_path / "weighted")[0] == pytest.approx(float(expected), rel=1e-5)

    with pytest.raises(
        ValueError, match=r"train\.sft_weights: names sources the build does not hold: \['tulu'\]"
    ):
        train(finetune_config(sft_manifest, base_run, sft_weights={"tulu": 1}), tmp_path / "a", sft_manifest)
    with pytest.raises(ValueError, match=r"train\.sft_weights: weights are times"):
        finetune_config(sft_manifest, base_run, sft_weights={"chat": -1})
    with pytest.raises(ValueError, match=r"train\.sft_weights: expected a table of numbers"):
        finetune_config(sft_manifest, base_run, sft_weights={"chat": "two"})
