"""Configs are validated before any work, and the shipped configs parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from motif_data import DOMAINS
from motif_data.pipeline import BuildConfig, describe_plan
from motif_data.pipeline.build import make_executors, slurm_jobs, stages

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _targets(config) -> set[str]:
    out = set()
    for s in config.sources:
        out |= {s.domain} if s.domain else {r.domain for r in s.route} | {s.default_domain}
    return out - {None}


def test_shared_sample_config_reads_every_shared_sample_into_its_domain(shared_data):
    config = BuildConfig.load(CONFIGS / "shared-sample.toml")
    files = sorted(
        p.relative_to(shared_data) for p in shared_data.rglob("*") if p.is_file() and p.suffix != ".md"
    )
    from motif_data.pipeline.config import expand_paths

    named = {
        Path(p).resolve().relative_to(shared_data.resolve()): s
        for s in config.sources
        for p in expand_paths(s)
    }
    assert sorted(named) == files
    for rel, source in named.items():
        domain = rel.parts[0]  # the samples are filed by domain
        assert source.domain == domain or domain in {r.domain for r in source.route}, rel
    assert _targets(config) == set(DOMAINS)


def test_motif_config_names_hub_sources_for_all_domains(o200k_path):
    data = tomllib.loads((CONFIGS / "motif-2.6b.toml").read_text())
    data["tokenizer"]["path"] = str(o200k_path)  # the trained tokenizer does not exist on this machine
    config = BuildConfig.from_dict(data, base=CONFIGS)
    assert _targets(config) == set(DOMAINS)
    assert config.executor.kind == "slurm" and config.executor.tasks == 4096
    hub = [p for s in config.sources for p in s.paths] + [
        s.dataset for s in config.sources if s.format == "hf"
    ]
    assert all(p.startswith("hf://datasets/") or "/" in p for p in hub)
    assert {s.format for s in config.sources} >= {"dclm", "fineweb2", "hf", "parquet"}
    # the whole build maps onto Slurm jobs that depend on each other (submitted, never run here)
    from datatrove.executor.slurm import SlurmPipelineExecutor

    plan = stages(config, Path("/tmp/never-written"))
    executors = make_executors(config, Path("/tmp/never-written"), plan)
    assert all(isinstance(e, SlurmPipelineExecutor) for e in executors)
    assert [e.depends for e in executors[1:]] == executors[:-1]
    assert executors[0].partition == "cpu" and executors[0].tasks == 4096
    assert [e.tasks for e in executors] == [st.tasks for st in plan]


def test_the_slurm_finalize_job_gets_the_stages_sbatch_settings(o200k_path, tmp_path):
    data = tomllib.loads((CONFIGS / "motif-2.6b.toml").read_text())
    data["tokenizer"]["path"] = str(o200k_path)
    data["executor"] |= {"qos": "high", "venv_path": "/opt/motif/bin/activate", "cpus_per_task": 2,
                         "mem_per_cpu_gb": 3.5, "sbatch_args": {"account": "motif-data"}}  # fmt: skip
    config = BuildConfig.from_dict(data, base=CONFIGS)
    jobs = slurm_jobs(config, tmp_path, stages(config, tmp_path))
    finalize, stage = jobs[-1], jobs[0]
    assert finalize.job_name == "motif-finalize" and finalize.tasks == 1 and finalize.depends is jobs[-2]

    def directives(job):  # what datatrove writes into the job's sbatch script, less the per-job lines
        return {
            k: v
            for k, v in job.get_sbatch_args().items()
            if k not in ("job-name", "output", "error", "array")
        }

    # before: the finalize job had partition and time only, so the manifest job failed where qos is required
    assert directives(finalize) == directives(stage)
    assert {"qos": "high", "account": "motif-data", "cpus-per-task": 2, "mem-per-cpu": "3.5G"}.items() <= (
        directives(finalize).items()
    )
    assert finalize.venv_path == stage.venv_path == "/opt/motif/bin/activate"


def test_bad_config_fails_fast_with_every_problem_listed(tmp_path):
    bad = {
        "output": str(tmp_path / "out"),
        "colour": "blue",
        "executor": {"kind": "spark", "tasks": 0},
        "sources": [
            {"name": "a", "format": "csv", "paths": ["x"], "domain": "web"},
            {"name": "b", "format": "jsonl", "paths": [str(tmp_path / "missing-*.jsonl")], "domain": "news"},
            {
                "name": "c",
                "format": "jsonl",
                "paths": [str(tmp_path)],
                "route": [{"url": "(", "domain": "web"}],
            },
            {"name": "d", "format": "jsonl", "paths": [str(tmp_path)]},
        ],
    }
    with pytest.raises(ValueError) as e:
        BuildConfig.from_dict(bad)
    msg = str(e.value)
    for needle in (
        "unknown keys ['colour']",
        "executor.kind: expected one of ['local', 'ray', 'slurm'], got 'spark'",
        "executor.tasks: expected an integer ≥ 1, got 0",
        "sources[0].format: expected one of ['dclm', 'fineweb2', 'hf', 'jsonl', 'parquet', 'text'], got 'csv'",
        "sources[1].domain: expected one of",
        "no file matches",
        "invalid regex",
        "set either 'domain' (fixed) or 'route'",
    ):
        assert needle in msg, needle


def test_yaml_and_toml_give_the_same_config(tmp_path, corpus):
    path = str(corpus["web"])
    toml = f'output = "out"\n[[sources]]\nname = "w"\nformat = "dclm"\npaths = ["{path}"]\ndomain = "web"\n'
    (tmp_path / "c.toml").write_text(toml)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tomllib.loads(toml)))
    a, b = BuildConfig.load(tmp_path / "c.toml"), BuildConfig.load(tmp_path / "c.yaml")
    assert a.fingerprint() == b.fingerprint() and a.output == b.output == str(tmp_path / "out")


def test_dry_run_plan_lists_sources_domains_and_file_counts(shared_data):
    plan = describe_plan(BuildConfig.load(CONFIGS / "shared-sample.toml"), "/tmp/plan-only")
    assert "/tmp/plan-only" in plan
    assert "kowiki" in plan and "korean" in plan and "minhash-buckets" in plan
    assert not Path("/tmp/plan-only").exists()
