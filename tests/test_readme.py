"""Every fenced ``bash`` and ``python`` block of README.md runs as written, in order, in one working
directory, on a corpus this test writes (tests/realtext.py): only paths are substituted (../shared's samples,
configs/shared-sample.toml, /tmp outputs). ``toml`` blocks are parsed as the config sections they show.

A block preceded by ``<!-- readme-test: KIND -->`` runs where KIND can run:
- ``install``: a venv + pip command, which a test cannot run inside its own venv. CI runs the test
  command itself (.ci/run); the demo command is checked to be install + ``motif-data demo`` (tests/demo
  runs the demo, reduced).
- ``ci``: too long for the suite (minutes of compiling); .ci/run runs it, and this test checks it does.
- ``gpu``: runs under ``pytest -m gpu`` on a GPU machine, after the CPU blocks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
KINDS = ("install", "ci", "gpu")
_BLOCK = re.compile(r"(?:<!-- readme-test: (\w+) -->\n)?```(\w*)\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    kind: str | None
    line: int


def readme_blocks(text: str) -> list[Block]:
    return [
        Block(m.group(2), m.group(3), m.group(1), text.count("\n", 0, m.start(2)) + 1)
        for m in _BLOCK.finditer(text)
    ]


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
RUN = [b for b in BLOCKS if b.lang in ("bash", "python") and b.kind is None]
GPU = [b for b in BLOCKS if b.kind == "gpu"]


def _sample_config(corpus: dict[str, Path], o200k_path: Path) -> str:
    """configs/shared-sample.toml's build over the test corpus: every file into its domain folder's name,
    FineWeb-2 rows routed by script, the same executor and dedup."""
    lines = [
        'output = "unused"',
        f'[tokenizer]\npath = "{o200k_path}"',
        '[executor]\nkind = "local"\ntasks = 2\nworkers = 2',
        "[dedup]\nexact = true\nnear = true",
    ]
    for key, path in corpus.items():
        domain = path.parent.name
        source = f'[[sources]]\nname = "{key}"\npaths = ["{path}"]'
        if path.suffix == ".parquet":
            source += '\nformat = "fineweb2"\nroute = [{script = "Hang", domain = "korean"}]\n'
            source += 'default_domain = "multilingual"'
        else:
            source += f'\nformat = "{"dclm" if domain == "web" else "jsonl"}"\ndomain = "{domain}"'
        lines.append(source)
    return "\n\n".join(lines) + "\n"


def _substitute(code: str, paths: dict[str, str]) -> str:
    for old, new in paths.items():
        code = code.replace(old, new)
    assert "../shared" not in code, f"a ../shared path is left unsubstituted:\n{code}"
    return code


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, corpus, o200k_path):
    """A working directory and the substitutions that point the README at it."""
    ws = tmp_path_factory.mktemp("readme")
    (ws / "sample.toml").write_text(_sample_config(corpus, o200k_path))
    root = corpus["web"].parents[1]
    paths = {
        "configs/shared-sample.toml": str(ws / "sample.toml"),
        "../shared/data/": f"{root}/",
        "../shared/tokenizers/o200k_base.tiktoken": str(o200k_path),
        "/tmp/shared-sample": str(ws / "shared-sample"),
        "/tmp/motif_ko_copy": str(ws / "motif_ko_copy"),
        "configs/": f"{ROOT / 'configs'}/",
    }
    return ws, paths


def _run(block: Block, ws: Path, paths: dict[str, str], run_bounded, index: int) -> None:
    code = _substitute(block.code, paths)
    if block.lang == "python":
        script = ws / f"readme_block_{index}.py"
        script.write_text(code)
        args = [sys.executable, str(script)]
    else:
        args = ["bash", "-euo", "pipefail", "-c", code]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = run_bounded(args, timeout=600, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert done.returncode == 0, (
        f"README.md line {block.line} ({block.lang}) exited {done.returncode}:\n{code}\n"
        f"--- output (last 4,000 characters) ---\n{done.stdout.decode(errors='replace')[-4000:]}"
    )


@pytest.fixture(scope="module")
def ran_blocks(workspace, run_bounded):
    ws, paths = workspace
    for i, block in enumerate(RUN):
        _run(block, ws, paths, run_bounded, i)
    return ws, paths


def test_every_block_is_run_or_marked_with_where_it_runs():
    fences = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("```")]
    assert len(fences) == 2 * len(BLOCKS), "a fenced block this test's pattern does not see"
    assert len(RUN) >= 9
    assert {b.kind for b in BLOCKS} <= {None, *KINDS}
    assert {b.lang for b in BLOCKS} <= {"bash", "python", "toml"}, "a block this test does not know"


def test_the_readme_runs_as_written(ran_blocks):
    ws, _ = ran_blocks
    # what the blocks promise is there: the tokenizer, both builds, the plan plot, a trained run
    assert (ws / "tokenizers" / "motif_ko" / "tokenizer.json").is_file()
    assert (ws / "shared-sample" / "manifest.json").is_file()
    assert (ws / "shared-sample-py" / "manifest.json").is_file()
    assert (ws / "plan.png").is_file()
    assert (ws / "runs" / "tiny" / "summary.json").is_file()


def test_toml_blocks_are_valid_config_sections(workspace):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    from motif_data.pipeline import BuildConfig

    ws, paths = workspace
    base = tomllib.loads((ws / "sample.toml").read_text())
    sections = [tomllib.loads(b.code) for b in BLOCKS if b.lang == "toml"]
    assert sections
    for section in sections:
        BuildConfig.from_dict({**base, **section})  # raises, naming the key, on anything unknown or invalid


def test_install_blocks_are_the_commands_ci_and_the_demo_run():
    install = [b.code.strip() for b in BLOCKS if b.kind == "install"]
    prefix = 'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e ".[{}]" && '
    assert install == [
        prefix.format("demo") + "motif-data demo",
        prefix.format("test") + "pytest -q -n 2 --dist loadfile",
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme-test: install" in ci and "readme-test: ci" in ci  # .ci/run takes both from here


def test_ci_runs_the_marked_blocks():
    # .ci/run extracts each marked block by the same rule as this file: run it the same way, compare.
    found = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run"), "--print-commands"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    wanted = [b.code.strip() for b in BLOCKS if b.kind == "install"][1:] + [
        b.code.strip() for b in BLOCKS if b.kind == "ci"
    ]
    assert found == wanted


@pytest.mark.gpu
@pytest.mark.parametrize("block", GPU, ids=lambda b: f"line{b.line}")
def test_gpu_blocks_run_on_a_gpu(block, ran_blocks, run_bounded):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA/ROCm GPU (run with pytest -m gpu there)")
    ws, paths = ran_blocks
    _run(block, ws, paths, run_bounded, GPU.index(block) + len(RUN))
