import json
import types

import pytest

from motif_data.mixer import MixtureSchedule

transformers = pytest.importorskip("transformers")  # optional dependency, installed in the test extra

from motif_data.trainer_hook import MixtureDataset  # noqa: E402
from motif_data.trainer_hook.hf import STATE_FILE, MixtureTrainerCallback  # noqa: E402

SCHED = MixtureSchedule.preset("motif-2.6b", stage1_tokens=8000, anneal_tokens=2000)


def _args(tmp_path, **kw):
    # The TrainingArguments fields the callback reads (building real ones needs accelerate, not installed here).
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
