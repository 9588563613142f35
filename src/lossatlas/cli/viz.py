"""``lossatlas plot``, ``report``, ``compare`` and ``export``: pictures, pages and meshes of stored results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli.common import (
    app,
    console,
    out_console,
    user_errors,
)
from lossatlas.errors import UserInputError


@app.command()
@user_errors
def plot(store: Annotated[Path, typer.Argument(help="A store written by surface or interpolate.")],
         out: Annotated[Path | None, typer.Option("--out", help="Folder for the PNGs (default: beside it).")] = None,
         log: Annotated[bool, typer.Option("--log", help="Log-scale loss.")] = False,
         vmin: Annotated[float | None, typer.Option(help="Lowest contour level.")] = None,
         vmax: Annotated[float | None, typer.Option(help="Highest contour level.")] = None,
         vlevel: Annotated[float | None, typer.Option(help="Spacing of contour levels.")] = None,
         metric: Annotated[list[str] | None, typer.Option("--metric", help="2D variable to plot (repeatable; "
                                                          "default: every loss and map).")] = None,
         kind: Annotated[list[str] | None, typer.Option("--kind", help="contour, contourf, heatmap or "
                                                        "surface3d (repeatable; default: all).")] = None) -> None:
    """Static PNGs: 1D loss + accuracy on twin axes; 2D contour, filled contour, heatmap and 3D surface."""
    from lossatlas.viz.plot import Levels, parse_kinds, plot_store

    if vlevel is not None and vlevel <= 0:
        raise UserInputError(f"--vlevel must be positive, got {vlevel}")
    for path in plot_store(store, out, log=log, levels=Levels(vmin, vmax, vlevel), metrics=metric or None,
                           kinds=parse_kinds(kind) if kind else None):
        out_console.print(str(path), soft_wrap=True, highlight=False)


@app.command()
@user_errors
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory (or one .zarr store).")],
           out: Annotated[Path | None, typer.Option("--out", help="HTML file (default: RUN_DIR/report.html).")]
           = None,
           title: Annotated[str | None, typer.Option("--title", help="Page heading.")] = None) -> None:
    """One self-contained HTML report (interactive plots, provenance) of every result in a run directory."""
    from lossatlas.viz.report import build_report

    result = build_report(run_dir, out, title=title)
    for problem in result.problems:
        console.print(f"[yellow]warning:[/yellow] {problem}", highlight=False, soft_wrap=True, markup=False)
    out_console.print(f"wrote {result.path} ({result.sections} sections, {result.figures} figures, "
                      f"{result.seconds:.1f} s)", highlight=False, soft_wrap=True, markup=False)


@app.command()
@user_errors
def compare(stores: Annotated[list[Path], typer.Argument(help="Stores to show side by side.")],
            out: Annotated[Path, typer.Option("--out", help="Image file (.png, .pdf or .svg).")]
            = Path("compare.png"),
            metric: Annotated[str, typer.Option("--metric", help="Variable to compare.")] = "train_loss",
            kind: Annotated[str, typer.Option("--kind", help="contour, contourf, heatmap or surface3d.")]
            = "contourf",
            log: Annotated[bool, typer.Option("--log", help="Log-scale values.")] = False,
            vmin: Annotated[float | None, typer.Option(help="Lowest level of the shared scale.")] = None,
            vmax: Annotated[float | None, typer.Option(help="Highest level of the shared scale.")] = None,
            vlevel: Annotated[float | None, typer.Option(help="Spacing of the shared contour levels.")] = None
            ) -> None:
    """Several surfaces side by side on one shared colour scale with identical contour levels."""
    from lossatlas.viz.compare import compare_stores
    from lossatlas.viz.plot import Levels, parse_kinds

    path = compare_stores(stores, out, metric=metric, log=log, levels=Levels(vmin, vmax, vlevel),
                          kind=parse_kinds([kind])[0])
    out_console.print(str(path), soft_wrap=True, highlight=False)


@app.command()
@user_errors
def export(store: Annotated[Path, typer.Argument(help="A store written by surface or interpolate.")],
           out: Annotated[Path | None, typer.Option("--out", help="Output file (default: beside the store).")]
           = None,
           fmt: Annotated[str, typer.Option("--format", help="vtu, obj, stl, ply (2D meshes) or csv.")] = "vtu",
           metric: Annotated[str, typer.Option("--metric", help="Height of the mesh.")] = "train_loss",
           z_scale: Annotated[float, typer.Option("--z-scale", help="Multiply heights by this.")] = 1.0,
           log: Annotated[bool, typer.Option("--log", help="Height = log10 of the metric.")] = False) -> None:
    """Export a surface as a mesh for ParaView / 3D printing (NaN points dropped) or as CSV."""
    from lossatlas.viz.export import export_store, parse_format

    kind = parse_format(fmt)
    target = out if out is not None else store.with_name(f"{store.name.removesuffix('.zarr')}.{kind.value}")
    path = export_store(store, target, kind, metric=metric, z_scale=z_scale, log=log)
    out_console.print(str(path), soft_wrap=True, highlight=False)
