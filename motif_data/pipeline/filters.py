"""Per-source document filters as one datatrove step: Hangul ratio, language id, datatrove quality filters.

Each source carries its own filter settings; a dropped document is counted as ``filtered`` with the
name of the filter (and datatrove's reason where it gives one). The minimum length in tokens is applied
where the tokens exist, in :mod:`motif_data.pipeline.tokenize`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from motif_data.pipeline.accounting import key
from motif_data.pipeline.config import FilterConfig, LanguageIdConfig, SourceConfig
from motif_data.pipeline.router import script_ratio
from motif_data.pipeline.words import ScriptWordTokenizer

__all__ = ["SourceFilters", "hangul_ratio", "language_id_available"]

Check = Callable[[Document], "tuple[bool, str]"]


def hangul_ratio(text: str) -> float:
    """Share of the letters of ``text`` that are Hangul."""
    return script_ratio(text, "Hang")


def language_id_available(cfg: LanguageIdConfig) -> str | None:
    """``None`` if fastText language id can run, else why not (the build skips it and says so)."""
    if cfg.model is None:
        return "no fastText model path given (filters.language_id.model)"
    if not os.path.isfile(cfg.model):
        return f"fastText model {cfg.model} not found"
    try:
        import fasttext  # noqa: F401
    except ModuleNotFoundError:
        return "the fasttext package is not installed"
    return None


def _language_check(cfg: LanguageIdConfig) -> Check:
    import fasttext

    model = fasttext.load_model(cfg.model)
    wanted = {f"__label__{lang}" for lang in cfg.languages}

    def check(doc: Document) -> tuple[bool, str]:
        labels, scores = model.predict(doc.text.replace("\n", " "), k=1)
        ok = bool(labels) and labels[0] in wanted and float(scores[0]) >= cfg.min_score
        return ok, "language_id"

    return check


def _quality_checks(names: tuple[str, ...]) -> list[tuple[str, PipelineStep]]:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    words = ScriptWordTokenizer()
    made: list[tuple[str, PipelineStep]] = []
    for name in names:
        if name == "gopher":
            made += [("gopher_repetition", GopherRepetitionFilter(language=words))]
            made += [("gopher_quality", GopherQualityFilter(language=words))]
        elif name == "c4":
            made += [("c4", C4QualityFilter(language=words, filter_no_terminal_punct=False))]
        elif name == "fineweb":
            made += [("fineweb", FineWebQualityFilter(language=words))]
    return made


def _checks(cfg: FilterConfig, source: str) -> list[tuple[str, Check]]:
    checks: list[tuple[str, Check]] = []
    if cfg.language_id is not None:
        why_not = language_id_available(cfg.language_id)
        if why_not:
            logger.warning(f"source {source}: language id skipped: {why_not}")
        else:
            checks.append(("language_id", _language_check(cfg.language_id)))
    if cfg.hangul_min_ratio > 0:
        ratio = cfg.hangul_min_ratio
        checks.append(
            (
                "hangul_ratio",
                lambda d: (d.metadata["domain"] != "korean" or hangul_ratio(d.text) >= ratio, ""),
            )
        )
    for name, f in _quality_checks(cfg.quality):
        checks.append((name, lambda d, f=f: _as_pair(f.filter(d))))
    return checks


def _as_pair(result: bool | tuple[bool, str]) -> tuple[bool, str]:
    return result if isinstance(result, tuple) else (result, "")


class SourceFilters(PipelineStep):
    type = "🔻 - FILTER"
    name = "motif source filters"

    def __init__(self, sources: tuple[SourceConfig, ...]):
        super().__init__()
        self.sources = sources

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        # Built per task, not pickled: fastText models and filter state stay out of the executor's payload.
        checks = {s.name: _checks(s.filters, s.name) for s in self.sources}
        for doc in data:
            with self.track_time():
                source, domain = doc.metadata["source"], doc.metadata["domain"]
                failed = None
                for name, check in checks[source]:
                    ok, reason = check(doc)
                    if not ok:
                        failed = f"{name}:{reason}" if reason else name
                        break
                if failed is not None:
                    self.stat_update(key("filtered", source, domain, failed))
                    continue
            yield doc
