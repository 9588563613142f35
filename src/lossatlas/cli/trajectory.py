"""``lossatlas trajectory``: a training run's path on its PCA plane, over the loss surface of that plane."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli.common import (
    BatchOpt,
    BNOpt,
    DataOpt,
    DeviceOpt,
    Ignore,
    LossOpt,
    MemoryOpt,
    ModelOpt,
    OutStoreOpt,
    OverwriteOpt,
    SchedulerOpt,
    SeedOpt,
    SubsetOpt,
    WorkersOpt,
    app,
    check_device,
    load_problem,
    out_console,
    progress_bar,
    summary,
    user_errors,
)
from lossatlas.engine.bn import BNPolicy
from lossatlas.engine.subset import parse_subset
from lossatlas.execute import make_executor, parse_memory


@app.command()
@user_errors
def trajectory(model: ModelOpt, data: DataOpt, out: OutStoreOpt,
               run: Annotated[Path, typer.Option("--run", metavar="RUN_DIR", help="A lossatlas train run directory "
                                                                                 "(at least 3 checkpoints).")],
               ignore: Annotated[Ignore, typer.Option(help="biasbn: leave 1-D tensors out of the PCA (Li et al.).")
                                 ] = Ignore.biasbn,
               centred: Annotated[bool, typer.Option("--centred", help="Subtract the mean difference first (Li et "
                                                                       "al.'s code); default: uncentred (their paper).")
                                  ] = False,
               x: Annotated[str | None, typer.Option("--x", metavar="MIN:MAX:N", help="Grid along the first principal "
                                                     "direction [default: the path's extent].")] = None,
               y: Annotated[str | None, typer.Option("--y", metavar="MIN:MAX:N", help="Grid along the second "
                                                     "principal direction [default: the path's extent].")] = None,
               points: Annotated[int, typer.Option("--points", metavar="N", help="Points per axis of the default "
                                                                                 "grid.")] = 25,
               bn: BNOpt = BNPolicy.eval, loss: LossOpt = "cross_entropy", batch_size: BatchOpt = 1000,
               seed: SeedOpt = 0, overwrite: OverwriteOpt = False, device: DeviceOpt = "cpu",
               workers: WorkersOpt = None, scheduler: SchedulerOpt = None, subset: SubsetOpt = None,
               memory: MemoryOpt = "1GiB") -> None:
    """PCA of a training run's checkpoints (Li et al. 2018): the surface on the plane of θᵢ − θ_final, the path."""
    from lossatlas.engine import EvalSpec
    from lossatlas.errors import UserInputError
    from lossatlas.grid import Axis
    from lossatlas.paths.trajectory import summary_lines
    from lossatlas.paths.trajectory import trajectory as compute
    from lossatlas.viz.plot import PlotKind, figure_2d, plt

    if (x is None) != (y is None):
        raise UserInputError("pass both --x and --y, or neither for the path's extent")
    if points < 2:
        raise UserInputError(f"--points must be at least 2, got {points}")
    espec = EvalSpec(loss=loss, batch_size=batch_size, bn=bn, subset=parse_subset(subset), subset_seed=seed,
                     memory_bytes=parse_memory(memory))
    x_axis, y_axis = (Axis.parse(x, "--x"), Axis.parse(y, "--y")) if x is not None and y is not None else (None, None)
    with make_executor(workers, scheduler) as executor:
        dataset, net, provenance = load_problem(model, data, None)
        provenance["run"] = str(run)
        with progress_bar("trajectory surface") as update:
            ds = compute(net, dataset, run, out=out, ignore=ignore, centred=centred, x=x_axis, y=y_axis,
                         points=points, seed=seed, eval_spec=espec, overwrite=overwrite, provenance=provenance,
                         executor=executor, progress=update, device=check_device(device))
    summary(ds, out)
    for line in summary_lines(ds):
        out_console.print(line)
    ratio = ds.attrs["pca_explained_variance"]
    fig = figure_2d(ds, "train_loss", PlotKind.contour,
                    title=f"train loss on the PCA plane of {run.name} (PC1 {ratio[0]:.1%}, PC2 {ratio[1]:.1%})")
    fig.axes[0].set(xlabel="1st principal direction", ylabel="2nd principal direction")
    png = out.parent / f"{out.name.removesuffix('.zarr')}_train_loss_contour.png"
    fig.savefig(png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    out_console.print(f"contour with the path: {png}")
