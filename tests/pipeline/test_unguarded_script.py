"""`build` from a script: datatrove's worker pool re-runs the main script in each worker, so an unguarded
top-level call used to hang forever; now it fails at once naming the fix, and the guarded script builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CONFIG = """output = "out"
[executor]
kind = "local"
tasks = 2
workers = 2
[[sources]]
name = "docs"
format = "jsonl"
paths = ["docs.jsonl"]
domain = "web"
"""
UNGUARDED = """from motif_data.pipeline import BuildConfig, build
manifest = build(BuildConfig.load("build.toml"), out="out")
"""
GUARDED = """from motif_data.pipeline import BuildConfig, build

if __name__ == "__main__":
    manifest = build(BuildConfig.load("build.toml"), out="out")
    print("documents", sum(d.documents for d in manifest.domains.values()))
"""


def _project(tmp_path, script):
    # Real text from the installed standard library's docstrings: one JSON line a module.
    import email
    import json as json_module
    import textwrap

    texts = [m.__doc__ for m in (email, json_module, textwrap, os) if m.__doc__]
    with open(tmp_path / "docs.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": str(i), "text": text}) + "\n")
    (tmp_path / "build.toml").write_text(CONFIG)
    (tmp_path / "script.py").write_text(script)


def _run(run_bounded, tmp_path, timeout):
    # o200k comes from the bpe-openai wheel that the test extra installs (nothing beside the clone needed).
    return run_bounded([sys.executable, "script.py"], timeout=timeout, cwd=tmp_path, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_an_unguarded_script_fails_at_once_naming_the_fix(tmp_path, run_bounded):
    _project(tmp_path, UNGUARDED)
    proc = _run(run_bounded, tmp_path, 120)
    assert proc.returncode != 0
    assert "script.py, line 2: " in proc.stderr and 'if __name__ == "__main__":' in proc.stderr
    assert not (tmp_path / "out").exists()  # failed before any work


def test_the_guarded_script_builds(tmp_path, run_bounded):
    _project(tmp_path, GUARDED)
    proc = _run(run_bounded, tmp_path, 300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    web = json.loads((tmp_path / "out" / "stats.json").read_text())["sources"]["docs"]["web"]
    assert web["read"] == 4 and web["kept"] > 0 and f"documents {web['kept']}" in proc.stdout
