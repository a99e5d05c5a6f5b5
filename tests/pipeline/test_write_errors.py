"""A full disk while a build writes names the file and the step, keeps errno, and leaves no half-written file.

The full disk is real: writes go to /dev/full, where the kernel answers every write with ENOSPC.
"""

from __future__ import annotations

import builtins
import errno
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from datatrove.data import Document

from motif_data import atomic
from motif_data.atomic import OutputError, atomic_write_text, naming_output
from motif_data.pipeline.tokenize import TOKENS_KEY
from motif_data.pipeline.write import ShardWriteStep, SpillWriter

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


def _docs(n: int, domain: str = "web") -> list[Document]:
    return [
        Document(
            text=f"document {i}",
            id=str(i),
            metadata={"source": "s", "domain": domain, TOKENS_KEY: np.arange(5000, dtype=np.uint32)},
        )
        for i in range(n)
    ]


def test_atomic_write_on_a_full_disk_names_the_file_and_keeps_errno(tmp_path, monkeypatch):
    # atomic_open writes its temp file through this name: send the bytes to the full device instead
    monkeypatch.setattr(
        atomic, "open", lambda _tmp, mode, **kw: builtins.open("/dev/full", mode, **kw), raising=False
    )
    target = tmp_path / "stats.json"
    with pytest.raises(OutputError) as e, naming_output(target, "manifest"):
        atomic_write_text(target, "x" * 100_000)
    assert e.value.errno == errno.ENOSPC
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
    assert e.value.filename == str(target)
    message = str(e.value)
    assert message.startswith(f"cannot write {target} (step manifest): [Errno 28] ")
    assert "free space on that file system" in message
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp file is left


def test_a_full_disk_while_writing_shards_names_the_shard_and_the_step(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    (out / "web").mkdir(parents=True)
    # the shard writer's first temp file lies on the full device
    (out / "web" / ".00000-00000.bin.tmp").symlink_to("/dev/full")
    step = ShardWriteStep(str(out), str(work), max_tokens=1 << 20)
    with pytest.raises(OutputError) as e:
        list(step.run(iter(_docs(10)), rank=0))
    assert e.value.errno == errno.ENOSPC
    assert e.value.filename == f"{out}/web"
    assert e.value.step == "motif shard writer"
    assert f"cannot write {out}/web (step motif shard writer): [Errno 28]" in str(e.value)
    assert not (work / "results").exists()  # the task left no result for the manifest to trust


@pytest.mark.parametrize(
    ("size", "named"),
    [(10_000, "00000.jsonl"), (10, "")],
    ids=["fails in a write: names the file", "fails when closing: names the folder"],
)
def test_a_full_disk_while_spilling_names_the_spill_file_and_the_step(tmp_path, size, named):
    spill = tmp_path / "docs"
    spill.mkdir()
    (spill / "00000.jsonl").symlink_to("/dev/full")
    writer = SpillWriter(str(spill))
    # 200 large documents overflow datatrove's write buffer; 2 small ones only reach the disk at close
    docs = [Document(text="x" * size, id=str(i), metadata={}) for i in range(200 if size > 1000 else 2)]
    with pytest.raises(OutputError) as e:
        list(writer.run(iter(docs), rank=0))
    assert e.value.errno == errno.ENOSPC
    assert e.value.filename == (f"{spill}/{named}" if named else str(spill))
    assert str(e.value).startswith(f"cannot write {e.value.filename} (step motif spill writer): [Errno 28]")


def test_output_error_names_another_file_it_failed_on_and_survives_pickling(tmp_path):
    """datatrove's worker pool pickles a task's exception to the parent: file, step and errno must arrive."""
    target = tmp_path / "manifest.json"
    with pytest.raises(OutputError) as e, naming_output(target, "manifest"):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".manifest.json.x.tmp"))
    assert "Permission denied: '" in str(e.value) and ".manifest.json.x.tmp'" in str(e.value)
    copy = pickle.loads(pickle.dumps(e.value))
    assert (type(copy), copy.errno, copy.filename, copy.step, str(copy)) == (
        OutputError,
        errno.EACCES,
        str(target),
        "manifest",
        str(e.value),
    )


def test_an_error_that_is_not_an_oserror_passes_unchanged(tmp_path):
    with pytest.raises(ValueError, match="^not an I/O error$"), naming_output(Path(tmp_path), "x"):
        raise ValueError("not an I/O error")


def test_a_build_that_meets_a_full_disk_names_the_stage_too(tmp_path, corpus, monkeypatch):
    from motif_data.pipeline import BuildConfig, build

    def full(self, document, rank=0, **kwargs):  # every spill write meets a full disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(SpillWriter.__mro__[1], "write", full)  # datatrove's writer, under ours
    config = BuildConfig.from_dict(
        {
            "output": str(tmp_path / "out"),
            "sources": [{"name": "w", "format": "dclm", "paths": [str(corpus["web"])], "domain": "web"}],
        }
    )
    with pytest.raises(OutputError) as e:
        build(config, log=lambda _: None)
    assert e.value.errno == errno.ENOSPC and e.value.stage == "ingest"
    assert f"{tmp_path / 'out'}/.build/docs/00000.jsonl (stage ingest, step motif spill writer)" in str(
        e.value
    )
