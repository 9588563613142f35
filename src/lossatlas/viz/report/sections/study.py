"""Report section for ``lossatlas study run`` results: one section per study folder ``DIR/NAME/`` found through
its ``results.zarr`` (root attr ``kind = "study"``). Shows the paper and claim, the rows (published beside
measured, 95% interval, tolerance, verdict in colour, note references), the notes, the study's PNG figures
embedded, and seed, preset and parameters as provenance (:mod:`lossatlas.studies`)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import xarray as xr

from lossatlas.viz.report.registry import Section, esc, register

COLOURS = {"agrees": "#1a7f37", "differs": "#cf222e", "not comparable": "#9a6700"}


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return str(int(value)) if value == int(value) and abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def rows_html(rows: list[dict[str, Any]]) -> str:
    """The ``results.json`` rows as an HTML table (every string escaped) with numbered notes below."""
    notes = list(dict.fromkeys(r.get("note", "") for r in rows if r.get("note")))
    head = "".join(f"<th>{h}</th>" for h in ("quantity", "key", "published", "measured", "95% CI", "tolerance",
                                             "verdict", "note"))
    body = []
    for r in rows:
        key = " ".join(f"{k}={_fmt(v)}" for k, v in (r.get("key") or {}).items())
        ci = "—" if not r.get("ci") else f"[{_fmt(r['ci'][0])}, {_fmt(r['ci'][1])}]"
        verdict = str(r.get("verdict", ""))
        colour = COLOURS.get(verdict, "inherit")
        ref = f"[{notes.index(r['note']) + 1}]" if r.get("note") else ""
        cells = [esc(r.get("quantity", "")), esc(key), esc(_fmt(r.get("published"))), esc(_fmt(r.get("measured"))),
                 esc(ci), esc(_fmt(r.get("tolerance"))),
                 f'<span style="color:{colour};font-weight:600">{esc(verdict)}</span>', esc(ref)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    html = f'<table class="summary"><tr>{head}</tr>{"".join(body)}</table>'
    if notes:
        html += "<ol>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ol>"
    return html


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
    counts = {v: sum(r.get("verdict") == v for r in rows) for v in COLOURS}
    summary = ", ".join(f'<span style="color:{COLOURS[v]}">{n} {esc(v)}</span>' for v, n in counts.items())
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
