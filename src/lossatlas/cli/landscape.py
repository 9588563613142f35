"""``lossatlas surface`` and ``lossatlas interpolate``: loss surfaces and straight lines between models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lossatlas.cli.common import (
    BatchOpt,
    BNOpt,
    CheckpointOpt,
    DataOpt,
    DeviceOpt,
    DirectionKind,
    Ignore,
    LossOpt,
    MemoryOpt,
    ModelOpt,
    Norm,
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
from lossatlas.directions import DirectionSpec
from lossatlas.engine.bn import BNPolicy
from lossatlas.engine.subset import parse_subset
from lossatlas.errors import UserInputError
from lossatlas.execute import make_executor, parse_memory


@app.command()
@user_errors
def surface(model: ModelOpt, data: DataOpt, out: OutStoreOpt,
            x: Annotated[str | None, typer.Option("--x", metavar="MIN:MAX:N", help="Grid along the first direction "
                                                  "(default -1:1:51; plane/pca: the models' extent).")] = None,
            y: Annotated[str | None, typer.Option("--y", metavar="MIN:MAX:N", help="Grid along a second direction "
                                                                                   "(2D).")] = None,
            checkpoint: CheckpointOpt = None,
            norm: Annotated[Norm, typer.Option(help="Direction normalisation.")] = Norm.filter,
            ignore: Annotated[Ignore, typer.Option(help="biasbn: zero direction for 1-D tensors.")] = Ignore.biasbn,
            bn: BNOpt = BNPolicy.eval, loss: LossOpt = "cross_entropy", batch_size: BatchOpt = 1000,
            seed: SeedOpt = 0, overwrite: OverwriteOpt = False, device: DeviceOpt = "cpu",
            workers: WorkersOpt = None, scheduler: SchedulerOpt = None, subset: SubsetOpt = None,
            memory: MemoryOpt = "1GiB",
            directions: Annotated[str, typer.Option(
                "--directions", metavar="SOURCE",
                help="random (filter-normalised), hessian (top eigenvectors), plane:A,B,C (through three "
                     "checkpoints, centred at A), pca:RUN_DIR (a run's PCA plane; uses --ignore) or STORE.zarr "
                     "(reuse a stored run's directions).")
            ] = DirectionKind.random.value,
            hessian: Annotated[bool, typer.Option(
                "--hessian", help="Also store λmax, λmin and |λmin/λmax| at every point (convexity map).")
            ] = False) -> None:
    """A 1D or 2D loss surface around the model's weights along filter-normalised random directions."""
    from lossatlas.engine import EvalSpec
    from lossatlas.grid import Axis
    from lossatlas.landscape import surface as compute

    x_axis = Axis.parse(x, "--x") if x is not None else None
    y_axis = Axis.parse(y, "--y") if y is not None else None
    dspec = DirectionSpec(norm=norm, ignore=ignore, seed=seed)
    chosen = surface_directions(directions, dspec, checkpoint)
    espec = EvalSpec(loss=loss, batch_size=batch_size, bn=bn, subset=parse_subset(subset), subset_seed=seed,
                     memory_bytes=parse_memory(memory))
    with make_executor(workers, scheduler) as executor:  # first: a wrong --scheduler fails fast
        from_models = directions.startswith(("plane:", "pca:"))  # centred at a checkpoint of their own
        dataset, net, provenance = load_problem(model, data, checkpoint, warn_untrained=not from_models)
        with progress_bar("surface") as update:
            ds = compute(net, dataset, x=x_axis, y=y_axis, eval_spec=espec, out=out,
                         directions=chosen,
                         overwrite=overwrite, provenance=provenance, progress=update, device=check_device(device),
                         executor=executor, hessian=hessian)
    summary(ds, out)
    for line in anchor_lines(ds):
        out_console.print(line)


def anchor_lines(ds: Any) -> list[str]:
    """One line per model a plane passes through (its coordinates, its loss as is / on the plane), or a PCA plane's
    numbers (explained variance, |cos| of random directions, the path's losses)."""
    if "path_x" in ds:
        from lossatlas.paths.trajectory import summary_lines

        return summary_lines(ds)
    if "anchor_x" not in ds:
        return []
    names = ds.attrs.get("anchor_names", [])
    return [f"{name} at ({float(ds.anchor_x[i]):.6g}, {float(ds.anchor_y[i]):.6g}): train loss "
            f"{float(ds.anchor_train_loss[i]):.6g} (on the plane {float(ds.anchor_plane_train_loss[i]):.6g})"
            for i, name in enumerate(names)]


def surface_directions(text: str, dspec: Any, checkpoint: Path | None) -> Any:
    """``--directions`` → what :func:`lossatlas.landscape.surface` takes; one-line errors for bad input."""
    from lossatlas.directions import PlaneSpec
    from lossatlas.paths.pca import PCASpec

    if text == DirectionKind.random.value:
        return dspec
    if text == DirectionKind.hessian.value:
        return text
    if text.startswith(("plane:", "pca:")):
        if checkpoint is not None:
            raise UserInputError("--checkpoint does not apply to --directions plane:/pca: (the surface is centred at "
                                 "model A / the run's last checkpoint); drop it")
        return PlaneSpec.parse(text) if text.startswith("plane:") else PCASpec.parse(text, ignore=dspec.ignore,
                                                                                      seed=dspec.seed)
    from lossatlas.landscape import is_store_path

    if is_store_path(text):  # a stored run: its directions, reused
        return Path(text)
    raise UserInputError(f"--directions must be random, hessian, plane:A,B,C, pca:RUN_DIR or a stored run "
                         f"(STORE.zarr), got '{text}'")


@app.command()
@user_errors
def interpolate(model: ModelOpt, data: DataOpt, out: OutStoreOpt,
                checkpoint: Annotated[Path, typer.Option("--checkpoint", metavar="FILE", help="Model A (α = 0).")],
                checkpoint2: Annotated[Path, typer.Option("--checkpoint2", metavar="FILE", help="Model B (α = 1).")],
                x: Annotated[str, typer.Option("--x", metavar="MIN:MAX:N", help="Values of α.")] = "-0.5:1.5:41",
                bn: BNOpt = BNPolicy.eval, loss: LossOpt = "cross_entropy", batch_size: BatchOpt = 1000,
                overwrite: OverwriteOpt = False, device: DeviceOpt = "cpu", workers: WorkersOpt = None,
                scheduler: SchedulerOpt = None, subset: SubsetOpt = None, memory: MemoryOpt = "1GiB") -> None:
    """Loss along the straight line (1 − α) θ_A + α θ_B between two checkpoints (Goodfellow et al.)."""
    from lossatlas.engine import EvalSpec
    from lossatlas.grid import Axis
    from lossatlas.landscape import interpolate as compute
    from lossatlas.params import file_sha256, load_checkpoint

    axis = Axis.parse(x, "--x")
    espec = EvalSpec(loss=loss, batch_size=batch_size, bn=bn, subset=parse_subset(subset),
                     memory_bytes=parse_memory(memory))
    dataset, model_a, provenance = load_problem(model, data, checkpoint)
    model_b = load_checkpoint(model_a, checkpoint2)
    provenance.update(checkpoint2=str(checkpoint2), checkpoint2_sha256=file_sha256(checkpoint2))
    with make_executor(workers, scheduler) as executor, progress_bar("interpolation") as update:
        ds = compute(model_a, model_b, dataset, x=axis, eval_spec=espec, out=out, overwrite=overwrite,
                     provenance=provenance, progress=update, device=check_device(device), executor=executor)
    summary(ds, out)
