"""The SFT build config: sources in three conversation schemas, dedup with a Jaccard threshold, ``min_tokens``.

The build config's style (``motif_data.typed``): frozen dataclasses checked at load, every problem of a file
in one error naming its key. The executor table is the corpus builder's own (``pipeline.config``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from motif_data.pipeline.config import BuildConfig, DedupConfig, ExecutorConfig
from motif_data.typed import Config, resolve_path, setting

__all__ = ["SCHEMAS", "KINDS", "SftSourceConfig", "SftDedupConfig", "SftConfig"]

#: ``preference`` (a build of ``kind = "preference"``): ``chosen`` / ``rejected`` answers (text, after a ``prompt``
#: column) or message lists sharing all but their last message (Tulu 3's preference mixtures).
#: ``messages``: HF chat (``[{role, content}]``); ``sharegpt``: ``[{from, value}]``; ``prompt_response``: two
#: text columns (GSM8K's ``question``/``answer``), an optional fixed system prompt before them.
SCHEMAS = ("messages", "sharegpt", "prompt_response", "preference")
KINDS = ("sft", "preference")
_FILE_FORMATS = ("jsonl", "parquet")
_ROLES = ("system", "user", "assistant")
# what each schema calls its list and its keys, and the roles it names otherwise than ChatML
_DEFAULTS = {
    "messages": ("messages", "role", "content", ()),
    "sharegpt": ("conversations", "from", "value", (("human", "user"), ("gpt", "assistant"))),
    "preference": ("", "role", "content", ()),
}


@dataclass(frozen=True)
class SftSourceConfig(Config):
    name: str
    paths: tuple[str, ...]
    schema: str = setting(choices=SCHEMAS)
    #: file format of the paths (JSON Lines, optionally compressed, or parquet)
    format: str = setting("jsonl", choices=_FILE_FORMATS)
    #: messages / sharegpt: the list's column and its role / content keys (defaults per schema)
    field: str | None = None
    role_key: str | None = None
    content_key: str | None = None
    #: source role → system / user / assistant (a table in the file); ShareGPT's human/gpt are mapped by default
    roles: tuple[tuple[str, str], ...] = ()
    #: prompt_response: the two columns, and a system prompt put before them (preference: the prompt column)
    prompt_field: str = "prompt"
    response_field: str = "response"
    system: str | None = None
    #: preference: the two answers' columns
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    id_field: str = "id"
    #: a record larger than this counts as errored (``too_large``), as in the corpus build
    max_bytes: int = setting(10_000_000, ge=1)

    def rules(self):
        bad = sorted({v for _, v in self.roles} - set(_ROLES))
        if bad:
            yield "roles", f"maps to {bad}; every role must map to one of {list(_ROLES)}"
        if self.schema == "prompt_response" and (
            self.field or self.role_key or self.content_key or self.roles
        ):
            yield (
                "schema",
                "prompt_response reads prompt_field/response_field: drop field, role_key, content_key, roles",
            )
        if self.schema not in ("prompt_response", "preference") and self.system is not None:
            yield (
                "system",
                "a fixed system prompt is for schema = 'prompt_response'; the others carry their own",
            )

    @classmethod
    def prepare(cls, values: dict, base: Path):
        if isinstance(values.get("paths"), str):
            values["paths"] = [values["paths"]]
        if isinstance(values.get("paths"), list) and all(isinstance(p, str) for p in values["paths"]):
            values["paths"] = tuple(resolve_path(p, base) for p in values["paths"])
            if not values["paths"]:
                yield "paths", "empty: name the files or globs to read"
            from motif_data.pipeline.config import _expand

            for p in values["paths"]:
                if not _expand(p):
                    yield "paths", f"no file matches {p}"
        roles = values.get("roles")
        if roles is not None:
            if not isinstance(roles, dict) or not all(isinstance(v, str) for v in roles.values()):
                yield (
                    "roles",
                    f'expected a table such as roles = {{ human = "user", bot = "assistant" }}, got {roles!r}',
                )
            else:
                values["roles"] = tuple(sorted((str(k), v) for k, v in roles.items()))

    # what the corpus builder's readers ask of a source (pipeline.readers.read_records / assign_files)
    @property
    def text_field(self) -> str:
        if self.schema == "preference":
            return self.chosen_field
        return self.prompt_field if self.schema == "prompt_response" else self.keys[0]

    @property
    def keys(self) -> tuple[str, str, str]:
        """(list column, role key, content key) of a messages or sharegpt source."""
        default = _DEFAULTS.get(self.schema, ("", "", "", ()))
        return (self.field or default[0], self.role_key or default[1], self.content_key or default[2])

    @property
    def role_map(self) -> dict[str, str]:
        return dict(_DEFAULTS.get(self.schema, ("", "", "", ()))[3]) | dict(self.roles)


@dataclass(frozen=True)
class SftDedupConfig(DedupConfig):
    """The corpus builder's exact + MinHash dedup, with LSH candidates checked against ``threshold``.

    LSH only proposes pairs; each is kept as a duplicate only if the Jaccard similarity of its two shingle sets
    is ≥ ``threshold``. 20 bands × 10 rows proposes a pair at Jaccard 0.9 with probability 0.9998 (0.90 at 0.8),
    so what decides is the threshold, not the S-curve.
    """

    bands: int = setting(20, ge=1)
    rows: int = setting(10, ge=1)
    threshold: float = setting(0.9, gt=0, le=1)


@dataclass(frozen=True)
class SftConfig(Config):
    title = "SFT build config"

    output: str
    tokenizer: str
    sources: tuple[SftSourceConfig, ...]
    #: samples with fewer tokens than this (rendered, template included) are dropped as ``short``
    min_tokens: int = setting(24, ge=0)
    #: ``sft``: conversations with an assistant loss mask; ``preference``: (prompt, chosen, rejected) pairs
    kind: str = setting("sft", choices=KINDS)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    dedup: SftDedupConfig = field(default_factory=SftDedupConfig)
    shard_tokens: int = setting(1 << 28, ge=1)
    path: str | None = None

    def rules(self):
        yield from BuildConfig.rules(self)  # sources present, names unique
        for i, source in enumerate(self.sources):
            if (source.schema == "preference") != (self.kind == "preference"):
                yield (
                    f"sources[{i}].schema",
                    f"a build of kind = {self.kind!r} reads "
                    + (
                        "schema = 'preference' sources only"
                        if self.kind == "preference"
                        else "no 'preference' source"
                    ),
                )

    @classmethod
    def prepare(cls, values: dict, base: Path):
        # output and tokenizer are checked as for a corpus build, which reads them the same way
        yield from BuildConfig.prepare(values, base)
        tokenizer = values.get("tokenizer")
        if isinstance(tokenizer, str) and os.path.isfile(tokenizer):
            yield (
                "tokenizer.path",
                f"{tokenizer} is a rank file: a chat build needs a tokenizer folder with <|im_start|>/<|im_end|> "
                "(written by `motif-data tokenizer train`)",
            )

    # the corpus build's own methods: they read only what both configs have (output, path, executor, title)
    fingerprint = BuildConfig.fingerprint
    with_output = BuildConfig.with_output
    from_dict = BuildConfig.__dict__["from_dict"]
    load = BuildConfig.__dict__["load"]
