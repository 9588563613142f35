"""Report section for ``lossatlas study run`` results: one section per study folder ``DIR/NAME/`` found through
its ``results.zarr`` (root attr ``kind = "study"``). Shows the paper and claim, the rows (expected with its
source beside measured, 95% interval, margin, verdict in colour, source and note references), the notes,
the study's PNG figures embedded, and seed, preset and parameters as provenance (:mod:`lossatlas.studies`)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import xarray as xr

from lossatlas.viz.report.registry import Section, esc, register

COLOURS = {"agrees": "#1a7f37", "differs": "#cf222e", "inconclusive": "#9a6700", "not comparable": "#6e7781"}
HEADER = ("quantity", "key", "source", "expected", "measured", "95% CI", "margin", "d 90% CI", "verdict",
          "runs / needed", "note")
"""The columns of ``lossatlas study run``'s table (:mod:`lossatlas.studies.tables`), read back from results.json."""


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != value:
            return "—"
        return str(int(value)) if value == int(value) and abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def _pair(ci: Any) -> str:
    return "—" if not ci else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _refs(items: list[str]) -> tuple[list[int], list[str]]:
    distinct = list(dict.fromkeys(i for i in items if i))
    return [distinct.index(i) + 1 if i else 0 for i in items], distinct


def _runs(r: dict[str, Any]) -> str:
    if r.get("runs") is None:
        return "—"
    if r.get("expected") is None or isinstance(r.get("expected"), str):
        return f"{r['runs']} / —"
    return f"{r['runs']} / {'never' if r.get('runs_needed') is None else r['runs_needed']}"


def rows_html(rows: list[dict[str, Any]]) -> str:
    """The ``results.json`` rows as an HTML table (every string escaped), with the sources, the numbered notes and
    the families' verdicts below."""
    if any("source" not in r for r in rows):
        return "<p>These results predate the verdict rule (no source per row); rerun the study.</p>"
    srefs, sources = _refs([str(r.get("ref", "")) for r in rows])
    nrefs, notes = _refs([str(r.get("note", "")) for r in rows])
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    body = []
    for r, sref, nref in zip(rows, srefs, nrefs, strict=True):
        key = " ".join(f"{k}={_fmt(v)}" for k, v in (r.get("key") or {}).items())
        verdict = str(r.get("verdict", ""))
        colour = COLOURS.get(verdict, "inherit")
        cells = [esc(r.get("quantity", "")), esc(key), esc(f"{r['source']} [S{sref}]" if sref else r["source"]),
                 esc(_fmt(r.get("expected"))), esc(_fmt(r.get("measured"))), esc(_pair(r.get("ci"))),
                 esc(_fmt(r.get("margin"))), esc(_pair(r.get("diff_ci90"))),
                 f'<span style="color:{colour};font-weight:600">{esc(verdict)}</span>', esc(_runs(r)),
                 esc(f"[{nref}]" if nref else "")]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    html = f'<table class="summary"><tr>{head}</tr>{"".join(body)}</table>'
    html += "<p><b>Sources</b></p><ul>" + "".join(
        f"<li>S{i}. {esc(t)}</li>" for i, t in enumerate(sources, 1)) + "</ul>"
    if notes:
        html += "<p><b>Notes on the rows</b></p><ol>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ol>"
    families: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        families.setdefault(str(r.get("family") or r.get("quantity")), []).append(r)
    lines = [f"{name} ({len(rs)} rows): {rs[0].get('family_verdict') or '—'}" for name, rs in families.items()
             if len(rs) > 1]
    if lines:
        html += "<p><b>Families (Holm-corrected together)</b></p><ul>" + "".join(
            f"<li>{esc(f)}</li>" for f in lines) + "</ul>"
    return html


def _counts(rows: list[dict[str, Any]]) -> str:
    """Verdicts counted by source (``published: 3 agrees, 1 differs; derived: 2 agrees``)."""
    if any("source" not in r for r in rows):
        return "results predate the verdict rule"
    parts = []
    for source in dict.fromkeys(["published", "derived", "protocol", "sanity"] + [r["source"] for r in rows]):
        mine = [r for r in rows if r["source"] == source]
        if mine:
            parts.append(f"{source}: " + ", ".join(f"{sum(r['verdict'] == v for r in mine)} {v}" for v in COLOURS
                                                 if any(r["verdict"] == v for r in mine)))
    return "; ".join(parts)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{esc(path.stem)}" style="max-width:100%" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(path.name)}</figcaption></figure>")


def list_items(markdown: str) -> list[str]:
    """The items of a Markdown bullet list, each with its indented continuation lines joined by spaces."""
    items: list[list[str]] = []
    for line in markdown.splitlines():
        if line.startswith("- "):
            items.append([line[2:].strip()])
        elif line.strip() and items:
            items[-1].append(line.strip())
    return [" ".join(item) for item in items]


@register("study", order=600, load=False)
def study_section(store: Path, ds: xr.Dataset) -> Section | None:
    """One study: rows with coloured verdicts, notes, embedded figures; seed and parameters as provenance."""
    folder = store.parent
    results = folder / "results.json"
    if not results.is_file():
        return None
    payload = json.loads(results.read_text())
    attrs = ds.attrs
    rows = payload.get("rows", [])
    summary = esc(_counts(rows))
    parts = [f"<p><b>Paper:</b> {esc(attrs.get('paper', ''))}<br><b>Claim:</b> {esc(attrs.get('claim', ''))}<br>"
             f"<b>Verdicts:</b> {summary} · seed {esc(payload.get('seed'))}, {esc(payload.get('preset', '?'))} "
             f"preset, {esc(round(float(payload.get('elapsed_s', 0)), 1))} s</p>", rows_html(rows)]
    table = folder / "table.md"
    if table.is_file() and "## Notes" in (text := table.read_text()):
        notes = text.split("## Notes", 1)[1].split("## Figures", 1)[0].strip()
        parts.append("<h4>Notes</h4><ul>" + "".join(f"<li>{esc(item)}</li>" for item in list_items(notes)) + "</ul>")
    parts += [_image(p) for p in sorted(folder.glob("*.png"))]
    provenance = {"study": payload.get("study"), "seed": payload.get("seed"), "preset": payload.get("preset"),
                  **{f"params.{k}": v for k, v in (payload.get("params") or {}).items()}}
    return Section(title=f"Study: {payload.get('study', folder.name)}", html="".join(parts), provenance=provenance)


__all__ = ["list_items", "rows_html", "study_section"]
