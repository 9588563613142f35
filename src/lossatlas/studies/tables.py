"""Study outputs as text: ``results.json``, ``table.md``, the terminal table, and ``docs/studies.md``.

The same rows appear everywhere: quantity, key, published, measured, 95% interval, tolerance, verdict;
rows with a note (every "differs" row has one) are explained under the table.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from lossatlas import __version__
from lossatlas.studies.framework import Row, StudyResult
from lossatlas.studies.registry import Study, StudyInfo, get_study, study_names

if TYPE_CHECKING:
    from rich.table import Table

VERDICT_STYLE = {"agrees": "green", "differs": "red", "not comparable": "yellow"}


def fmt(value: Any) -> str:
    """A number to 4 significant digits (exact small integers as they are); text unchanged; None → —."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if value == int(value) and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def fmt_key(key: dict[str, Any]) -> str:
    """``{"k": 10, "n": 10}`` → ``k=10 n=10``."""
    return " ".join(f"{k}={fmt(v)}" for k, v in key.items())


def fmt_ci(ci: tuple[float, float] | None) -> str:
    return "—" if ci is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


HEADER = ("quantity", "key", "published", "measured", "95% CI", "tolerance", "verdict")


def row_cells(row: Row) -> tuple[str, ...]:
    """The table cells of one row, in :data:`HEADER` order."""
    return (row.quantity, fmt_key(dict(row.key)), fmt(row.published), fmt(row.measured), fmt_ci(row.ci),
            fmt(row.tolerance) if row.tolerance else "0", row.verdict)


