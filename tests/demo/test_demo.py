"""The demo in a reduced mode: its outputs agree with each other (manifest = stats = shards = loader)."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from motif_data import DOMAINS
from motif_data.demo.hub import HubSource, stream_docs
from motif_data.demo.run import DemoConfig, check_outputs, run_demo
from motif_data.mixer import MixtureSchedule, packed_sequences
from motif_data.shards import Manifest


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    facts = run_demo(
        DemoConfig(
            out=out,
            budget_bytes=150_000,
            loader_batches=20,
            batch_size=4,
            seq_len=128,
            train_steps=3,
            progress=False,
        )
    )
    return out, facts


def test_demo_builds_all_eight_domains_and_counts_agree(demo):
    out, facts = demo
    per_domain = check_outputs(out)
    assert sorted(per_domain) == sorted(DOMAINS)
    for d, c in per_domain.items():
        assert c["manifest_documents"] == c["shard_documents"] == c["stats_kept"] > 0, d
        assert c["manifest_tokens"] == c["shard_tokens"] == c["stats_tokens"] > 0, d


def test_demo_loader_view_matches_the_manifest(demo):
    out, facts = demo
    manifest = Manifest.load(out / "corpus" / "manifest.json")
    loader = facts["loader"]
    assert loader["sequences"] == 20 * 4
    assert sum(loader["per_domain"].values()) == loader["sequences"]
    schedule = MixtureSchedule.load(out / "schedule.toml")
    for d in DOMAINS:
        # every domain the schedule draws from early on has packed sequences available to the loader
        if schedule.weights_at(0)[d] > 0:
            assert packed_sequences(manifest.domains[d].tokens, 128) > 0, d


def test_demo_writes_report_and_readable_outputs(demo):
    out, _ = demo
    report = (out / "report.md").read_text()
    for png in ("bytes_per_token.png", "plan.png", "mixture.png", "train/loss.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert png in report
    metrics = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(np.isfinite(m["loss"]) for m in metrics)
    assert (out / "tokenizer" / "tokenizer.json").is_file()


def test_demo_refuses_an_existing_directory_in_one_line(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    proc = subprocess.run(
        [sys.executable, "-m", "motif_data", "demo", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--force" in proc.stderr
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_hub_streaming_reads_local_files_of_the_same_format(tmp_path):
    # Same code path as --from-hub, on a local parquet file shaped like openai/gsm8k's rows.
    table = pa.table({"question": ["2+2?", "3*3?"], "answer": ["4", "9"]})
    pq.write_table(table, tmp_path / "train.parquet")
    src = HubSource(
        "gsm8k",
        "reasoning",
        "t",
        "parquet",
        fields=("question", "answer"),
        data_files=(str(tmp_path / "train.parquet"),),
    )
    assert list(stream_docs(src, 5)) == ["2+2?\n\n4", "3*3?\n\n9"]
    bad = HubSource(
        "x", "web", "t", "parquet", fields=("text",), data_files=(str(tmp_path / "train.parquet"),)
    )
    with pytest.raises(ValueError, match="no field"):
        list(stream_docs(bad, 1))


def _demo_cli(args):
    from motif_data.cli import main

    return main(["demo", *args])


def test_demo_without_disk_space_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 5 * 2**20, 5 * 2**20))
    assert _demo_cli(["--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "free" in err and "--out" in err
    assert not (tmp_path / "d").exists()


def test_demo_with_a_missing_extra_says_what_to_install(tmp_path, monkeypatch, capsys):
    import importlib

    real = importlib.import_module

    def no_konlpy(name, *a, **k):
        if name == "konlpy":
            raise ImportError("No module named 'konlpy'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_konlpy)
    assert _demo_cli(["--out", str(tmp_path / "d"), "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'motif-data[demo]'" in err and "konlpy" in err
    assert not (tmp_path / "d").exists()
