"""The build config: TOML or YAML loaded into frozen dataclasses and checked before any work starts.

Every problem found in a config file is collected and raised as one ``ValueError`` that lists all of
them, so a user fixes a config in one pass. Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from motif_data import DOMAINS

__all__ = [
    "FORMATS",
    "QUALITY_FILTERS",
    "SCRIPTS",
    "BuildConfig",
    "DedupConfig",
    "ExecutorConfig",
    "FilterConfig",
    "LanguageIdConfig",
    "RouteRule",
    "SourceConfig",
    "load_config",
    "parse_config",
]

FORMATS = ("dclm", "fineweb2", "hf", "jsonl", "parquet", "text")
QUALITY_FILTERS = ("gopher", "c4", "fineweb")
EXECUTORS = ("local", "ray", "slurm")
#: Scripts a routing rule may name; values are ``regex`` script property names.
SCRIPTS = {
    "Hang": "Hangul",
    "Latn": "Latin",
    "Hani": "Han",
    "Cyrl": "Cyrillic",
    "Arab": "Arabic",
    "Deva": "Devanagari",
    "Thai": "Thai",
    "Grek": "Greek",
    "Jpan": "Hiragana",
}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
MAX_DOC_BYTES = 10_000_000


@dataclass(frozen=True)
class LanguageIdConfig:
    """fastText language id; skipped with a logged note when ``model`` or the ``fasttext`` package is absent."""

    languages: tuple[str, ...]
    min_score: float = 0.65
    model: str | None = None


@dataclass(frozen=True)
class FilterConfig:
    min_tokens: int = 24
    max_bytes: int = MAX_DOC_BYTES
    #: minimum share of Hangul among letters, applied to documents routed to ``korean``.
    hangul_min_ratio: float = 0.3
    language_id: LanguageIdConfig | None = None
    quality: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouteRule:
    """One routing rule; the first rule that matches a document decides its domain.

    Exactly one matcher is set: ``field`` with ``values`` (metadata field equals one of them),
    ``url`` (regex searched in metadata ``url``), or ``script`` (share of letters in that script ≥ ``min_ratio``,
    read from metadata ``language_script`` when present, else measured on the text).
    """

    domain: str
    field: str | None = None
    values: tuple[str, ...] = ()
    url: str | None = None
    script: str | None = None
    min_ratio: float = 0.5


@dataclass(frozen=True)
class SourceConfig:
    name: str
    format: str
    paths: tuple[str, ...] = ()
    text_field: str = "text"
    id_field: str = "id"
    domain: str | None = None
    route: tuple[RouteRule, ...] = ()
    default_domain: str | None = None
    filters: FilterConfig = field(default_factory=FilterConfig)
    # format = "hf": a dataset on the Hugging Face hub (or a `datasets` builder such as "parquet")
    dataset: str | None = None
    subset: str | None = None
    split: str = "train"
    data_files: tuple[str, ...] = ()
    revision: str | None = None


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"
    tasks: int = 1
    workers: int = 1
    #: Ray: address of a running cluster (None starts a local instance).
    ray_address: str | None = None
    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2.0
    #: time limit of one task, [[HH:]MM:]SS (Slurm and Ray)
    time: str = "24:00:00"
    # Slurm
    partition: str | None = None
    qos: str = "normal"
    venv_path: str | None = None
    sbatch_args: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    ngram: int = 5
    #: LSH bands × rows; 20 × 20 puts the S-curve's midpoint at Jaccard ≈ 0.86 so pairs ≥ 0.9 are caught
    #: with probability ≥ 0.92 while pairs at 0.8 are merged with probability ≈ 0.2.
    bands: int = 20
    rows: int = 20
    seed: int = 1


@dataclass(frozen=True)
class BuildConfig:
    output: str
    sources: tuple[SourceConfig, ...]
    tokenizer: str | None = None
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    shard_tokens: int = 1 << 28
    path: str | None = None

    def fingerprint(self) -> str:
        """sha256 of everything that decides the output (not where it goes nor how it is executed)."""
        data = dataclasses.asdict(self)
        for key in ("output", "path", "executor"):
            data.pop(key)
        data["tasks"] = self.executor.tasks
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def with_output(self, output: str | os.PathLike) -> BuildConfig:
        return dataclasses.replace(self, output=str(Path(output).absolute()))


def is_url(path: str) -> bool:
    return bool(_URL.match(path))


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)

    def unknown_keys(self, where: str, data: dict, known: set[str]) -> None:
        extra = sorted(set(data) - known)
        if extra:
            self.add(f"{where}: unknown keys {extra} (known: {sorted(known)})")


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _default(cls, name: str):
    """A field's default, as its dataclass writes it (the one place each default is written)."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _resolve(path: str, base: Path) -> str:
    if is_url(path) or os.path.isabs(path):
        return path
    return os.path.abspath(base / path)


