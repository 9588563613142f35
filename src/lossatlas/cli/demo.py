"""``lossatlas demo`` and ``lossatlas version``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas import __version__
from lossatlas.cli.common import (
    app,
    console,
    out_console,
    progress_bar,
    user_errors,
)


@app.command()
@user_errors
def demo(out: Annotated[Path, typer.Option("--out", help="Where the demo writes everything.")] = Path("runs/demo"),
         epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
         grid: Annotated[int, typer.Option(help="Points per side of the 2D surface.")] = 31) -> None:
    """Train an MLP on MNIST-1D, compute its 2D surface and init→solution interpolation, plot, summarise."""
    from lossatlas.demo import run_demo

    with progress_bar("demo") as update:
        summary = run_demo(out, epochs=epochs, grid=grid, progress=update, log=console.print)
    out_console.print(summary)


@app.command()
def version() -> None:
    """Print the lossatlas version."""
    out_console.print(__version__)
