"""Build configs are typed at load, outputs are folders of their own, and the tokenizer is checked before work.

Each case below is one that, before, passed silently (a string taken as true), ran and kept nothing, crashed
with a traceback, named no key, or deleted a user's file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from motif_data.cli import main
from motif_data.pipeline import BuildConfig, build
from motif_data.pipeline.build import _check_tokenizer
from motif_data.typed import ConfigError


def _base(corpus, tmp_path) -> dict:
    return {
        "output": str(tmp_path / "out"),
        "sources": [{"name": "w", "format": "dclm", "paths": [str(corpus["web"])], "domain": "web"}],
    }


def _problems(data: dict, **kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        BuildConfig.from_dict(data, **kw)
    return e.value.lines()


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("dedup", "exact", "no", "dedup.exact: expected true or false, got 'no'"),
        ("dedup", "near", "no", "dedup.near: expected true or false, got 'no'"),
        ("dedup", "bands", True, "dedup.bands: expected an integer, got True"),
        ("dedup", "rows", 0, "dedup.rows: expected an integer ≥ 1, got 0"),
        ("dedup", "engine", "fast", "dedup.engine: expected one of ['rensa', 'datatrove'], got 'fast'"),
        ("source", "text_field", 7, "sources[0].text_field: expected a string, got 7"),
        ("source", "filters", "strict", "sources[0].filters: expected a table (key = value settings), got 'strict'"),
        ("filters", "hangul_min_ratio", "high", "sources[0].filters.hangul_min_ratio: expected a number, got 'high'"),
        ("filters", "hangul_min_ratio", 1.5, "sources[0].filters.hangul_min_ratio: expected a number ≥ 0 and ≤ 1, got 1.5"),
        ("filters", "quality", "strict", "sources[0].filters.quality: expected each to be one of ['gopher', 'c4', 'fineweb'], got ['strict']"),
        ("top", "executor", "local", "executor: expected a table (key = value settings), got 'local'"),
        ("executor", "sbatch_args", ["account"], "executor.sbatch_args: expected a table ([executor.sbatch_args] account = \"…\"), got ['account']"),
        ("executor", "mem_per_cpu_gb", "lots", "executor.mem_per_cpu_gb: expected a number, got 'lots'"),
        ("top", "sources", {"name": "w"}, "sources: expected a list of tables ([[sources]]), got {'name': 'w'}"),
    ],
)  # fmt: skip
def test_each_wrong_type_is_named_with_what_it_got(corpus, tmp_path, section, key, value, expected):
    data = _base(corpus, tmp_path)
    source = data["sources"][0]
    where = {"top": data, "source": source, "filters": source.setdefault("filters", {})}
    if section in ("dedup", "executor"):
        where[section] = data.setdefault(section, {})
    where[section][key] = value
    assert expected in _problems(data)


def test_every_problem_of_every_level_is_listed_at_once(corpus, tmp_path):
    data = _base(corpus, tmp_path)
    data["dedup"] = {"exact": "no", "bands": True}
    data["executor"] = {"kind": "spark"}
    data["sources"][0]["filters"] = {"min_tokens": -1}
    data["sources"].append({"name": "x", "format": "jsonl", "paths": [str(tmp_path / "none-*.jsonl")]})
    lines = _problems(data)
    assert len(lines) == 6, lines
    assert "sources[1]: set either 'domain' (fixed) or 'route' (rules), not both or neither" in lines
    assert f"sources[1].paths: no file matches {tmp_path / 'none-*.jsonl'}" in lines


def test_a_good_config_keeps_its_values_and_widens_ints_for_floats(corpus, tmp_path):
    data = _base(corpus, tmp_path)
    data["executor"] = {"mem_per_cpu_gb": 3, "sbatch_args": {"account": "motif"}}
    config = BuildConfig.from_dict(data)
    assert config.executor.mem_per_cpu_gb == 3.0 and isinstance(config.executor.mem_per_cpu_gb, float)
    assert config.executor.sbatch_args == (("account", "motif"),)
    assert config.dedup.exact is True and config.dedup.engine == "rensa"


def test_an_empty_output_or_one_that_holds_the_config_is_refused(corpus, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    cfg = str(folder / "build.toml")
    for output in ("", ".", "..", "/", str(Path.home())):
        data = _base(corpus, tmp_path) | {"output": output}
        (line,) = [p for p in _problems(data, base=folder, path=cfg) if p.startswith("output:")]
        assert "empty" in line or "holds the config file" in line or "root or the home" in line, (
            output,
            line,
        )
    config = BuildConfig.from_dict(_base(corpus, tmp_path), base=folder, path=cfg)
    with pytest.raises(ConfigError, match="--out: .* holds the config file"):
        build(config, out=folder)


def _toml(data: dict) -> str:
    return "\n".join(
        [f"output = {json.dumps(data['output'])}"]
        + [
            "[[sources]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in s.items())
            for s in data["sources"]
        ]
    )


def test_force_removes_only_what_a_build_wrote(corpus, tmp_path, capsys):
    # A user's project folder with a domain-named subfolder, mistaken for an output: nothing is deleted.
    project = tmp_path / "project"
    (project / "code").mkdir(parents=True)
    (project / "code" / "mine.py").write_text("print('mine')\n")
    config_path = tmp_path / "c.toml"
    config_path.write_text(_toml(_base(corpus, tmp_path) | {"output": str(project)}))
    assert main(["build", str(config_path), "--force"]) == 2
    assert "no build wrote" in capsys.readouterr().err
    assert (project / "code" / "mine.py").read_text() == "print('mine')\n"
    # The same file inside a folder that does hold an earlier build of ours: still refused, still kept.
    (project / "manifest.json").write_text("{}")
    assert main(["build", str(config_path), "--force"]) == 2
    assert "mine.py, which no build wrote" in capsys.readouterr().err
    assert (project / "code" / "mine.py").exists() and (project / "manifest.json").exists()


def test_a_tokenizer_folder_without_its_ranks_fails_at_load(corpus, tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "specials.json").write_text("{}")
    data = _base(corpus, tmp_path) | {"tokenizer": {"path": str(tok)}}
    assert any("tokenizer.path:" in p and "['tokenizer.tiktoken']" in p for p in _problems(data))


def test_an_altered_o200k_file_fails_before_the_first_stage(corpus, tmp_path, o200k_path):
    altered = tmp_path / "o200k_base.tiktoken"
    data = bytearray(o200k_path.read_bytes())
    data[100] ^= 1
    altered.write_bytes(bytes(data))
    config = BuildConfig.from_dict(_base(corpus, tmp_path) | {"tokenizer": str(altered)})
    with pytest.raises(ValueError, match="tokenizer.path: .* has sha256"):
        build(config)
    assert not (tmp_path / "out").exists()  # no stage ran, nothing was written


def test_a_tokenizer_folder_whose_o200k_part_was_altered_fails_before_the_first_stage(
    corpus, tmp_path, o200k
):
    from motif_data.tokenizer import save

    tok = save(o200k, tmp_path / "tok")
    config = BuildConfig.from_dict(_base(corpus, tmp_path) | {"tokenizer": str(tok)})
    _check_tokenizer(config)  # o200k saved as a folder is its own continuation: accepted
    ranks = tok / "tokenizer.tiktoken"
    lines = ranks.read_bytes().splitlines(keepends=True)
    lines[7], lines[8] = (
        lines[8].replace(b" 8\n", b" 7\n"),
        lines[7].replace(b" 7\n", b" 8\n"),
    )  # two ids swapped
    ranks.write_bytes(b"".join(lines))
    with pytest.raises(ValueError, match="tokenizer.path: .*first 199,998 ranks are not o200k_base's"):
        build(config)
    assert not (tmp_path / "out").exists()