def _expand(pattern: str) -> list[str]:
    """Files a path or glob names, sorted so that every task sees the same list."""
    if is_url(pattern):
        import fsspec

        fs, _, paths = fsspec.get_fs_token_paths(pattern)
        return sorted(fs.unstrip_protocol(p) for p in paths)
    if glob.has_magic(pattern):
        return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    return [pattern] if os.path.isfile(pattern) else []


def _tuple(value: Any, where: str, problems: _Problems) -> tuple:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(value)
    problems.add(f"{where}: expected a string or a list, got {value!r}")
    return ()


def _domain(value: Any, where: str, problems: _Problems) -> str | None:
    if value is None:
        return None
    if value not in DOMAINS:
        problems.add(f"{where}: unknown domain {value!r}; the domains are {list(DOMAINS)}")
    return value


def _filters(data: dict, where: str, problems: _Problems) -> FilterConfig:
    problems.unknown_keys(where, data, _fields(FilterConfig))
    kwargs = {k: v for k, v in data.items() if k in _fields(FilterConfig)}
    if "quality" in kwargs:
        kwargs["quality"] = _tuple(kwargs["quality"], f"{where}.quality", problems)
        bad = sorted(set(kwargs["quality"]) - set(QUALITY_FILTERS))
        if bad:
            problems.add(f"{where}.quality: unknown filters {bad}; known: {list(QUALITY_FILTERS)}")
    if "language_id" in kwargs:
        lid = kwargs["language_id"]
        if not isinstance(lid, dict) or "languages" not in lid:
            problems.add(
                f"{where}.language_id: expected a table with 'languages' (and optional min_score, model)"
            )
            kwargs.pop("language_id")
        else:
            problems.unknown_keys(f"{where}.language_id", lid, _fields(LanguageIdConfig))
            kwargs["language_id"] = LanguageIdConfig(
                languages=_tuple(lid["languages"], f"{where}.language_id.languages", problems),
                min_score=float(lid.get("min_score", _default(LanguageIdConfig, "min_score"))),
                model=lid.get("model"),
            )
    for key in ("min_tokens", "max_bytes"):
        if key in kwargs and (not isinstance(kwargs[key], int) or kwargs[key] < 0):
            problems.add(f"{where}.{key}: expected an integer ≥ 0, got {kwargs[key]!r}")
    if not 0.0 <= float(kwargs.get("hangul_min_ratio", 0.0)) <= 1.0:
        problems.add(f"{where}.hangul_min_ratio: expected a number in [0, 1]")
    return FilterConfig(**kwargs)


