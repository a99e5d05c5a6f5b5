"""The build config: TOML or YAML loaded into frozen dataclasses and checked before any work starts.

The classes are ``motif_data.typed`` configs: every value is checked for its type and range, and every problem
of a file is raised in one ``ConfigError`` naming each key, what it got and what to write, so a user fixes a
config in one pass. Loading also checks the file system (inputs exist, the tokenizer folder is complete, the
output is a folder of its own). Relative paths are resolved against the config file's folder.
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

from motif_data import DOMAINS
from motif_data.typed import Config, ConfigError, from_mapping, is_url, read_table, resolve_path, setting

__all__ = [
    "FORMATS",
    "MINHASH_ENGINES",
    "QUALITY_FILTERS",
    "SCRIPTS",
    "BuildConfig",
    "DedupConfig",
    "ExecutorConfig",
    "FilterConfig",
    "LanguageIdConfig",
    "RouteRule",
    "SourceConfig",
]

FORMATS = ("dclm", "fineweb2", "hf", "jsonl", "parquet", "text")
QUALITY_FILTERS = ("gopher", "c4", "fineweb")
EXECUTORS = ("local", "ray", "slurm")
#: MinHash signature engines: ``rensa`` (compiled, the default) or datatrove's own (the anchor).
MINHASH_ENGINES = ("rensa", "datatrove")
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
MAX_DOC_BYTES = 10_000_000


@dataclass(frozen=True)
class LanguageIdConfig(Config):
    """fastText language id; skipped with a logged note when ``model`` or the ``fasttext`` package is absent."""

    languages: tuple[str, ...]
    min_score: float = setting(0.65, ge=0, le=1)
    model: str | None = None


@dataclass(frozen=True)
class FilterConfig(Config):
    min_tokens: int = setting(24, ge=0)
    max_bytes: int = setting(MAX_DOC_BYTES, ge=1)
    #: minimum share of Hangul among letters, applied to documents routed to ``korean``.
    hangul_min_ratio: float = setting(0.3, ge=0, le=1)
    language_id: LanguageIdConfig | None = None
    quality: tuple[str, ...] = setting((), choices=QUALITY_FILTERS)


@dataclass(frozen=True)
class RouteRule(Config):
    """One routing rule; the first rule that matches a document decides its domain.

    Exactly one matcher is set: ``field`` with ``values`` (metadata field equals one of them),
    ``url`` (regex searched in metadata ``url``), or ``script`` (share of letters in that script ≥ ``min_ratio``,
    read from metadata ``language_script`` when present, else measured on the text).
    """

    domain: str = setting(choices=DOMAINS)
    field: str | None = None
    values: tuple[str, ...] = ()
    url: str | None = None
    script: str | None = setting(None, choices=tuple(SCRIPTS))
    min_ratio: float = setting(0.5, ge=0, le=1)

    def rules(self):
        matchers = [k for k in ("field", "url", "script") if getattr(self, k) is not None]
        if len(matchers) != 1:
            yield "", f"set exactly one of field (with values), url, script; got {matchers or 'none'}"
        if self.field is not None and not self.values:
            yield "values", "a field rule needs values = [...], the metadata values that select this domain"
        if self.url is not None:
            try:
                re.compile(self.url)
            except re.error as e:
                yield "url", f"invalid regex {self.url!r} ({e})"


@dataclass(frozen=True)
class SourceConfig(Config):
    name: str
    format: str = setting(choices=FORMATS)
    paths: tuple[str, ...] = ()
    text_field: str = "text"
    id_field: str = "id"
    domain: str | None = setting(None, choices=DOMAINS)
    route: tuple[RouteRule, ...] = ()
    default_domain: str | None = setting(None, choices=DOMAINS)
    filters: FilterConfig = field(default_factory=FilterConfig)
    # format = "hf": a dataset on the Hugging Face hub (or a `datasets` builder such as "parquet")
    dataset: str | None = None
    subset: str | None = None
    split: str = "train"
    data_files: tuple[str, ...] = ()
    revision: str | None = None

    def rules(self):
        if not _NAME.match(self.name):
            yield "name", f"use letters, digits, '_', '.', '-' (got {self.name!r})"
        if (self.domain is None) == (not self.route):
            yield "", "set either 'domain' (fixed) or 'route' (rules), not both or neither"
        if self.format == "hf":
            if not self.dataset:
                yield "dataset", "format 'hf' needs dataset = a hub path such as 'HuggingFaceFW/fineweb-2'"
            if self.paths:
                yield "paths", "format 'hf' takes 'dataset' (and data_files), not 'paths'"

    @classmethod
    def prepare(cls, values: dict, base: Path):
        for key in ("paths", "data_files"):
            if isinstance(values.get(key), str):
                values[key] = [values[key]]
            if isinstance(values.get(key), list) and all(isinstance(p, str) for p in values[key]):
                values[key] = tuple(resolve_path(p, base) for p in values[key])
        if values.get("format") in FORMATS and values["format"] != "hf":
            paths = values.get("paths", ())
            if not paths:
                yield "paths", "empty: name the files or globs to read"
            for p in paths if isinstance(paths, tuple) else ():
                if not is_url(p) and not _expand(p):
                    yield "paths", f"no file matches {p}"


@dataclass(frozen=True)
class ExecutorConfig(Config):
    section = "executor"

    kind: str = setting("local", choices=EXECUTORS)
    tasks: int = setting(1, ge=1)
    workers: int = setting(1, ge=1)
    #: Ray: address of a running cluster (None starts a local instance).
    ray_address: str | None = None
    cpus_per_task: int = setting(1, ge=1)
    mem_per_cpu_gb: float = setting(2.0, gt=0)
    #: time limit of one task, [[HH:]MM:]SS (Slurm and Ray)
    time: str = "24:00:00"
    # Slurm
    partition: str | None = None
    qos: str = "normal"
    venv_path: str | None = None
    #: extra ``#SBATCH`` settings; a table in the config file
    sbatch_args: tuple[tuple[str, str], ...] = ()

    def rules(self):
        if not re.fullmatch(r"(\d+:){0,2}\d+", self.time):
            yield "time", f'expected [[HH:]MM:]SS such as "24:00:00", got {self.time!r}'
        if self.kind == "slurm" and not self.partition:
            yield "partition", "a slurm executor needs partition = the Slurm partition to submit to"

    @classmethod
    def prepare(cls, values: dict, base: Path):
        args = values.get("sbatch_args")
        if args is None:
            return
        if not isinstance(args, dict):
            yield "sbatch_args", f'expected a table ([executor.sbatch_args] account = "…"), got {args!r}'
        else:
            values["sbatch_args"] = tuple(sorted((str(k), str(v)) for k, v in args.items()))


@dataclass(frozen=True)
class DedupConfig(Config):
    section = "dedup"

    exact: bool = True
    near: bool = True
    ngram: int = setting(5, ge=1)
    #: LSH bands × rows. 45 × 25 merges pairs at Jaccard 0.9 with probability 0.97 and at 0.7 with 0.006;
    #: 20 × 20 (0.93 and 0.016) merged 2.1–2.4 % of planted pairs at 0.7 (benchmarks/bench_dedup_quality.py).
    #: The 1,125 hashes cost rensa little: its MinHash is a small part of the signature stage.
    bands: int = setting(45, ge=1)
    rows: int = setting(25, ge=1)
    seed: int = setting(1, ge=0)
    engine: str = setting("rensa", choices=MINHASH_ENGINES)


@dataclass(frozen=True)
class BuildConfig(Config):
    title = "build config"

    output: str
    sources: tuple[SourceConfig, ...]
    tokenizer: str | None = None
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    shard_tokens: int = setting(1 << 28, ge=1)
    #: the config file this was loaded from (None when built in Python)
    path: str | None = None

    def rules(self):
        if not self.sources:
            yield "sources", "missing or empty: add at least one [[sources]] table"
        names = [s.name for s in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            yield "sources", f"names must be unique, repeated: {repeated}"

    @classmethod
    def prepare(cls, values: dict, base: Path):
        # the output is checked where it is known for sure: here, and again for an --out given to build()
        if isinstance(values.get("output"), str):
            output = values["output"] and resolve_path(values["output"], base)
            problem = output_problem(output, values.get("path"))
            if problem:
                yield "output", problem
            else:
                values["output"] = output
        tokenizer = values.get("tokenizer")
        if isinstance(tokenizer, dict):  # [tokenizer] path = "…"
            extra = sorted(set(tokenizer) - {"path"})
            if extra:
                yield "tokenizer", f"unknown keys {extra}; known: ['path']"
            tokenizer = values["tokenizer"] = tokenizer.get("path")
        if isinstance(tokenizer, str):
            values["tokenizer"] = resolve_path(tokenizer, base)
            problem = tokenizer_problem(values["tokenizer"])
            if problem:
                yield "tokenizer.path", problem

    def fingerprint(self) -> str:
        """sha256 of everything that decides the output (not where it goes nor how it is executed)."""
        data = dataclasses.asdict(self)
        for key in ("output", "path", "executor"):
            data.pop(key)
        data["tasks"] = self.executor.tasks
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def with_output(self, output: str | os.PathLike) -> BuildConfig:
        output = str(Path(output).absolute())
        problem = output_problem(output, self.path)
        if problem:
            raise ConfigError(self.title, [("--out", problem)])
        return dataclasses.replace(self, output=output)

    @classmethod
    def from_dict(cls, data: dict, base: str | os.PathLike = ".", path: str | None = None) -> BuildConfig:
        """A config from a parsed mapping; relative paths are taken from ``base``."""
        return from_mapping(cls, data, "", base=Path(base).absolute(), path=path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BuildConfig:
        """Read a ``.toml`` or ``.yaml``/``.yml`` build config and validate it."""
        data = read_table(path)
        return cls.from_dict(data, base=Path(path).parent.absolute(), path=str(path))


def output_problem(output: str, config_path: str | None) -> str | None:
    """Why ``output`` may not be a build's output folder, or None. ``--force`` empties that folder's build, so
    it must never be a place that holds other things: the root, the home folder, or the config's own folder
    or one above it."""
    if not output:
        return 'empty: name the folder the build writes, e.g. output = "build/sample"'
    if is_url(output):
        return None
    out = Path(output).absolute()
    if out == Path(out.anchor) or out == Path.home().absolute():
        return f"{out} is the root or the home folder: name a folder of its own, e.g. {out / 'build'}"
    if config_path is not None:
        here = Path(config_path).absolute().parent
        if out == here or out in here.parents:
            return (
                f"{out} holds the config file {config_path}: name a folder of its own, e.g. {out / 'build'}"
            )
    return None


def tokenizer_problem(path: str) -> str | None:
    """What is missing where a tokenizer should be (its contents are checked when the build loads it)."""
    if not os.path.exists(path):
        return f"{path} does not exist: name a tokenizer directory or o200k_base.tiktoken"
    if os.path.isdir(path):
        from motif_data.tokenizer.export import RANKS_FILE, SPECIALS_FILE

        missing = [f for f in (RANKS_FILE, SPECIALS_FILE) if not os.path.isfile(os.path.join(path, f))]
        if missing:
            return (
                f"{path} is a folder without {missing}: name a folder written by `motif-data tokenizer train`"
            )
    return None


def _expand(pattern: str) -> list[str]:
    """Files a path or glob names, sorted so that every task sees the same list."""
    if is_url(pattern):
        import fsspec

        fs, _, paths = fsspec.get_fs_token_paths(pattern)
        return sorted(fs.unstrip_protocol(p) for p in paths)
    if glob.has_magic(pattern):
        return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    return [pattern] if os.path.isfile(pattern) else []


def expand_paths(source: SourceConfig) -> list[str]:
    """Every input file of a path-based source, in a fixed order."""
    files: list[str] = []
    for p in source.paths:
        files.extend(_expand(p))
    return files
