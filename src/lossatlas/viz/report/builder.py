"""Assemble one self-contained HTML file from every result found in a run directory.

The run directory is scanned (a few levels deep) for zarr stores — dispatched to the builders registered
for their root attr ``kind`` — and for plain files matched by a registered artifact pattern (see
:mod:`lossatlas.viz.report.registry`). plotly.js is embedded once in the page (no CDN, no network request);
each figure is a ``plotly.io.to_html(full_html=False, include_plotlyjs=False)`` fragment.

Every string that comes from a user or a store (paths, attrs, notes) is HTML-escaped here or by the
section builders (:func:`lossatlas.viz.report.registry.esc`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from lossatlas import __version__
from lossatlas.errors import UserInputError
from lossatlas.store import open_surface
from lossatlas.viz.report.registry import (
    Section,
    artifact_builders,
    artifact_patterns,
    esc,
    load_sections,
    store_builders,
)

_SKIP_DIRS = {"checkpoints", "__pycache__", "node_modules"}
_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True,
                  "toImageButtonOptions": {"format": "png", "scale": 2}}


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote: the HTML path, how many sections, and builder problems (if any)."""

    path: Path
    sections: int
    figures: int
    problems: tuple[str, ...]
    seconds: float


def _is_store(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file())


def _store_attrs(path: Path) -> dict[str, Any]:
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - unreadable stores are reported, not fatal
        return {}


def scan_run_dir(run_dir: Path, max_depth: int = 4) -> tuple[list[Path], list[Path]]:
    """Zarr stores and registered artifacts under ``run_dir`` (sorted; stores are not descended into, and a study
    folder gives its ``results.zarr`` only: one section per study, not one per training run of its cells)."""
    patterns = artifact_patterns()
    stores: list[Path] = []
    files: list[Path] = []
    if _is_store(run_dir):
        return [run_dir], []

    def walk(folder: Path, depth: int) -> None:
        if _is_study_folder(folder):  # its cells (training runs, surfaces) are the study's internals: one section
            stores.append(folder / "results.zarr")
            return
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if entry.name.startswith(".") or entry.name in _SKIP_DIRS:
                    continue
                if _is_store(path):
                    stores.append(path)
                elif depth < max_depth:
                    walk(path, depth + 1)
            elif entry.is_file() and any(_match(entry.name, p) for p in patterns):
                files.append(path)

    walk(run_dir, 0)
    return stores, files


def _is_study_folder(folder: Path) -> bool:
    """A ``lossatlas study run`` folder ``DIR/NAME/``: its ``study.json`` beside a ``results.zarr`` store."""
    return (folder / "study.json").is_file() and _is_store(folder / "results.zarr")


def _match(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(name, pattern)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or path.name
    except ValueError:
        return str(path)


def collect_sections(run_dir: Path, strict: bool = False
                     ) -> tuple[list[Section], dict[str, Mapping[str, Any]], list[str]]:
    """Every section of the report, provenance per source, and problems (builder errors, unknown stores)."""
    problems: list[str] = load_sections()
    if problems and strict:
        raise RuntimeError("; ".join(problems))
    stores, files = scan_run_dir(run_dir)
    sections: list[Section] = []
    provenance: dict[str, Mapping[str, Any]] = {}

    def run(builder: Any, args: tuple[Any, ...], order: int, source: Path) -> None:
        try:
            out = builder(*args)
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the whole report
            if strict:
                raise
            name = getattr(builder, "__qualname__", "builder")
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            problems.append(f"{_rel(source, run_dir)}: section {name} failed ({Path(frame.filename).name}:"
                            f"{frame.lineno}): {type(exc).__name__}: {exc}")
            return
        for section in [out] if isinstance(out, Section) else list(out or []):
            sections.append(replace(section, order=order, source=source))
            if section.provenance:
                provenance.setdefault(_rel(source, run_dir), {}).update(section.provenance)  # type: ignore[attr-defined]

    for store in stores:
        attrs = _store_attrs(store)
        rel = _rel(store, run_dir)
        provenance[rel] = dict(attrs)
        entries = store_builders(str(attrs.get("kind", "")))
        if not entries:
            problems.append(f"{rel}: no report section for stores of kind '{attrs.get('kind', '?')}'")
            continue
        ds: xr.Dataset | None = None
        for entry in entries:
            if entry.load and ds is None:
                try:
                    ds = open_surface(store)
                except UserInputError as exc:
                    problems.append(f"{rel}: {exc}")
                    break
            data = ds if entry.load else xr.Dataset(attrs=attrs)
            run(entry.builder, (store, data), entry.order, store)
    for path in files:
        for art in artifact_builders(path.name):
            run(art.builder, (path,), art.order, path)
    sections.sort(key=lambda s: (s.order, str(s.source)))
    return sections, provenance, problems


def _figure_html(fig: Any, div_id: str) -> str:
    import plotly.io as pio

    height = fig.layout.height or 460
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, config=_PLOTLY_CONFIG, div_id=div_id,
                       default_width="100%", default_height=f"{int(height)}px", validate=False)


