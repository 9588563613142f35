"""``lossatlas study list | show NAME | run NAME``: the classic results of the notes as checked experiments
(library: :mod:`lossatlas.studies`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli.common import OverwriteOpt, SeedOpt, WorkersOpt, app, out_console, progress_bar, user_errors
from lossatlas.errors import UserInputError

study_app = typer.Typer(no_args_is_help=True, help="Rerun the classic studies of the lecture notes: published "
                                                   "beside measured, with intervals and verdicts.")
app.add_typer(study_app, name="study")

INTERRUPTED = ("finished cells are saved; run the same command again to resume "
               "(--overwrite would discard them)")


@study_app.command("list")
@user_errors
def list_studies() -> None:
    """The registered studies, with the paper and the claim each checks."""
    from rich.table import Table

    from lossatlas.studies import get_study, study_names

    table = Table(show_lines=False)
    for column in ("study", "paper", "claim"):
        table.add_column(column, overflow="fold")
    for name in study_names():
        info = get_study(name)
        table.add_row(name, info.paper, info.claim)
    out_console.print(table)


@study_app.command("show")
@user_errors
def show(name: Annotated[str, typer.Argument(metavar="NAME", help="A study name (see `lossatlas study list`).")],
         results: Annotated[Path | None, typer.Option("--results", metavar="FILE",
                                                      help="A results.json whose rows give the runs each row needs "
                                                           "(default: docs/studies/NAME.json when present).")]
         = None) -> None:
    """A study's description, parameters with their quick and full presets, the published table, and the runs each
    row needs to be decided (from the checked-in full run, docs/studies/NAME.json, or --results)."""
    from rich.table import Table

    from lossatlas.studies import get_study

    info = get_study(name)
    out_console.print(f"[bold]{info.name}[/bold] — {info.paper}", highlight=False)
    out_console.print(info.claim, highlight=False)
    out_console.print((info.cls.__doc__ or "").strip(), highlight=False)
    params = Table(title="parameters (--set KEY=VALUE; lists as 6,8,10)")
    for column in ("key", "type", "quick", "full"):
        params.add_column(column)
    for field, kind, quick, full in info.fields():
        params.add_row(field, kind, *(",".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in (quick, full)))
    out_console.print(params)
    published = info.cls.PUBLISHED
    if published is not None:
        table = Table(title=f"published: {published.source}")
        for column in published.columns:
            table.add_column(str(column))
        for row in published.rows:
            table.add_row(*("—" if v is None else str(v) for v in row))
        out_console.print(table)
        if published.note:
            out_console.print(published.note, highlight=False)
    _runs_needed(name, results)


def _runs_needed(name: str, results: Path | None) -> None:
    """Per row of a full run: source, margin, runs counted and the fewest runs that could decide it."""
    from rich.table import Table

    from lossatlas.studies.tables import fmt, fmt_key, read_rows, runs_text

    if results is None:
        here = Path("docs/studies") / f"{name}.json"
        repo = Path(__file__).resolve().parents[3] / "docs" / "studies" / f"{name}.json"
        results = here if here.is_file() else repo if repo.is_file() else None
        if results is None:
            out_console.print("no full run found (docs/studies/NAME.json); run `lossatlas study run NAME --full` and "
                              "pass --results DIR/NAME/results.json for the runs each row needs", highlight=False)
            return
        given = False
    elif not results.is_file():
        raise UserInputError(f"--results: no such file '{results}'; give a study's results.json")
    else:
        given = True
    try:
        payload, rows = read_rows(results)
    except (KeyError, ValueError, TypeError):
        if not given:
            out_console.print(f"the full run in {results} predates the verdict rule (no source per row); rerun it "
                              "for the runs each row needs", highlight=False)
            return
        raise UserInputError(f"--results: '{results}' is not a results.json of the current verdict rule; rerun "
                             "the study") from None
    table = Table(title=f"runs to decide each row (from {results}, {payload.get('preset', '?')} preset)")
    for column in ("quantity", "key", "source", "margin", "runs / needed", "verdict"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.quantity, fmt_key(dict(row.key)), row.source, fmt(row.margin), runs_text(row), row.verdict)
    out_console.print(table)


@study_app.command("run")
@user_errors(interrupted=INTERRUPTED)
def run(name: Annotated[str, typer.Argument(metavar="NAME", help="A study name (see `lossatlas study list`).")],
        out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Output directory; writes DIR/NAME/.")],
        quick: Annotated[bool, typer.Option("--quick", help="The quick preset (default): about a minute.")] = False,
        full: Annotated[bool, typer.Option("--full", help="The full preset: every published row.")] = False,
        set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE",
                                                       help="Override a parameter (repeatable; lists as ks=6,8,10).")]
        = None,
        seed: SeedOpt = 0, workers: WorkersOpt = None, overwrite: OverwriteOpt = False) -> None:
    """Run a study: per-run data, published beside measured with 95% intervals and verdicts, figures.

    Writes DIR/NAME/results.zarr, results.json, table.md and PNG figures; an interrupted run resumes from
    its finished cells when the same command is run again.
    """
    from lossatlas.studies import run_study
    from lossatlas.studies.tables import family_lines, note_refs, rows_rich, source_refs, verdict_counts

    if quick and full:
        raise UserInputError("give either --quick or --full, not both")
    with progress_bar(f"study {name}") as update:
        result = run_study(name, "full" if full else "quick", set_ or [], seed=seed, out_dir=out, workers=workers,
                           progress=update, overwrite=overwrite)
    out_console.print(rows_rich(result.rows, title=f"{name} (seed {seed}, {result.preset} preset)"))
    for i, source in enumerate(source_refs(result.rows)[1], 1):
        out_console.print(f"[S{i}] {source}", highlight=False, markup=False)
    for i, note in enumerate(note_refs(result.rows)[1], 1):
        out_console.print(f"[{i}] {note}", highlight=False, markup=False)
    for line in family_lines(result.rows):
        out_console.print(f"family {line}", highlight=False, markup=False)
    out_console.print(f"{verdict_counts(result.rows)}; {result.computed} cells computed, {result.reused} reused; "
                      f"wrote {result.folder} (results.json, table.md, results.zarr"
                      + "".join(f", {p.name}" for p in result.figures) + ")", highlight=False)
