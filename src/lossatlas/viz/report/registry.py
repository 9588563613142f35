"""The ONE registration point of the HTML report: a section is a function, registered by kind.

A feature adds a report section by adding a module to :mod:`lossatlas.viz.report.sections`; every module
there is imported automatically (``pkgutil``), so nothing else in the report code changes.

Stable API (other features build on it; keep it backwards compatible):

* ``@register(kind, order=100, load=True)`` — a builder for zarr stores whose root attr ``kind`` equals
  ``kind`` (``"surface"``, ``"interpolation"``, ``"hessian"``, ``"curve"``, ``"study"``, ...)::

      @register("hessian", order=300)
      def hessian_section(store: Path, ds: xr.Dataset) -> Section | None: ...

  ``ds`` is the store opened with :func:`lossatlas.store.open_surface` (in memory, attrs included).
  With ``load=False`` the store is not opened as a Dataset; ``ds`` is an empty ``xr.Dataset`` that only
  carries the store's root attrs (for stores that are not xarray-shaped; read them yourself).
  Several builders may share a kind; each is called, and returning ``None`` means "nothing to show".
* ``@register_artifact(pattern, order=100)`` — a builder for plain files found in the run directory whose
  *name* matches the glob ``pattern`` (``"metrics.csv"``, ``"*.study.json"``)::

      @register_artifact("metrics.csv", order=500)
      def training_section(path: Path) -> Section | None: ...

* :class:`Section` — what a builder returns: a title, a trusted HTML fragment, plotly figures and
  optional provenance. The report orders sections by ``(order, path)``; ``order`` comes from the
  registration. Typical orders: surfaces 100, 2D maps 150, interpolations 200, Hessian 300, curves 400,
  training 500, studies 600.

Security contract: ``Section.html`` is inserted verbatim, so a builder must pass every string that came
from a user or a store (model/data specs, paths, notes, attrs) through :func:`esc` before putting it into
the fragment, and through :func:`plotly_text` before using it in a plotly title, axis label, legend name or
hover text (plotly renders a subset of HTML there). ``Section.title`` and ``Section.provenance`` are
escaped by the report itself.
"""

from __future__ import annotations

import fnmatch
import html
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr


@dataclass(frozen=True, eq=False)
class Section:
    """One block of the report.

    Attributes:
        title: plain text (escaped by the report).
        html: a trusted HTML fragment shown under the title (escape user strings with :func:`esc`).
        figures: plotly ``go.Figure`` objects, each rendered interactively below the fragment.
        provenance: extra key → value pairs for the provenance panel (e.g. a run's ``run.json``); the
            root attrs of a store are added by the report itself.
        order: position in the report (filled in from the registration; lower comes first).
        source: the store or file the section came from (filled in by the report).
    """

    title: str
    html: str = ""
    figures: tuple[Any, ...] = ()
    provenance: Mapping[str, Any] = field(default_factory=dict)
    order: int = 100
    source: Path | None = None


StoreBuilder = Callable[[Path, xr.Dataset], "Section | None"]
"""``builder(store_path, ds) -> Section | None`` for a zarr store of one ``kind``."""

ArtifactBuilder = Callable[[Path], "Section | None"]
"""``builder(file_path) -> Section | None`` for a plain file matched by name."""


@dataclass(frozen=True)
class StoreEntry:
    """A registered store builder."""

    kind: str
    order: int
    load: bool
    builder: StoreBuilder


@dataclass(frozen=True)
class ArtifactEntry:
    """A registered artifact builder."""

    pattern: str
    order: int
    builder: ArtifactBuilder


_STORE_BUILDERS: list[StoreEntry] = []
_ARTIFACT_BUILDERS: list[ArtifactEntry] = []
_LOADED = False
_IMPORT_PROBLEMS: list[str] = []


def register(kind: str, order: int = 100, load: bool = True) -> Callable[[StoreBuilder], StoreBuilder]:
    """Register ``builder(store_path, ds) -> Section | None`` for stores with ``attrs['kind'] == kind``."""

    def decorate(builder: StoreBuilder) -> StoreBuilder:
        entry = StoreEntry(kind, order, load, builder)
        _STORE_BUILDERS[:] = [e for e in _STORE_BUILDERS if _key(e.builder) != _key(builder)] + [entry]
        return builder

    return decorate


def register_artifact(pattern: str, order: int = 100) -> Callable[[ArtifactBuilder], ArtifactBuilder]:
    """Register ``builder(file_path) -> Section | None`` for files whose name matches the glob ``pattern``."""

    def decorate(builder: ArtifactBuilder) -> ArtifactBuilder:
        entry = ArtifactEntry(pattern, order, builder)
        _ARTIFACT_BUILDERS[:] = [e for e in _ARTIFACT_BUILDERS if _key(e.builder) != _key(builder)] + [entry]
        return builder

    return decorate


def _key(fn: Callable[..., Any]) -> tuple[str, str]:
    # re-registering the same function (module reloaded) replaces the old entry instead of duplicating it
    return getattr(fn, "__module__", ""), getattr(fn, "__qualname__", repr(fn))


def load_sections() -> list[str]:
    """Import every module of :mod:`lossatlas.viz.report.sections` once (each registers its builders).

    A module that fails to import does not break the report: the failure is returned (and kept for every
    later call) as a one-line problem, which the report lists and ``strict`` mode raises.
    """
    global _LOADED
    if not _LOADED:
        from lossatlas.viz.report import sections

        for info in sorted(pkgutil.iter_modules(sections.__path__), key=lambda m: m.name):
            try:
                importlib.import_module(f"{sections.__name__}.{info.name}")
            except Exception as exc:  # noqa: BLE001 - one broken section module must not lose the report
                _IMPORT_PROBLEMS.append(f"report section module '{info.name}' failed to import: "
                                        f"{type(exc).__name__}: {exc}")
        _LOADED = True
    return list(_IMPORT_PROBLEMS)


def store_builders(kind: str) -> list[StoreEntry]:
    """Builders registered for a store ``kind``, in report order."""
    load_sections()
    return sorted((e for e in _STORE_BUILDERS if e.kind == kind), key=lambda e: e.order)


def artifact_builders(filename: str) -> list[ArtifactEntry]:
    """Builders whose pattern matches a file name, in report order."""
    load_sections()
    return sorted((e for e in _ARTIFACT_BUILDERS if fnmatch.fnmatch(filename, e.pattern)),
                  key=lambda e: e.order)


def artifact_patterns() -> list[str]:
    """Every registered artifact glob (what the run-directory scan looks for)."""
    load_sections()
    return sorted({e.pattern for e in _ARTIFACT_BUILDERS})


def registered_kinds() -> list[str]:
    """Every store kind some builder handles."""
    load_sections()
    return sorted({e.kind for e in _STORE_BUILDERS})


def esc(value: Any) -> str:
    """HTML-escape anything (``str(value)``, quotes included) for an HTML fragment."""
    return html.escape(str(value), quote=True)


def plotly_text(value: Any, limit: int | None = None) -> str:
    """Escape ``<``, ``>`` and ``&`` for plotly titles, labels and hover text (plotly shows ``&lt;`` as ``<``
    but not ``&quot;``; quotes are harmless once no tag can open), optionally shortened to ``limit`` chars."""
    text = str(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(text, quote=False)


__all__ = ["ArtifactBuilder", "Section", "StoreBuilder", "artifact_builders", "artifact_patterns", "esc",
           "load_sections", "plotly_text", "register", "register_artifact", "registered_kinds", "store_builders"]