def _value(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, default=str)


def _provenance_html(provenance: Mapping[str, Mapping[str, Any]]) -> str:
    blocks = []
    for source, attrs in provenance.items():
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_value(v))}</td></tr>"
                       for k, v in sorted(attrs.items(), key=lambda kv: str(kv[0])))
        blocks.append(f'<details open><summary><code>{esc(source)}</code></summary>'
                      f'<table class="prov">{rows}</table></details>')
    return "".join(blocks) or "<p>No provenance found.</p>"


def render_html(run_dir: Path, sections: list[Section], provenance: Mapping[str, Mapping[str, Any]],
                problems: list[str], title: str | None = None) -> tuple[str, int]:
    """The full page (plotly.js inlined once); returns ``(html, number of figures)``."""
    from plotly.offline import get_plotlyjs

    from lossatlas.viz.describe import notes, untrained

    body, toc, n_fig = [], [], 0
    untrained_sources = []
    for i, sec in enumerate(sections):
        anchor = f"sec-{i}"
        toc.append(f'<li><a href="#{anchor}">{esc(sec.title)}</a></li>')
        figs = []
        wide = [any(t.type in ("surface", "mesh3d") for t in fig.data) for fig in sec.figures]
        for fig, is_wide in zip(sec.figures, wide, strict=True):
            figs.append(f'<div class="fig{" wide" if is_wide else ""}">{_figure_html(fig, f"fig-{n_fig}")}</div>')
            n_fig += 1
        rel = _rel(sec.source, run_dir) if sec.source else ""
        attrs = provenance.get(rel, {}) if sec.source else {}
        if untrained(attrs):
            untrained_sources.append(rel)
        source = f'<p class="source">from <code>{esc(rel)}</code></p>' if sec.source else ""
        source += "".join(f'<p class="note">{esc(n)}</p>' for n in notes(attrs))
        # one column when a single half-width figure would otherwise leave the other half empty
        columns = " one" if sum(not w for w in wide) <= 1 else ""
        body.append(f'<section class="la-section" id="{anchor}"><h2>{esc(sec.title)}</h2>{source}'
                    f'{sec.html}<div class="figs{columns}">{"".join(figs)}</div></section>')
    toc.append('<li><a href="#provenance">Provenance</a></li>')
    issues = ""
    if problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in problems)
        issues = f'<section class="problems" id="problems"><h2>Problems</h2><ul>{items}</ul></section>'
    if not sections:
        body.append('<section class="la-section"><p>No results found in this run directory.</p></section>')
    heading = title or f"lossatlas report — {run_dir.resolve().name}"
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>{esc(heading)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}
{_RESIZE_JS}</script>
</head><body>
<header><h1>{esc(heading)}</h1>
<p class="meta">run directory <code>{esc(run_dir)}</code> · generated {esc(created)}
by lossatlas {esc(__version__)} · {len(sections)} sections · {n_fig} figures</p>
{_untrained_banner(untrained_sources)}
<nav><ol>{"".join(toc)}</ol></nav></header>
<main>{issues}{"".join(body)}
<section class="la-section" id="provenance"><h2>Provenance</h2>
<p class="source">Every attribute recorded with each result: configuration, seeds, versions and hashes.</p>
{_provenance_html(provenance)}</section></main>
</body></html>
"""
    return page, n_fig


def _untrained_banner(sources: list[str]) -> str:
    if not sources:
        return ""
    names = ", ".join(f"<code>{esc(s)}</code>" for s in sources)
    return (f'<p class="note">untrained weights: {names} '
            f'{"was" if len(sources) == 1 else "were"} computed without --checkpoint (random initialisation)</p>')


def build_report(run_dir: str | Path, out: str | Path | None = None, title: str | None = None,
                 strict: bool = False) -> ReportResult:
    """Write the HTML report of ``run_dir`` (default ``RUN_DIR/report.html``).

    Args:
        run_dir: a run directory (or a single ``.zarr`` store).
        out: the HTML file to write.
        title: page heading (default: the run directory's name).
        strict: re-raise a failing section builder instead of listing it under "Problems".
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserInputError(f"run directory '{run_dir}' does not exist; pass a folder written by lossatlas")
    if not run_dir.is_dir():
        raise UserInputError(f"'{run_dir}' is not a directory; pass a run directory or a .zarr store")
    default = (run_dir.parent if _is_store(run_dir) else run_dir) / "report.html"
    target = Path(out) if out is not None else default
    if target.suffix.lower() not in {".html", ".htm"}:
        raise UserInputError(f"--out must end in .html, got '{target}'")
    sections, provenance, problems = collect_sections(run_dir, strict=strict)
    page, n_fig = render_html(run_dir, sections, provenance, problems, title)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return ReportResult(target, len(sections), n_fig, tuple(problems), time.perf_counter() - start)


def iter_figures(sections: list[Section]) -> Iterator[Any]:
    """All plotly figures of some sections (tests inspect them instead of pixels)."""
    for sec in sections:
        yield from sec.figures


# The page may load nothing from anywhere (no connect/src outside the file): defence in depth on top of
# escaping; inline scripts are needed for plotly.js and the figures, 'unsafe-eval' for plotly's WebGL code.
_CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
        "img-src data: blob:; font-src data:; worker-src blob:")

