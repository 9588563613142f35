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


def rows_html(rows: list[dict[str, Any]]) -> str:
    """The ``results.json`` rows as an HTML table (every string escaped; the cells of
    :func:`lossatlas.studies.tables.row_cells`), with the sources, the numbered notes and the families below."""
    from lossatlas.studies.framework import Row
    from lossatlas.studies.tables import HEADER, family_lines, note_refs, row_cells, runs_text, source_refs

    if any("source" not in r for r in rows):
        return "<p>These results predate the verdict rule (no source per row); rerun the study.</p>"
    parsed = [Row.from_json(r) for r in rows]
    srefs, sources = source_refs(parsed)
    nrefs, notes = note_refs(parsed)
    head = "".join(f"<th>{esc(h)}</th>" for h in (*HEADER, "runs / needed", "note"))
    body = []
    for row, sref, nref in zip(parsed, srefs, nrefs, strict=True):
        cells = [esc(c) for c in row_cells(row, sref)]
        colour = COLOURS.get(row.verdict, "inherit")
        cells[-1] = f'<span style="color:{colour};font-weight:600">{cells[-1]}</span>'
        cells += [esc(runs_text(row)), esc(nref)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    html = f'<table class="summary"><tr>{head}</tr>{"".join(body)}</table>'
    html += "<p><b>Sources</b></p><ul>" + "".join(
        f"<li>S{i}. {esc(t)}</li>" for i, t in enumerate(sources, 1)) + "</ul>"
    if notes:
        html += "<p><b>Notes on the rows</b></p><ol>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ol>"
    families = family_lines(parsed)
    if families:
        html += "<p><b>Families (Holm-corrected together)</b></p><ul>" + "".join(
            f"<li>{esc(f)}</li>" for f in families) + "</ul>"
    return html


def _counts(rows: list[dict[str, Any]]) -> str:
    from lossatlas.studies.framework import Row
    from lossatlas.studies.tables import verdict_counts

    if any("source" not in r for r in rows):
        return "results predate the verdict rule"
    return verdict_counts([Row.from_json(r) for r in rows])


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
