import argparse

import numpy as np
import pytest

from motif_data import DOMAINS
from motif_data.mixer import MixtureSchedule, QuotaSampler, Stage, plan
from motif_data.mixer.cli import register
from motif_data.shards import DomainInfo, Manifest, ShardError, TokenizerInfo

TOK = TokenizerInfo("o200k_base", "ab" * 32, 200_019, 199_999)


def _manifest(tokens: dict[str, int]) -> Manifest:
    # plan reads only the counts of a manifest, so no shard files are needed
    return Manifest(TOK, {d: DomainInfo(10, t, ()) for d, t in tokens.items()})


def test_plan_counts_epochs_and_the_point_where_a_domain_runs_out():
    sched = MixtureSchedule([Stage("s", 1000 * 64, {"web": 0.75, "code": 0.25}, {"web": 0.25, "code": 0.75})])
    sampler = QuotaSampler(sched, 64, seed=0)
    # 65-token windows: web has 700 (needs 500), code has 250 (needs 500)
    rows = {r.domain: r for r in plan(_manifest({"web": 700 * 65 + 64, "code": 250 * 65}), sampler, 64_000)}
    assert rows["web"].available == 700 and rows["code"].available == 250
    assert rows["web"].sequences == 500 and rows["code"].sequences == 500
    assert rows["web"].runs_out_at is None and rows["code"].epochs == 2.0
    # brute force: the position of code's 251st draw in the stream
    dom = sampler.domains(0, 1000)
    first_past = int(np.flatnonzero(dom == DOMAINS.index("code"))[250])
    assert rows["code"].runs_out_at == first_past * 64
    assert rows["math"].sequences == 0 and rows["math"].runs_out_at is None


def test_plan_rejects_a_scheduled_domain_missing_from_the_build():
    sampler = QuotaSampler(MixtureSchedule.preset("motif-2.6b"), 4096, seed=0)
    with pytest.raises(ValueError, match="draws from \\['multilingual', 'reasoning'\\]"):
        plan(_manifest({d: 10**9 for d in DOMAINS if d not in ("multilingual", "reasoning")}), sampler, 1e12)


def main(argv: list[str]) -> int:
    """The plan subcommand as motif_data.cli wires it, without the other capabilities' parsers."""
    parser = argparse.ArgumentParser(prog="motif-data")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_plan_command_prints_the_table_and_draws_the_plot(tmp_path, capsys):
    _manifest({d: 2 * 10**12 for d in DOMAINS} | {"math": 10**9}).save(tmp_path / "manifest.json")
    png = tmp_path / "plan.png"
    rc = main(["plan", "--manifest", str(tmp_path / "manifest.json"), "--schedule", "motif-2.6b",
               "--total-tokens", "2.5e12", "--seq-len", "4096", "--plot", str(png)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "math" in out and "runs out at" in out
    web_line = next(line for line in out.splitlines() if line.startswith("web"))
    assert "enough data" in web_line
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ShardError, match="no manifest"):
        main(["plan", "--manifest", str(tmp_path / "none.json"), "--total-tokens", "1e9", "--seq-len", "8"])
    with pytest.raises(SystemExit):
        main(["plan", "--manifest", "m.json", "--total-tokens", "-5", "--seq-len", "8"])
    assert "must be > 0, got -5" in capsys.readouterr().err


def test_plan_shows_the_phases_of_a_long_context_run_and_plans_its_pages(tmp_path, capsys):
    _manifest({d: 2 * 10**12 for d in DOMAINS} | {"math": 10**9}).save(tmp_path / "manifest.json")
    manifest = ["--manifest", str(tmp_path / "manifest.json")]
    lc = ["--phase", "2420000161792:4096", "--phase", "79997960192:16384"]  # configs/motif-2.6b-lc.toml
    assert main(["plan", *manifest, *lc]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # 2,420,000,161,792 / 4,096 = 590,820,352 sequences, 4 to a page; 79,997,960,192 / 16,384 = 4,882,688
    assert lines[3].split() == ["0", "0", "2.42T", "4096", "590.8M", "4"]
    assert lines[4].split() == ["1", "2.42T", "2.5T", "16384", "4.883M", "1"]
    assert "in pages of 16385 tokens" in out
    # the domains' plan is the one of a run without phases at the longest seq_len: pages are its windows
    main(["plan", *manifest, "--total-tokens", "2499998121984", "--seq-len", "16384"])
    plain = capsys.readouterr().out
    assert out.split("per domain")[1].splitlines()[1:] == plain.splitlines()[1:]
    for bad, message in (
        (["--phase", "1000:4096", "--phase", "16384:16384"], "each seq_len must divide the longest"),
        ([*lc, "--seq-len", "4096"], "give --seq-len for a run without phases, or --phase"),
        (["--phase", "8e10"], "expected TOKENS:SEQ_LEN such as 8e10:16384"),
    ):
        with pytest.raises(SystemExit):
            main(["plan", *manifest, *bad])
        assert message in capsys.readouterr().err
