"""Shared test fixtures: real text from the install, the o200k rank file, the optional ../shared samples;
bounded subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

# ../shared beside the project root (or $MOTIF_SHARED) may hold larger real samples: optional. Tests that
# read them take the `shared_data` fixture, which marks them `shared` and skips them where it is absent.
SHARED = Path(os.environ.get("MOTIF_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
DATA = SHARED / "data"


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"large-sample test: needs the real samples at {DATA} (set MOTIF_SHARED to use them)")
    return DATA


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Real text of all eight domains in real source formats, written from what the test install brings
    (tests/realtext.py): ``{key: path}``."""
    from realtext import write_corpus  # here, not at the top: GPU-only runs lack the data libraries

    return write_corpus(tmp_path_factory.mktemp("realtext"))


@pytest.fixture(scope="session")
def o200k_path(tmp_path_factory) -> Path:
    """o200k_base.tiktoken as the bpe-openai wheel (the demo extra) ships it, unpacked and checked."""
    import gzip
    import hashlib
    import importlib.util

    from motif_data.tokenizer.base import O200K_FILENAME, O200K_SHA256

    spec = importlib.util.find_spec("bpe_openai")
    assert spec is not None, "bpe-openai is not installed: pip install -e '.[test]'"
    data = gzip.decompress(
        (Path(spec.submodule_search_locations[0]) / "data" / "o200k_base.tiktoken.gz").read_bytes()
    )
    assert hashlib.sha256(data).hexdigest() == O200K_SHA256
    path = tmp_path_factory.mktemp("o200k") / O200K_FILENAME
    path.write_bytes(data)
    return path


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
