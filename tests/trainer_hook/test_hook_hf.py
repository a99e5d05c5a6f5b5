import json
import types

import pytest

from motif_data.mixer import MixtureSchedule

transformers = pytest.importorskip("transformers")  # optional dependency, installed in the test extra

from motif_data.trainer_hook import MixtureDataset  # noqa: E402
from motif_data.trainer_hook.hf import STATE_FILE, MixtureTrainerCallback, collate_causal_lm  # noqa: E402

SCHED = MixtureSchedule.preset("motif-2.6b", stage1_tokens=8000, anneal_tokens=2000)


def _args(tmp_path, **kw):
    # The TrainingArguments fields the callback reads (the real Trainer runs in the test at the end).
    kw = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 3, "ignore_data_skip": True} | kw
    return types.SimpleNamespace(output_dir=str(tmp_path), **kw)


def test_callback_saves_and_restores_the_stream_position(small_build, tmp_path):
    manifest, _ = small_build
    ds = MixtureDataset(manifest, SCHED, 16, seed=3, batch_size=4)
    cb = MixtureTrainerCallback(ds)
    args = _args(tmp_path)
    state = transformers.TrainerState(global_step=7)
    (tmp_path / "checkpoint-7").mkdir()
    cb.on_save(args, state, None)
    saved = json.loads((tmp_path / "checkpoint-7" / STATE_FILE).read_text())
    assert saved["position"] == 7 * 3 * 4
    logs = {}
    cb.on_log(args, state, None, logs=logs)
    assert logs["data/epochs_web"] > 0

    fresh = MixtureDataset(manifest, SCHED, 16, seed=3, batch_size=4)
    MixtureTrainerCallback(fresh).on_train_begin(args, state, None)
    first = next(iter(fresh))["input_ids"]
    expected = next(MixtureDataset(manifest, SCHED, 16, seed=3).items(84, 85))["input_ids"]
    assert first.equal(expected)

    other_seed = MixtureDataset(manifest, SCHED, 16, seed=4, batch_size=4)
    with pytest.raises(ValueError, match="another configuration"):
        MixtureTrainerCallback(other_seed).on_train_begin(args, state, None)
    with pytest.raises(ValueError, match="keep the global batch"):
        MixtureTrainerCallback(ds).on_train_begin(_args(tmp_path, gradient_accumulation_steps=2), state, None)
    with pytest.raises(ValueError, match="ignore_data_skip=True.*batch_size 4"):
        MixtureTrainerCallback(ds).on_train_begin(
            _args(tmp_path, ignore_data_skip=False, per_device_train_batch_size=2), state, None
        )


def _trainer(ds, out, steps, callback, seed=0):
    import torch

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=200_019, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, save_steps=2, per_device_train_batch_size=ds.batch_size,
        ignore_data_skip=True, report_to=[], use_cpu=True, logging_steps=1, dataloader_num_workers=0,
        learning_rate=1e-3,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    return transformers.Trainer(
        model=model, args=args, train_dataset=ds, data_collator=collate_causal_lm, callbacks=[callback]
    )


def test_the_readme_recipe_trains_with_a_real_trainer_and_resume_from_elsewhere_is_checked(
    small_build, tmp_path
):
    # The recipe as a user runs it: the hf extra brings accelerate, the collator gives labels (without them the
    # model returns no loss and Trainer stops), and a resume from a checkpoint outside output_dir is checked.
    manifest, _ = small_build
    first = tmp_path / "first"
    ds = MixtureDataset(manifest, SCHED, 16, seed=3, batch_size=4)
    result = _trainer(ds, first, 2, MixtureTrainerCallback(ds)).train()
    assert result.global_step == 2 and result.training_loss > 0
    checkpoint = first / "checkpoint-2"
    assert json.loads((checkpoint / STATE_FILE).read_text())["position"] == 2 * 4

    other_seed = MixtureDataset(manifest, SCHED, 16, seed=4, batch_size=4)
    with pytest.raises(ValueError, match="no mixture_state.json.*checkpoint=PATH"):
        _trainer(other_seed, tmp_path / "second", 4, MixtureTrainerCallback(other_seed)).train(
            resume_from_checkpoint=str(checkpoint)
        )
    with pytest.raises(ValueError, match="another configuration"):
        cb = MixtureTrainerCallback(other_seed, checkpoint=checkpoint)
        _trainer(other_seed, tmp_path / "second", 4, cb).train(resume_from_checkpoint=str(checkpoint))
    same = MixtureDataset(manifest, SCHED, 16, seed=3, batch_size=4)
    cb = MixtureTrainerCallback(same, checkpoint=checkpoint)
    resumed = _trainer(same, tmp_path / "third", 4, cb).train(resume_from_checkpoint=str(checkpoint))
    assert resumed.global_step == 4
    assert json.loads((tmp_path / "third" / "checkpoint-4" / STATE_FILE).read_text())["position"] == 4 * 4