def rows_markdown(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table followed by numbered notes for rows that carry one."""
    lines = ["| " + " | ".join(HEADER) + " | note |", "|" + "---|" * (len(HEADER) + 1)]
    notes: list[str] = []
    for row in rows:
        ref = ""
        if row.note:
            if row.note not in notes:
                notes.append(row.note)
            ref = f"[{notes.index(row.note) + 1}]"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row_cells(row)) + f" | {ref} |")
    if notes:
        lines += ["", "Notes on the rows:", ""] + [f"{i}. {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)


def verdict_counts(rows: Sequence[Row]) -> str:
    """``12 agree, 1 differs, 3 not comparable``."""
    n = {v: sum(r.verdict == v for r in rows) for v in VERDICT_STYLE}
    return f"{n['agrees']} agree, {n['differs']} differ, {n['not comparable']} not comparable"


def note_refs(rows: Sequence[Row]) -> tuple[list[str], list[str]]:
    """``([ref per row], [distinct notes])``: ``"[2]"`` points at the second distinct note ("" for none)."""
    notes = list(dict.fromkeys(r.note for r in rows if r.note))
    return [f"[{notes.index(r.note) + 1}]" if r.note else "" for r in rows], notes


def rows_rich(rows: Sequence[Row], title: str | None = None) -> Table:
    """The rows as a Rich table with coloured verdicts and note references (what ``lossatlas study run``
    prints; the notes themselves follow it, see :func:`note_refs`)."""
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for name in (*HEADER, "note"):
        table.add_column(name, justify="right" if name in ("published", "measured", "tolerance") else "left")
    refs, _ = note_refs(rows)
    for row, ref in zip(rows, refs, strict=True):
        cells = list(row_cells(row))
        style = VERDICT_STYLE.get(row.verdict, "")
        cells[-1] = f"[{style}]{cells[-1]}[/{style}]" if style else cells[-1]
        table.add_row(*cells, ref)
    return table


def table_markdown(info: StudyInfo, params: Study, result: StudyResult) -> str:
    """``table.md``: what was run (paper, claim, seed, parameters), the rows, and the notes."""
    parts = [f"# Study `{info.name}`", "", f"**Paper:** {info.paper}  ", f"**Claim:** {info.claim}  ",
             f"**Seed:** {result.seed} · **preset:** {result.preset} · **elapsed:** {result.elapsed_s:.1f} s · "
             f"**cells:** {result.computed} computed, {result.reused} reused  ",
             f"**Verdicts:** {verdict_counts(result.rows)}", "", "**Parameters:** " +
             ", ".join(f"`{k}={_param_text(v)}`" for k, v in result.params.items()), "",
             rows_markdown(result.rows), ""]
    standing = (type(params).NOTES or "").strip()
    published = type(params).PUBLISHED
    if standing or published is not None:
        parts += ["## Notes", ""]
        if published is not None:
            parts.append(f"- Published source: {published.source}" + (f" {published.note}" if published.note else ""))
        if standing:
            parts += [f"- {p.strip()}" for p in standing.split("\n\n") if p.strip()]
        parts.append("")
    if result.figures:
        parts += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in result.figures] + [""]
    return "\n".join(parts)


def _param_text(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _storable(ds: xr.Dataset) -> xr.Dataset:
    """Unicode arrays as object (variable-length) strings, which zarr v3 stores without a warning."""
    def conv(a: xr.DataArray) -> xr.DataArray:
        return a.astype(object) if a.dtype.kind == "U" else a

    out = ds.copy()
    for name in list(out.variables):
        if out[name].dtype.kind == "U":
            out[name] = conv(out[name])
    return out


def write_outputs(info: StudyInfo, params: Study, result: StudyResult) -> None:
    """``results.zarr``, ``results.json`` and ``table.md`` in ``result.folder``."""
    folder = result.folder
    ds = _storable(result.dataset)
    ds.attrs.update({"kind": "study", "study": info.name, "paper": info.paper, "claim": info.claim,
                     "seed": result.seed, "preset": result.preset, "params": json.dumps(result.params),
                     "lossatlas_version": __version__,
                     "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")})
    ds.to_zarr(folder / "results.zarr", mode="w", consolidated=False)
    payload = {"study": info.name, "seed": result.seed, "preset": result.preset, "params": result.params,
               "elapsed_s": round(result.elapsed_s, 3),
               "cells": {"computed": result.computed, "reused": result.reused},
               "rows": [r.as_json() for r in result.rows]}
    (folder / "results.json").write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    (folder / "table.md").write_text(table_markdown(info, params, result))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def read_rows(path: str | Path) -> tuple[dict[str, Any], list[Row]]:
    """``results.json`` → (the payload, its rows as :class:`Row`)."""
    payload = json.loads(Path(path).read_text())
    rows = [Row(quantity=r["quantity"], key=r["key"], published=r["published"], measured=r["measured"],
                ci=tuple(r["ci"]) if r.get("ci") else None, tolerance=r["tolerance"], verdict=r["verdict"],
                note=r.get("note", "")) for r in payload["rows"]]
    return payload, rows


# -- docs/studies.md ---------------------------------------------------------------------------------------
def published_markdown(info: StudyInfo) -> str:
    """The study's published table as Markdown (empty when it has none)."""
    published = info.cls.PUBLISHED
    if published is None or not published.rows:
        return ""
    lines = ["| " + " | ".join(published.columns) + " |", "|" + "---|" * len(published.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in published.rows]
    return "\n".join(lines)


def studies_markdown(results_dir: str | Path | None = None) -> str:
    """``docs/studies.md`` from the registry: per study the paper, claim, parameters and presets, the
    published source, and published vs measured from ``results_dir/NAME.json`` (a full run's
    ``results.json``) when present; how to reproduce."""
    out = ["# Studies", "",
           "Generated from the study registry (`make docs`); measured numbers come from the last full run "
           "checked in under `docs/studies/` (`make studies` refreshes them). Each study prints the published "
           "number beside the measured one with a 95% interval, a stated tolerance and a verdict; a row that "
           "does not reproduce says *differs* and a note explains.", ""]
    for name in study_names():
        info = get_study(name)
        out += [f"## `{name}`", "", f"**Paper:** {info.paper}  ", f"**Claim:** {info.claim}", "", info.summary, ""]
        out += ["| parameter | type | quick | full |", "|---|---|---|---|"]
        out += [f"| `{f}` | {t} | {_param_text(list(q) if isinstance(q, tuple) else q)} | "
                f"{_param_text(list(u) if isinstance(u, tuple) else u)} |" for f, t, q, u in info.fields()]
        out.append("")
        if info.cls.PUBLISHED is not None:
            out += [f"Published: {info.cls.PUBLISHED.source}", ""]
        result = Path(results_dir) / f"{name}.json" if results_dir is not None else None
        if result is not None and result.is_file():
            payload, rows = read_rows(result)
            out += [f"Last full run (seed {payload['seed']}, preset {payload.get('preset', '?')}, "
                    f"{payload['elapsed_s']:.0f} s): {verdict_counts(rows)}.", "", rows_markdown(rows), ""]
        else:
            out += ["No full run is checked in yet.", ""]
        out += ["Reproduce:", "", "```", f"lossatlas study run {name} --full --out runs/studies", "```", ""]
    return "\n".join(out)


def write_studies_doc(path: str | Path = "docs/studies.md", results_dir: str | Path | None = "docs/studies") -> Path:
    """Write :func:`studies_markdown` to ``path``."""
    path = Path(path)
    path.write_text(studies_markdown(results_dir))
    return path


__all__ = ["HEADER", "VERDICT_STYLE", "fmt", "note_refs", "published_markdown", "read_rows", "row_cells",
           "rows_markdown", "rows_rich", "studies_markdown", "table_markdown", "verdict_counts", "write_outputs",
           "write_studies_doc"]
