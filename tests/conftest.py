"""Shared test fixtures: where the real text samples and the o200k rank file live; bounded subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

# ../shared beside the project root holds real text of all eight domains and the o200k rank file.
SHARED = Path(os.environ.get("MOTIF_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
DATA = SHARED / "data"
O200K_PATH = SHARED / "tokenizers" / "o200k_base.tiktoken"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert DATA.is_dir(), f"real text samples not found at {DATA}; set MOTIF_SHARED"
    return DATA


@pytest.fixture(scope="session")
def o200k_path() -> Path:
    assert O200K_PATH.is_file(), f"o200k_base.tiktoken not found at {O200K_PATH}; set MOTIF_SHARED"
    return O200K_PATH


@pytest.fixture(scope="session")
def o200k(o200k_path):
    from motif_data.tokenizer import load_base

    return load_base(o200k_path)


@pytest.fixture(scope="session")
def run_bounded():
    """``run_bounded(args, timeout=s, **popen_kwargs)`` → CompletedProcess. The command runs in its own process
    group; past the timeout the whole group is killed and the test fails: a hung child (or a grandchild, e.g. a
    torchrun rank) fails its test instead of outliving it."""

    def run(args: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
        proc = subprocess.Popen(args, start_new_session=True, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"{' '.join(map(str, args))[:200]} did not finish within {timeout} s")
        return subprocess.CompletedProcess(args, proc.returncode, out, err)

    return run
