"""Training configs: the shipped TOMLs load, bad ones fail with every problem named."""

from __future__ import annotations

from pathlib import Path

import pytest

from motif_data.train.config import MODEL_PRESETS, TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_shipped_configs_load_their_preset(name):
    cfg = TrainConfig.load(CONFIGS / f"{name}.toml")
    assert cfg.preset == name and cfg.model == MODEL_PRESETS[name]
    assert cfg.schedule == "motif-2.6b"


def test_the_long_context_config_ends_with_the_last_80b_tokens_at_16k_and_rope_base_500k():
    from motif_data.train.loop import _spans

    cfg = TrainConfig.load(CONFIGS / "motif-2.6b-lc.toml")
    first, last = cfg.phases
    assert (first.seq_len, first.rope_base, last.seq_len, last.rope_base) == (4096, 10_000, 16_384, 500_000)
    assert cfg.model.max_seq_len == 16_384 and 79.9e9 < last.tokens <= 80e9
    assert first.tokens + last.tokens == pytest.approx(2.5e12, rel=1e-5)  # the whole Motif schedule
    # On 64 GPUs: 4 × 4 × 4,096 × 64 = 4,194,304 tokens a step in both phases, and the steps of the config.
    spans = _spans(cfg, 64)
    assert [s.tokens_per_step for s in spans] == [4_194_304, 4_194_304]
    assert (
        spans[1].first_step == first.tokens // 4_194_304
        and cfg.steps == (first.tokens + last.tokens) // 4_194_304
    )


def test_model_overrides_apply_on_top_of_the_preset(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\npreset = "small"\nn_layers = 4\n[train]\nsteps = 20\nseq_len = 128\n')
    cfg = TrainConfig.load(path)
    assert cfg.model.n_layers == 4 and cfg.model.d_model == MODEL_PRESETS["small"].d_model
    assert cfg.steps == 20 and cfg.seq_len == 128


def test_bad_config_lists_every_problem_at_once(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\npreset = "tiny"\nn_heads = 3\nd_model = 0\n')
    with pytest.raises(ValueError) as e:
        TrainConfig.load(path)
    assert "model.n_heads: must be even" in str(e.value) and "model.d_model" in str(e.value)
    path.write_text(
        '[model]\npreset = "tiny"\n[train]\nsteps = 0\nlr = -1.0\ndtype = "fp8"\nloss_backend = "fast"\n'
    )
    with pytest.raises(ValueError) as e:
        TrainConfig.load(path)
    for fragment in (
        "train.steps",
        "train.lr",
        "train.dtype",
        "train.loss_backend: expected one of ['auto', ",
    ):
        assert fragment in str(e.value)


def test_unknown_keys_are_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\npreset = "tiny"\n[train]\nbatch = 3\n[optim]\nlr = 1\n')
    with pytest.raises(ValueError) as e:
        TrainConfig.load(path)
    assert "train: unknown keys ['batch']" in str(e.value) and "unknown sections ['optim']" in str(e.value)


def test_unknown_preset_and_missing_file_say_what_to_do(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('[model]\npreset = "huge"\n')
    with pytest.raises(ValueError, match="tiny"):
        TrainConfig.load(path)
    with pytest.raises(FileNotFoundError, match="configs/tiny.toml"):
        TrainConfig.load(tmp_path / "missing.toml")


def test_sequences_longer_than_the_rope_tables_fail_at_load(tmp_path):
    path = tmp_path / "long.toml"
    path.write_text('[model]\npreset = "tiny"\nmax_seq_len = 512\n[train]\nseq_len = 1024\n')
    with pytest.raises(ValueError, match="train.seq_len: 1024 exceeds model.max_seq_len 512"):
        TrainConfig.load(path)
    path.write_text('[model]\npreset = "tiny"\nmax_seq_len = 1024\n[train]\nseq_len = 1024\n')
    assert TrainConfig.load(path).model.max_seq_len == 1024


def test_relative_paths_are_relative_to_the_config_file_wherever_it_is_run(tmp_path, monkeypatch):
    # One rule for build and training configs: the TOML's folder. Before, a file of the same relative name
    # under the working directory won, so one config trained on different corpora from different folders.
    (tmp_path / "runs").mkdir()
    path = tmp_path / "runs" / "run.toml"
    path.write_text(
        '[model]\npreset = "tiny"\n[train]\ncorpus = "build/manifest.json"\nschedule = "mix.toml"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "build").mkdir(parents=True)
    (elsewhere / "build" / "manifest.json").write_text("{}")
    (elsewhere / "mix.toml").write_text("")
    monkeypatch.chdir(elsewhere)
    cfg = TrainConfig.load(path)
    assert cfg.corpus == str(tmp_path / "runs" / "build" / "manifest.json")
    assert cfg.schedule == str(tmp_path / "runs" / "mix.toml")