def _rule(data: Any, where: str, problems: _Problems) -> RouteRule | None:
    if not isinstance(data, dict):
        problems.add(f"{where}: expected a table, got {data!r}")
        return None
    problems.unknown_keys(where, data, _fields(RouteRule))
    matchers = [k for k in ("field", "url", "script") if data.get(k) is not None]
    if len(matchers) != 1:
        problems.add(
            f"{where}: set exactly one of field (with values), url, script; got {matchers or 'none'}"
        )
        return None
    if "domain" not in data:
        problems.add(f"{where}: missing 'domain'")
        return None
    _domain(data["domain"], f"{where}.domain", problems)
    values = _tuple(data.get("values", ()), f"{where}.values", problems)
    if data.get("field") is not None and not values:
        problems.add(f"{where}: a field rule needs 'values'")
    if data.get("url") is not None:
        try:
            re.compile(data["url"])
        except re.error as e:
            problems.add(f"{where}.url: invalid regex ({e})")
    if data.get("script") is not None and data["script"] not in SCRIPTS:
        problems.add(f"{where}.script: unknown script {data['script']!r}; known: {sorted(SCRIPTS)}")
    return RouteRule(
        domain=data["domain"],
        field=data.get("field"),
        values=tuple(str(v) for v in values),
        url=data.get("url"),
        script=data.get("script"),
        min_ratio=float(data.get("min_ratio", _default(RouteRule, "min_ratio"))),
    )


def _source(data: Any, i: int, base: Path, problems: _Problems) -> SourceConfig | None:
    where = f"sources[{i}]"
    if not isinstance(data, dict):
        problems.add(f"{where}: expected a table")
        return None
    name = data.get("name")
    if isinstance(name, str):
        where = f"source {name!r}"
    problems.unknown_keys(where, data, _fields(SourceConfig))
    if not isinstance(name, str) or not _NAME.match(name):
        problems.add(f"{where}: 'name' must be letters, digits, '_', '.', '-' (got {name!r})")
        return None
    fmt = data.get("format")
    if fmt not in FORMATS:
        problems.add(f"{where}: unknown format {fmt!r}; formats are {list(FORMATS)}")
    kwargs = {k: v for k, v in data.items() if k in _fields(SourceConfig)}
    kwargs["filters"] = _filters(data.get("filters", {}), f"{where}.filters", problems)
    routes = [_rule(r, f"{where}.route[{j}]", problems) for j, r in enumerate(data.get("route", []))]
    kwargs["route"] = tuple(r for r in routes if r is not None)
    _domain(data.get("domain"), f"{where}.domain", problems)
    _domain(data.get("default_domain"), f"{where}.default_domain", problems)
    if (data.get("domain") is None) == (not data.get("route")):
        problems.add(f"{where}: set either 'domain' (fixed) or 'route' (rules), not both or neither")
    if fmt == "hf":
        if not data.get("dataset"):
            problems.add(f"{where}: format 'hf' needs 'dataset' (hub path such as 'HuggingFaceFW/fineweb-2')")
        kwargs["data_files"] = tuple(
            _resolve(p, base) for p in _tuple(data.get("data_files", ()), f"{where}.data_files", problems)
        )
        if data.get("paths"):
            problems.add(f"{where}: format 'hf' takes 'dataset' (and data_files), not 'paths'")
    else:
        paths = _tuple(data.get("paths", ()), f"{where}.paths", problems)
        if not paths:
            problems.add(f"{where}: 'paths' is empty: name the files or globs to read")
        kwargs["paths"] = tuple(_resolve(p, base) for p in paths)
        for p in kwargs["paths"]:
            if not is_url(p) and not _expand(p):
                problems.add(f"{where}: no file matches {p}")
    return SourceConfig(**kwargs) if fmt in FORMATS else None