# plotly's "responsive" config follows window resizes only; a figure drawn before its grid neighbours were parsed
# keeps the width it saw then (a lone first figure spans the whole row). Resize every figure to its box whenever
# the box changes, from the moment the page is parsed.
_RESIZE_JS = """document.addEventListener('DOMContentLoaded', function () {
  if (!window.ResizeObserver || !window.Plotly) { return; }
  var observer = new ResizeObserver(function (entries) {
    entries.forEach(function (entry) {
      var gd = entry.target, layout = gd._fullLayout;
      if (layout && Math.abs(layout.width - entry.contentRect.width) > 1) { Plotly.Plots.resize(gd); }
    });
  });
  document.querySelectorAll('.js-plotly-plot').forEach(function (gd) { observer.observe(gd); });
});"""

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2933;
background:#f6f7f9}
header{background:#fff;border-bottom:1px solid #d9dee4;padding:16px 32px}
h1{font-size:1.5rem;margin:0 0 4px}h2{font-size:1.2rem;margin:0 0 6px}
.meta,.source{color:#52606d;font-size:.85rem;margin:2px 0 8px}
nav ol{padding-left:22px;margin:8px 0 0;font-size:.9rem;columns:2 320px}
main{max-width:1280px;margin:0 auto;padding:16px 32px}
.la-section{background:#fff;border:1px solid #d9dee4;border-radius:6px;padding:16px 20px;margin:16px 0}
.figs{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:12px}
.figs.one{grid-template-columns:minmax(0,1fr)}
@media (max-width:1100px){.figs{grid-template-columns:minmax(0,1fr)}}
.fig{min-width:0}.fig.wide{grid-column:1/-1}
.note{background:#fff8e1;border-left:4px solid #f0b429;padding:4px 10px;margin:4px 0;font-size:.85rem}
table{border-collapse:collapse;font-size:.85rem;margin:6px 0}
th,td{border-bottom:1px solid #e4e7eb;padding:3px 10px;text-align:left;vertical-align:top}
th{color:#323f4b;font-weight:600;white-space:nowrap}
td{word-break:break-all;font-family:ui-monospace,Menlo,Consolas,monospace}
table.summary td{font-family:inherit;word-break:normal}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
.problems{background:#fff4f4;border:1px solid #f0b4b4;border-radius:6px;padding:12px 20px}
code{background:#f0f2f5;padding:1px 4px;border-radius:3px}
"""
