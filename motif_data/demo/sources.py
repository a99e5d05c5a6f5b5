"""Real text for the demo that is on every machine after ``pip install motif-data[demo]``.

No text is copied into this repository: each domain is harvested from what installed packages ship
(Python's own sources and documentation, KoNLPy's Korean corpora, CLDR locale data via Babel, SymPy and
NumPy docstrings, licence texts). ``--from-hub`` swaps these for small streamed samples of the real sources.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pkgutil
import re
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "OfflineSource",
    "OFFLINE_SOURCES",
    "MissingExtra",
    "harvest",
    "check_installed",
    "konlpy_corpus",
    "paragraph_groups",
]

#: Packages the offline sources read text from (the ``demo`` extra, plus SymPy, which torch brings).
_PACKAGES = ("konlpy", "babel", "sympy")


class MissingExtra(RuntimeError):
    """A package the offline demo reads text from is not installed."""


@dataclass(frozen=True)
class OfflineSource:
    name: str
    domain: str
    what: str
    documents: Callable[[int], Iterator[str]]  # argument: a byte budget


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(
            f"the demo reads text from the '{module}' package, which is not installed: "
            "run `pip install 'motif-data[demo]'`"
        ) from e


def check_installed() -> None:
    """Fail before any work if a package the offline demo reads from is missing."""
    for name in _PACKAGES:
        _need(name)


def _budgeted(docs: Iterator[str], budget: int) -> Iterator[str]:
    used = 0
    for doc in docs:
        doc = doc.strip()
        if not doc:
            continue
        yield doc
        used += len(doc.encode())
        if used >= budget:
            return


def _docstrings(
    modules: tuple[str, ...], *, walk: bool = False, want: Callable[[str], bool] = lambda s: True
) -> Iterator[str]:
    """Docstrings of the public functions and classes defined in these modules (and, with ``walk``,
    their sub-modules), in sorted order; names re-exported from elsewhere are skipped."""
    names = []
    for name in modules:
        names.append(name)
        module = _need(name)
        if walk:
            names += sorted(
                m.name for m in pkgutil.walk_packages(module.__path__, name + ".") if "test" not in m.name
            )
    owner = modules[0]
    seen: set[int] = set()
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception:  # optional sub-modules (missing backends) are simply not harvested
            continue
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if not (getattr(obj, "__module__", None) or "").startswith(owner) or id(obj) in seen:
                continue
            doc = inspect.getdoc(obj)
            if doc and want(doc):
                seen.add(id(obj))
                yield doc


def _python_docs(budget: int) -> Iterator[str]:
    topics = _need("pydoc_data.topics").topics
    return _budgeted((topics[k] for k in sorted(topics)), budget)


def _python_sources(budget: int) -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file()) + sorted(
        p for p in stdlib.glob("*/*.py") if "test" not in p.parts and "site-packages" not in p.parts
    )
    return _budgeted((p.read_text(encoding="utf-8", errors="replace") for p in files), budget)


def konlpy_corpus() -> Path:
    """The folder of KoNLPy's Korean corpora (``kolaw/``: the constitution, ``kobill/``: bills), as .txt files."""
    return Path(_need("konlpy").__file__).parent / "data" / "corpus"


def _korean(budget: int) -> Iterator[str]:
    files = sorted(konlpy_corpus().glob("*/*.txt"))
    return _budgeted((d for f in files for d in paragraph_groups(f.read_text(encoding="utf-8"))), budget)


def paragraph_groups(text: str, min_bytes: int = 600) -> Iterator[str]:
    """Consecutive paragraphs joined until a document holds ``min_bytes``: the constitution's articles and
    the bills' sections become a few hundred documents instead of a handful of files or thousands of lines."""
    group: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        group.append(para.strip())
        if sum(len(p.encode()) for p in group) >= min_bytes:
            yield "\n\n".join(group)
            group = []
    if group:
        yield "\n\n".join(group)


def _multilingual(budget: int) -> Iterator[str]:
    babel = _need("babel")

    def docs() -> Iterator[str]:
        for code in sorted(babel.localedata.locale_identifiers()):
            loc = babel.Locale.parse(code)
            if loc.territory or not loc.languages:
                continue  # one document per language, not per regional variant
            langs = ", ".join(loc.languages[k] for k in sorted(loc.languages)[:120])
            lands = ", ".join(loc.territories[k] for k in sorted(loc.territories)[:120])
            yield f"{loc.display_name}\n\n{langs}\n\n{lands}"

    return _budgeted(docs(), budget)


def _licences(budget: int) -> Iterator[str]:
    def docs() -> Iterator[str]:
        for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
            for f in sorted(dist.files or [], key=str):
                if re.search(r"(LICEN[CS]E|COPYING|NOTICE)[^/]*$", str(f)) and f.suffix in (
                    "",
                    ".txt",
                    ".md",
                    ".rst",
                ):
                    try:
                        yield f.read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError):
                        continue

    seen: set[str] = set()
    return _budgeted((d for d in docs() if not (d in seen or seen.add(d))), budget)


def _academic(budget: int) -> Iterator[str]:
    # SymPy's physics and statistics docstrings that cite their literature ("References" sections).
    refs = lambda s: "References" in s  # noqa: E731
    docs = (
        d
        for m in ("sympy.physics", "sympy.stats", "sympy.combinatorics")
        for d in _docstrings((m,), walk=True, want=refs)
    )
    return _budgeted(docs, budget)


def _math(budget: int) -> Iterator[str]:
    return _budgeted(_docstrings(("sympy.ntheory",), walk=True), budget)


def _reasoning(budget: int) -> Iterator[str]:
    # Worked, step-by-step derivations: SymPy docstrings whose examples walk through several steps.
    return _budgeted(_docstrings(("sympy.solvers",), walk=True, want=lambda s: s.count(">>>") >= 4), budget)


OFFLINE_SOURCES: tuple[OfflineSource, ...] = (
    OfflineSource(
        "python-docs", "web", "Python's bundled documentation topics (English prose)", _python_docs
    ),
    OfflineSource(
        "babel-cldr",
        "multilingual",
        "CLDR language and territory names in every locale (Babel)",
        _multilingual,
    ),
    OfflineSource(
        "konlpy", "korean", "Korean constitution and National Assembly bills (KoNLPy corpora)", _korean
    ),
    OfflineSource(
        "sympy-refs",
        "academic",
        "SymPy physics, statistics and combinatorics docstrings citing literature",
        _academic,
    ),
    OfflineSource("licences", "specialized", "licence texts of the installed packages (legal)", _licences),
    OfflineSource("python-stdlib", "code", "Python standard-library sources", _python_sources),
    OfflineSource("sympy-ntheory", "math", "SymPy number-theory docstrings", _math),
    OfflineSource(
        "sympy-solvers", "reasoning", "SymPy solver docstrings with multi-step worked examples", _reasoning
    ),
)


def harvest(
    out_dir: Path, budget_bytes: int, write_jsonl_zst: Callable[[Path, Iterator[dict]], int]
) -> dict[str, int]:
    """Write one ``NAME.jsonl.zst`` per offline source; returns documents written per source."""
    counts = {}
    for src in OFFLINE_SOURCES:
        docs = ({"id": f"{src.name}/{i}", "text": t} for i, t in enumerate(src.documents(budget_bytes)))
        counts[src.name] = write_jsonl_zst(out_dir / src.domain / f"{src.name}.jsonl.zst", docs)
    return counts