def parse_config(data: dict, base: str | os.PathLike = ".", path: str | None = None) -> BuildConfig:
    """Validate a parsed config mapping; relative paths are taken from ``base``."""
    base = Path(base)
    problems = _Problems()
    problems.unknown_keys("config", data, _fields(BuildConfig) - {"path"})
    if not isinstance(data.get("output"), str):
        problems.add("config: 'output' (the output directory) is missing")
    ex = data.get("executor", {})
    problems.unknown_keys("executor", ex, _fields(ExecutorConfig))
    ex_kwargs = {k: v for k, v in ex.items() if k in _fields(ExecutorConfig)}
    if "sbatch_args" in ex_kwargs:
        ex_kwargs["sbatch_args"] = tuple(
            sorted((str(k), str(v)) for k, v in dict(ex_kwargs["sbatch_args"]).items())
        )
    executor = ExecutorConfig(**ex_kwargs)
    if executor.kind not in EXECUTORS:
        problems.add(f"executor.kind: unknown executor {executor.kind!r}; choose one of {list(EXECUTORS)}")
    if not isinstance(executor.tasks, int) or executor.tasks < 1:
        problems.add(f"executor.tasks: expected an integer ≥ 1, got {executor.tasks!r}")
    if not isinstance(executor.workers, int) or executor.workers < 1:
        problems.add(f"executor.workers: expected an integer ≥ 1, got {executor.workers!r}")
    if not re.fullmatch(r"(\d+:){0,2}\d+", str(executor.time)):
        problems.add(f"executor.time: expected [[HH:]MM:]SS, got {executor.time!r}")
    if executor.kind == "slurm" and not executor.partition:
        problems.add("executor.partition: a slurm executor needs a partition")
    dd = data.get("dedup", {})
    problems.unknown_keys("dedup", dd, _fields(DedupConfig))
    dedup = DedupConfig(**{k: v for k, v in dd.items() if k in _fields(DedupConfig)})
    for key in ("ngram", "bands", "rows"):
        if not isinstance(getattr(dedup, key), int) or getattr(dedup, key) < 1:
            problems.add(f"dedup.{key}: expected an integer ≥ 1")
    raw_sources = data.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        problems.add("config: 'sources' is missing or empty: add at least one [[sources]] table")
        raw_sources = []
    sources = [_source(s, i, base, problems) for i, s in enumerate(raw_sources)]
    sources = [s for s in sources if s is not None]
    names = [s.name for s in sources]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.add(f"sources: names must be unique, repeated: {dup}")
    tokenizer = data.get("tokenizer")
    if isinstance(tokenizer, dict):
        problems.unknown_keys("tokenizer", tokenizer, {"path"})
        tokenizer = tokenizer.get("path")
    if tokenizer is not None:
        tokenizer = _resolve(str(tokenizer), base)
        if not os.path.exists(tokenizer):
            problems.add(
                f"tokenizer.path: {tokenizer} does not exist: name a tokenizer directory or o200k_base.tiktoken"
            )
    shard_tokens = data.get("shard_tokens", _default(BuildConfig, "shard_tokens"))
    if not isinstance(shard_tokens, int) or shard_tokens < 1:
        problems.add(f"shard_tokens: expected an integer ≥ 1, got {shard_tokens!r}")
    if problems.items:
        where = f" {path}" if path else ""
        raise ValueError(f"invalid build config{where}:\n  - " + "\n  - ".join(problems.items))
    return BuildConfig(
        output=_resolve(data["output"], base),
        sources=tuple(sources),
        tokenizer=tokenizer,
        executor=executor,
        dedup=dedup,
        shard_tokens=shard_tokens,
        path=path,
    )


def load_config(path: str | os.PathLike) -> BuildConfig:
    """Read a ``.toml`` or ``.yaml``/``.yml`` build config and validate it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        from motif_data.compat import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path} is not valid TOML: {e}") from e
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from e
    else:
        raise ValueError(f"{path}: config must be .toml, .yaml or .yml")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of settings at the top level")
    return parse_config(data, base=path.parent.absolute(), path=str(path))


def expand_paths(source: SourceConfig) -> list[str]:
    """Every input file of a path-based source, in a fixed order."""
    files: list[str] = []
    for p in source.paths:
        files.extend(_expand(p))
    return files
