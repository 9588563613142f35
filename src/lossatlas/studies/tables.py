"""Study outputs as text: ``results.json``, ``table.md``, the terminal table, and ``docs/studies.md``.

The same rows appear everywhere: quantity, key, source, expected, measured, 95% interval, margin, the 90%
interval of the difference, verdict; rows with a note are explained under the table, and each row's source
(the paper and the notes' line, the function, or the protocol choice) is listed under it too.
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

VERDICT_STYLE = {"agrees": "green", "differs": "red", "inconclusive": "yellow", "not comparable": "dim"}
SOURCE_ORDER = ("published", "derived", "protocol", "sanity")


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


HEADER = ("quantity", "key", "source", "expected", "measured", "95% CI", "margin", "d 90% CI", "verdict")


def runs_text(row: Row) -> str:
    """``n / needed``: runs counted and the fewest runs with which a result at the expected value would agree
    (``never`` when no run count suffices: the source's own sampling error exceeds the margin)."""
    if row.runs is None:
        return "—"
    if row.expected is None or isinstance(row.expected, str):
        return f"{row.runs} / —"
    needed = "never" if row.runs_needed is None else str(row.runs_needed)
    return f"{row.runs} / {needed}"


def row_cells(row: Row, source_ref: str = "") -> tuple[str, ...]:
    """The table cells of one row, in :data:`HEADER` order (``source_ref`` is appended to the source)."""
    return (row.quantity, fmt_key(dict(row.key)), row.source + (f" {source_ref}" if source_ref else ""),
            fmt(row.expected), fmt(row.measured), fmt_ci(row.ci), fmt(row.margin) if row.margin else "0",
            fmt_ci(row.diff_ci90), row.verdict)


def _refs(items: Sequence[str]) -> tuple[list[str], list[str]]:
    distinct = list(dict.fromkeys(i for i in items if i))
    return [f"[{distinct.index(i) + 1}]" if i else "" for i in items], distinct


def source_refs(rows: Sequence[Row]) -> tuple[list[str], list[str]]:
    """``([ref per row], [distinct sources])``: ``"[S2]"`` points at the second distinct source."""
    refs, distinct = _refs([r.ref for r in rows])
    return [f"[S{r[1:]}" if r else "" for r in refs], distinct


def rows_markdown(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table, then the sources, the notes and the families' verdicts."""
    lines = ["| " + " | ".join(HEADER) + " | runs / needed | note |", "|" + "---|" * (len(HEADER) + 2)]
    srefs, sources = source_refs(rows)
    nrefs, notes = note_refs(rows)
    for row, sref, nref in zip(rows, srefs, nrefs, strict=True):
        cells = (*row_cells(row, sref), runs_text(row), nref)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Sources:", ""] + [f"- S{i}. {t}" for i, t in enumerate(sources, 1)]
    if notes:
        lines += ["", "Notes on the rows:", ""] + [f"{i}. {n}" for i, n in enumerate(notes, 1)]
    families = family_lines(rows)
    if families:
        lines += ["", "Families (Holm-corrected together):", ""] + [f"- {f}" for f in families]
    return "\n".join(lines)


def family_lines(rows: Sequence[Row]) -> list[str]:
    """``spurious_pct (15 rows): differs`` for every family of more than one row."""
    members: dict[str, list[Row]] = {}
    for r in rows:
        members.setdefault(r.family or r.quantity, []).append(r)
    return [f"{name} ({len(rs)} rows): {rs[0].family_verdict or '—'}" for name, rs in members.items() if len(rs) > 1]


def verdict_counts(rows: Sequence[Row]) -> str:
    """Verdicts counted by source: ``published: 12 agree, 1 differs, 2 inconclusive; derived: 4 agree``."""
    parts = []
    for source in SOURCE_ORDER + tuple(sorted({r.source for r in rows} - set(SOURCE_ORDER))):
        mine = [r for r in rows if r.source == source]
        if not mine:
            continue
        n = {v: sum(r.verdict == v for r in mine) for v in VERDICT_STYLE}
        text = ", ".join(f"{n[v]} {w}" for v, w in (("agrees", "agree"), ("differs", "differ"),
                                                     ("inconclusive", "inconclusive"),
                                                     ("not comparable", "not comparable")) if n[v])
        parts.append(f"{source}: {text}")
    return "; ".join(parts) if parts else "no rows"


def note_refs(rows: Sequence[Row]) -> tuple[list[str], list[str]]:
    """``([ref per row], [distinct notes])``: ``"[2]"`` points at the second distinct note ("" for none)."""
    return _refs([r.note for r in rows])


def rows_rich(rows: Sequence[Row], title: str | None = None) -> Table:
    """The rows as a Rich table with coloured verdicts, source and note references (what ``lossatlas study run``
    prints; the sources and notes themselves follow it, see :func:`source_refs` and :func:`note_refs`)."""
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for name in (*HEADER, "runs / needed", "note"):
        table.add_column(name, justify="right" if name in ("expected", "measured", "margin") else "left")
    srefs, _ = source_refs(rows)
    nrefs, _ = note_refs(rows)
    for row, sref, nref in zip(rows, srefs, nrefs, strict=True):
        cells = list(row_cells(row, sref))
        style = VERDICT_STYLE.get(row.verdict, "")
        cells[-1] = f"[{style}]{cells[-1]}[/{style}]" if style else cells[-1]
        table.add_row(*cells, runs_text(row), nref)
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
    rows = [Row.from_json(r) for r in payload["rows"]]
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
           "checked in under `docs/studies/` (`make studies` refreshes them). Each study prints the expected "
           "number, with its source, beside the measured one, with a 95% interval, a margin stated before the run "
           "and a verdict; a row that does not reproduce says *differs* or *inconclusive* and a note explains.", "",
           VERDICT_RULE_MD, ""]
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
        if result is not None and result.is_file() and not _current(result):
            out += ["The checked-in full run predates the verdict rule (top of this page); it was not rerun yet.", ""]
        elif result is not None and result.is_file():
            payload, rows = read_rows(result)
            out += [f"Last full run (seed {payload['seed']}, preset {payload.get('preset', '?')}, "
                    f"{payload['elapsed_s']:.0f} s): {verdict_counts(rows)}.", "", rows_markdown(rows), ""]
        else:
            out += ["No full run is checked in yet.", ""]
        out += ["Reproduce:", "", "```", f"lossatlas study run {name} --full --out runs/studies", "```", ""]
    return "\n".join(out)


def _current(path: Path) -> bool:
    rows = json.loads(path.read_text()).get("rows", [])
    return all("source" in r for r in rows)


VERDICT_RULE_MD = """## How a verdict is reached

Every row compares a measured value with an **expected** one, and says where the expected number comes from
(**source**): `published` (a paper's number: the paper, table or equation, and `seed NNN:LINE` where the lecture
notes quote it), `derived` (our own closed form or computation: the function that computes it), `protocol` (a
choice we made, such as a run count, checked so a reader sees it held) or `sanity` (a check that cannot fail
unless the code is broken). Only `published` rows can reproduce, or fail to reproduce, a paper; the summary line
of every study counts verdicts by source.

Before any run, each claim states a **margin**: how far from the expected value a result may lie and still
reproduce it. The margins are uniform by kind of quantity (`lossatlas.studies.verdict`): 5 percentage points
for a rate over runs, 3 points for a test accuracy or error, 10% of the value (or half a unit of its last
printed digit, if larger) for a mean of a continuous quantity, float rounding for exact quantities. With
d = measured − expected and its confidence interval (for a rate whose paper states its run count, the paper's
own sampling error is included: Newcombe's hybrid score interval for two proportions):

- **agrees** when the 90% interval of d lies inside ±margin: two one-sided tests at 5% each (an equivalence
  test; a wide interval cannot agree);
- **differs** when the 95% interval of d excludes 0 (for rates: when an exact test of d = 0 rejects, Fisher's for
  two proportions or the binomial test against a fixed rate) after Holm's correction across the rows that test one
  claim together (a *family*: a table's column, a family of depths; the family's verdict is printed under the
  table), so a family of true claims is called different in at most 5% of runs however many rows it has;
- **inconclusive** otherwise: the runs cannot tell. The column *runs / needed* gives the runs counted and the
  fewest with which a result at the expected value would agree (*never* when the paper's own runs are too few
  for the margin);
- **not comparable** when a value is missing, or when too few runs converged by the study's stated criterion
  (*unconverged*): runs that did not converge are counted and reported, never counted as failures.

Exact quantities (closed forms, counts, labels) agree within the margin (float rounding at least) and differ
otherwise.

**Worked example** (XOR, ReLU, h = 4, Adam). Swirszcz et al. report 68% success over 100 runs; suppose we measure
86 of 100. d = +18 points. Newcombe's 90% interval of d is [8.3, 27.4]: not inside ±5, so the row cannot agree. The
95% interval [6.4, 29.1] excludes 0 and Fisher's exact test of d = 0 gives p = 0.0040; its family has 6 rows, and
Holm multiplies the smallest p by 6: 0.024 < 0.05, so the row **differs**. Had we measured 70 of 100, d = +2 with a
90% interval of [−8.7, 12.6]: neither inside ±5 nor excluding 0, so **inconclusive**; in fact no run count could
make this row agree, because the paper's 100 runs alone give ±7.7 points at 90%.
"""


def write_studies_doc(path: str | Path = "docs/studies.md", results_dir: str | Path | None = "docs/studies") -> Path:
    """Write :func:`studies_markdown` to ``path``."""
    path = Path(path)
    path.write_text(studies_markdown(results_dir))
    return path


__all__ = ["HEADER", "VERDICT_RULE_MD", "VERDICT_STYLE", "family_lines", "fmt", "note_refs", "published_markdown",
           "read_rows", "row_cells", "rows_markdown", "rows_rich", "runs_text", "source_refs", "studies_markdown",
           "table_markdown", "verdict_counts", "write_outputs", "write_studies_doc"]
