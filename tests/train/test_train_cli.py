"""``motif-data train``: the tiny preset on a corpus built from real text with o200k, end to end on CPU."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from motif_data.cli import main as motif_data_main
from motif_data.train.cli import DEFAULT_CORPUS_CONFIG, register, resolve_corpus

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def main(argv: list[str]) -> int:
    """``motif-data`` with only the train subcommand (the other capabilities are not under test here)."""
    parser = argparse.ArgumentParser(prog="motif-data")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def small_build_config(tmp_path_factory, corpus, o200k_path) -> Path:
    """Two small real sources (SymPy solver docstrings → reasoning, licences → specialized): builds in seconds."""
    root = tmp_path_factory.mktemp("train-cli")
    (root / "build.toml").write_text(
        f"""
output = "{root / "unused"}"
[tokenizer]
path = "{o200k_path}"
[dedup]
exact = false
near = false
[executor]
kind = "local"
tasks = 1
workers = 1
[[sources]]
name = "solvers"
format = "jsonl"
paths = ["{corpus["reasoning"]}"]
domain = "reasoning"
[[sources]]
name = "licences"
format = "jsonl"
paths = ["{corpus["specialized"]}"]
domain = "specialized"
"""
    )
    (root / "schedule.toml").write_text(
        'name = "two-domains"\n[[stage]]\ntokens = 1e6\n[stage.start]\nreasoning = 0.5\nspecialized = 0.5\n'
        "[stage.end]\nreasoning = 0.2\nspecialized = 0.8\n"
    )
    (root / "tiny.toml").write_text(
        (CONFIGS / "tiny.toml")
        .read_text()
        .replace('schedule = "motif-2.6b"', f'schedule = "{root / "schedule.toml"}"')
    )
    return root


def test_train_tiny_builds_the_corpus_trains_plots_and_resumes(small_build_config, capsys):
    root = small_build_config
    out = root / "run"
    argv = ["train", str(root / "tiny.toml"), "--corpus", str(root / "build.toml"), "--out", str(out)]
    assert main([*argv, "--steps", "6"]) == 0
    manifest = json.loads((out / "corpus" / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == 200_019  # o200k: the embedding is sized from it
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert set().union(*(r["domain_loss"] for r in rows)) == {"reasoning", "specialized"}
    assert rows[-1]["loss"] < rows[0]["loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert 5e6 < summary["parameters"] < 8e6  # "a few M": the 200,019 × 32 embedding is 6.4M of it

    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(out / "loss.png").shape
    assert width >= 800 and height >= 500

    # The same --out again without --resume: exit 2 with one line, the run left exactly as it was.
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert motif_data_main([*argv, "--steps", "6"]) == 2  # the real entry point: errors become exit code 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a run already" in err and "--resume" in err
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == before

    # Resume with more steps: continues from step 6 (the last checkpoint), the corpus is not rebuilt.
    capsys.readouterr()
    assert main([*argv, "--steps", "8", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "building the corpus" not in printed and "steps 6 → 8" in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))

    # Resume of the finished run: exit 0, says so, touches nothing (it crashed and nulled summary.json).
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert main([*argv, "--steps", "8", "--resume"]) == 0
    assert "finished at step 8 already: nothing to do" in capsys.readouterr().out
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == before


def test_bad_config_fails_before_any_work(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\npreset = "tiny"\n[train]\nlr = 0\n')
    with pytest.raises(ValueError, match="train.lr: expected a number > 0, got 0.0"):
        main(["train", str(bad), "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_missing_corpus_manifest_says_to_build_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="build the corpus first"):
        resolve_corpus(str(tmp_path / "nothing" / "manifest.json"), tmp_path)


def test_without_corpus_the_shared_sample_build_is_used_and_cached(tmp_path):
    assert DEFAULT_CORPUS_CONFIG == CONFIGS / "shared-sample.toml" and DEFAULT_CORPUS_CONFIG.is_file()
    cached = tmp_path / "corpus" / "manifest.json"
    cached.parent.mkdir()
    cached.write_text("{}")
    # A finished build under <out>/corpus is reused rather than rebuilt.
    assert resolve_corpus(None, tmp_path) == cached


def test_train_estimate_of_a_run_in_phases_gives_each_phase_its_shape(capsys):
    config = CONFIGS / "motif-2.6b-lc.toml"
    assert main(["train-estimate", "--config", str(config)]) == 0
    heads = [line for line in capsys.readouterr().out.splitlines() if "B parameters" in line]
    assert len(heads) == 2
    assert "phase 0:" in heads[0] and "micro-batch 4 × 4096 tokens" in heads[0]
    assert "phase 1:" in heads[1] and "micro-batch 1 × 16384 tokens" in heads[1]
    assert main(["train-estimate", "--config", str(config), "--seq-len", "2048"]) == 0
    heads = [line for line in capsys.readouterr().out.splitlines() if "B parameters" in line]
    assert len(heads) == 1 and "micro-batch 4 × 2048 tokens" in heads[0] and "phase" not in heads[0]
