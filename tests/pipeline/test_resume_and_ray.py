"""A build killed with SIGKILL and started again, and a build on Ray, end byte-identical to a local one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_helpers import slice_config, snapshot

from motif_data.pipeline import BuildConfig, build

_RUN = "import json, sys; from motif_data.pipeline import BuildConfig, build; build(BuildConfig.from_dict(json.load(open(sys.argv[1]))))"


def _kill_when(cfg_path: Path, trigger: Path, timeout: float = 60.0) -> None:
    """Start the build in its own process group and SIGKILL the whole group as soon as ``trigger`` exists."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(cfg_path)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    try:
        while not trigger.exists():
            assert proc.poll() is None, f"the build ended before {trigger.name} appeared"
            assert time.monotonic() < deadline, f"{trigger} never appeared"
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize(
    "trigger",
    [
        ".build/logs/1-ingest/completions/00000",  # during ingest, one task done
        ".build/logs/4-minhash-buckets/completions/00003",  # in the middle of the LSH buckets
        ".build/results/00000.json",  # shards of task 0 written, task not yet marked complete
        "stats.json",  # every stage done, the manifest not yet written
    ],
)
def test_build_killed_and_restarted_is_byte_identical(
    trigger, reference_build, sample_slices, o200k_path, tmp_path
):
    out = tmp_path / "out"
    cfg = slice_config(sample_slices, out, o200k_path)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    _kill_when(cfg_path, out / trigger)
    assert not (out / "manifest.json").exists()
    build(BuildConfig.from_dict(cfg))  # the same config and output directory: resumes
    assert snapshot(out) == snapshot(reference_build[0])


_RAY = (
    "import json, sys, ray; from motif_data.pipeline import BuildConfig, build; "
    "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False); "
    "build(BuildConfig.from_dict(json.load(open(sys.argv[1])))); ray.shutdown()"
)


def test_ray_executor_gives_the_same_bytes_as_local(
    reference_build, sample_slices, o200k_path, tmp_path, run_bounded
):
    pytest.importorskip("ray", reason="the optional 'ray' extra is part of the test dependencies")
    cfg = slice_config(sample_slices, tmp_path / "out", o200k_path)
    # a task limit, so that a Ray job whose forked worker hangs after its rank is done is killed and rerun
    cfg["executor"] = {"kind": "ray", "tasks": 2, "workers": 2, "mem_per_cpu_gb": 0.5, "time": "00:00:40"}
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    # with a deadline: a stuck Ray cluster must fail this test, not hang the suite
    result = run_bounded(
        [sys.executable, "-c", _RAY, str(cfg_path)],
        timeout=300,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert snapshot(tmp_path / "out") == snapshot(reference_build[0])


def test_a_ray_stage_whose_job_was_killed_at_its_time_limit_is_run_again():
    from motif_data.pipeline.build import _run_stage

    class KilledOnce:  # what datatrove 0.10's RayPipelineExecutor.run does after killing a job at its limit
        runs = 0

        def run(self):
            self.runs += 1
            if self.runs == 1:
                raise KeyError("ObjectRef(...)")

    ray_stage, messages = KilledOnce(), []
    _run_stage(ray_stage, "ray", messages.append)
    assert ray_stage.runs == 2 and "executor.time" in messages[0]
    with pytest.raises(KeyError):  # elsewhere a KeyError is a bug to report, not to retry
        _run_stage(KilledOnce(), "local", messages.append)
