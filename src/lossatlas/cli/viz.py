"""``lossatlas plot``, ``report``, ``compare`` and ``export``: pictures, pages and meshes of stored results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli.common import app, out_line, user_errors, warning_line

KINDS = "contour|contourf|heatmap|surface3d"
LEVELS = "auto|linear|log|li"

StoreArg = Annotated[Path, typer.Argument(metavar="STORE", help="A .zarr store written by surface or interpolate.",
                                          show_default=False)]
LogOpt = Annotated[bool, typer.Option("--log", help="Log scale (colour bars and axes read in the metric's units).")]
VminOpt = Annotated[float | None, typer.Option("--vmin", metavar="VALUE", help="Lowest contour level / colour.")]
VmaxOpt = Annotated[float | None, typer.Option("--vmax", metavar="VALUE", help="Highest contour level / colour.")]
VlevelOpt = Annotated[float | None, typer.Option("--vlevel", metavar="STEP", help="Spacing of contour levels "
                                                                                  "(Li et al.'s arange).")]
LevelsOpt = Annotated[str, typer.Option("--levels", metavar=LEVELS,
                                        help="Contour levels: auto (log-spaced for a wide range), linear, log, or "
                                             "li (Li et al.: arange(0.1, 10, 0.5) unless --vmin/--vmax/--vlevel).")]
KindOpt = Annotated[list[str] | None, typer.Option("--kind", metavar=KINDS,
                                                   help="Figure kind; repeatable or comma-separated (default: "
                                                        "all for plot, contourf for compare).")]


@app.command()
@user_errors
def plot(store: StoreArg,
         out: Annotated[Path | None, typer.Option("--out", metavar="FOLDER", help="Where the files go (default: "
                                                                                  "beside the store).")] = None,
         log: LogOpt = False, vmin: VminOpt = None, vmax: VmaxOpt = None, vlevel: VlevelOpt = None,
         levels: LevelsOpt = "auto",
         metric: Annotated[list[str] | None, typer.Option("--metric", metavar="NAME",
                                                          help="2D variable to plot (repeatable; default: every "
                                                               "loss and map).")] = None,
         kind: KindOpt = None,
         fmt: Annotated[str, typer.Option("--format", metavar="png|pdf|svg", help="File format.")] = "png") -> None:
    """Static figures: 1D loss + accuracy on twin axes; 2D contour, filled contour, heatmap and 3D surface."""
    from lossatlas.viz.plot import Levels, parse_kinds, plot_store

    spec = Levels(vmin, vmax, vlevel, scheme=levels)
    for path in plot_store(store, out, log=log, levels=spec, metrics=metric or None,
                           kinds=parse_kinds(kind) if kind else None, fmt=fmt):
        out_line(str(path))


@app.command()
@user_errors
def report(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run directory (or one .zarr store).",
                                                   show_default=False)],
           out: Annotated[Path | None, typer.Option("--out", metavar="FILE", help="HTML file (default: "
                                                                                 "RUN_DIR/report.html).")] = None,
           title: Annotated[str | None, typer.Option("--title", metavar="TEXT", help="Page heading.")] = None) -> None:
    """One self-contained HTML report (interactive plots, provenance) of every result in a run directory."""
    from lossatlas.viz.report import build_report

    result = build_report(run_dir, out, title=title)
    for problem in result.problems:
        warning_line(problem)
    out_line(f"wrote {result.path} ({result.sections} sections, {result.figures} figures, {result.seconds:.1f} s)")


@app.command()
@user_errors
def compare(stores: Annotated[list[Path], typer.Argument(metavar="STORE...", help="Stores to show side by side.",
                                                         show_default=False)],
            out: Annotated[Path, typer.Option("--out", metavar="FILE", help="Image file (.png, .pdf or .svg); "
                                                                           "one per --kind: compare_contour.png...")]
            = Path("compare.png"),
            metric: Annotated[str, typer.Option("--metric", metavar="NAME", help="Variable to compare.")]
            = "train_loss",
            kind: KindOpt = None, log: LogOpt = False, vmin: VminOpt = None, vmax: VmaxOpt = None,
            vlevel: VlevelOpt = None, levels: LevelsOpt = "auto") -> None:
    """Several surfaces side by side on one shared colour scale with identical contour levels."""
    from lossatlas.viz.compare import compare_stores
    from lossatlas.viz.plot import Levels, PlotKind, parse_kinds

    kinds = parse_kinds(kind) if kind else [PlotKind.contourf]
    for path in compare_stores(stores, out, metric=metric, log=log, levels=Levels(vmin, vmax, vlevel, scheme=levels),
                               kind=kinds):
        out_line(str(path))


@app.command()
@user_errors
def export(store: StoreArg,
           out: Annotated[Path | None, typer.Option("--out", metavar="FILE", help="Output file (default: beside "
                                                                                 "the store).")] = None,
           fmt: Annotated[str, typer.Option("--format", metavar="vtu|obj|stl|ply|csv",
                                            help="Mesh (2D stores) or csv (1D and 2D).")] = "vtu",
           metric: Annotated[str, typer.Option("--metric", metavar="NAME", help="Height of the mesh.")]
           = "train_loss",
           z_scale: Annotated[float, typer.Option("--z-scale", metavar="FACTOR", help="Multiply heights by this.")]
           = 1.0,
           log: Annotated[bool, typer.Option("--log", help="Height = log10 of the metric.")] = False) -> None:
    """Export a surface as a mesh for ParaView / 3D printing (NaN points dropped) or as CSV."""
    from lossatlas.viz.export import export_store, parse_format

    kind = parse_format(fmt)
    target = out if out is not None else store.with_name(f"{store.name.removesuffix('.zarr')}.{kind.value}")
    out_line(str(export_store(store, target, kind, metric=metric, z_scale=z_scale, log=log)))
