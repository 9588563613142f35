"""The ``lossatlas`` command line: thin Typer commands over the library, Rich progress and errors.

Errors the user can fix (:class:`lossatlas.errors.UserInputError`) print one red line and exit 2.
Ctrl-C keeps every finished point; running the same command again resumes.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lossatlas import __version__
from lossatlas.directions import Ignore, Norm
from lossatlas.errors import UserInputError
from lossatlas.evaluate import BNPolicy
from lossatlas.execute import make_executor, parse_memory
from lossatlas.subset import parse_subset

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="lossatlas: loss landscapes of neural networks — surfaces, curvature, paths, studies.")
console = Console(stderr=True)
out_console = Console()

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn user errors into one red line + exit 2, and Ctrl-C into a resumable stop (exit 130)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserInputError as exc:
            console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted:[/yellow] finished points are saved; run the same command "
                          "again to resume", highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[..., None]]:
    """A Rich progress bar, shown from the first ``update(done, total)`` on (so early errors stay one line)."""
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
    task = bar.add_task(description, total=None)
    started = False

    def update(done: int, total: int, description: str | None = None) -> None:
        nonlocal started
        if not started:
            bar.start()
            started = True
        if description:
            bar.update(task, completed=done, total=total, description=description)
        else:
            bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if started:
            bar.stop()


# -- shared option types --------------------------------------------------------------------------
ModelOpt = Annotated[str, typer.Option("--model", help="zoo:NAME[:k=v,...], file.py:function or module:function.")]
DataOpt = Annotated[str, typer.Option("--data", help="mnist1d, digits, teacher, xor, jellyfish, spirals, "
                                                     "file.npz, file.py:function or module:function.")]
CheckpointOpt = Annotated[Path | None, typer.Option("--checkpoint", help="Weights (.safetensors or .pt).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every random choice; stored with the result.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Samples per forward pass.")]
LossOpt = Annotated[str, typer.Option("--loss", help="cross_entropy, mse, or module:function (per-sample).")]
BNOpt = Annotated[BNPolicy, typer.Option("--bn", help="BatchNorm statistics: eval, recompute or states.")]
OutStoreOpt = Annotated[Path, typer.Option("--out", help="Result store (a .zarr directory).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing store of another run.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="Run on a local Dask cluster of N worker "
                                                                  "processes (one thread each).")]
SchedulerOpt = Annotated[str | None, typer.Option("--scheduler", help="Run on an existing Dask cluster: its "
                                                                      "scheduler address, tcp://HOST:8786.")]
SubsetOpt = Annotated[str | None, typer.Option("--subset", help="Evaluate on one fixed stratified subset: "
                                                                "FRACTION (0.1) or COUNT (500); stores *_stderr.")]
MemoryOpt = Annotated[str, typer.Option("--memory", help="Memory for one batched pass (e.g. 2GB); decides how "
                                                         "many points share a pass.")]


class DirectionKind(str, Enum):  # noqa: UP042 - the project's option style (Typer choices)
    """Where the directions of a surface come from."""

    random = "random"
    """Filter-normalised Gaussian directions (Li et al. 2018), drawn from --seed."""
    hessian = "hessian"
    """The top Hessian eigenvectors at the model's weights (unit norm)."""


class Precision(str, Enum):  # noqa: UP042 - the project's option style (Typer choices)
    """Arithmetic of Hessian-vector products."""

    float32 = "float32"
    float64 = "float64"


def _device(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--device {device} asked for, but no CUDA device is available; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise UserInputError(f"--device must be cpu, cuda or cuda:N, got '{device}'")
    return device


def load_problem(model_spec: str, data_spec: str, checkpoint: Path | None, model_seed: int = 0
                 ) -> tuple[Any, Any, dict[str, Any]]:
    """Dataset, model (checkpoint loaded) and provenance strings for a command."""
    from lossatlas.data import load_data
    from lossatlas.models import build_model
    from lossatlas.params import file_sha256, load_checkpoint

    data = load_data(data_spec)
    model = build_model(model_spec, input_shape=data.input_shape, output_dim=data.output_dim, seed=model_seed)
    provenance: dict[str, Any] = {"model": model_spec, "data": data_spec, "model_seed": model_seed}
    if checkpoint is not None:
        model = load_checkpoint(model, checkpoint)
        provenance.update(checkpoint=str(checkpoint), checkpoint_sha256=file_sha256(checkpoint))
    return data, model, provenance


@app.command()
@user_errors
def train(model: ModelOpt, data: DataOpt,
          out: Annotated[Path, typer.Option("--out", help="Run directory (checkpoints, metrics.csv).")],
          epochs: Annotated[int, typer.Option(help="Passes over the training split.")] = 10,
          batch_size: BatchOpt = 128,
          lr: Annotated[float, typer.Option(help="Learning rate.")] = 0.05,
          optimizer: Annotated[str, typer.Option(help="sgd or adam.")] = "sgd",
          momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
          weight_decay: Annotated[float, typer.Option(help="L2 weight decay.")] = 0.0,
          seed: SeedOpt = 0,
          save_every: Annotated[int, typer.Option(help="Write a checkpoint every K epochs.")] = 1,
          loss: LossOpt = "cross_entropy") -> None:
    """Train a model; writes checkpoints (the initial point included) and metrics.csv to --out."""
    from lossatlas.train import TrainSpec, list_checkpoints
    from lossatlas.train import train as run_train

    spec = TrainSpec(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,  # type: ignore[arg-type]
                     momentum=momentum, weight_decay=weight_decay, seed=seed, save_every=save_every, loss=loss)
    dataset, net, provenance = load_problem(model, data, None, model_seed=seed)
    with progress_bar("training") as update:
        update(0, epochs)
        run_train(net, dataset, spec, out, provenance=provenance, progress=lambda e, n, _m: update(e, n))
    ckpts = list_checkpoints(out)
    out_console.print(f"wrote {len(ckpts)} checkpoints to {out / 'checkpoints'}; last: {ckpts[-1]}")


@app.command()
@user_errors
def surface(model: ModelOpt, data: DataOpt, out: OutStoreOpt,
            x: Annotated[str, typer.Option("--x", help="MIN:MAX:N along the first direction.")] = "-1:1:51",
            y: Annotated[str | None, typer.Option("--y", help="MIN:MAX:N along a second direction (2D).")] = None,
            checkpoint: CheckpointOpt = None,
            norm: Annotated[Norm, typer.Option(help="Direction normalisation.")] = Norm.filter,
            ignore: Annotated[Ignore, typer.Option(help="biasbn: zero direction for 1-D tensors.")] = Ignore.biasbn,
            bn: BNOpt = BNPolicy.eval, loss: LossOpt = "cross_entropy", batch_size: BatchOpt = 1000,
            seed: SeedOpt = 0, overwrite: OverwriteOpt = False, device: DeviceOpt = "cpu",
            workers: WorkersOpt = None, scheduler: SchedulerOpt = None, subset: SubsetOpt = None,
            memory: MemoryOpt = "1GiB",
            directions: Annotated[DirectionKind, typer.Option(
                "--directions", help="random (filter-normalised) or hessian (top Hessian eigenvectors).")
            ] = DirectionKind.random,
            hessian: Annotated[bool, typer.Option(
                "--hessian", help="Also store λmax, λmin and |λmin/λmax| at every point (convexity map).")
            ] = False) -> None:
    """A 1D or 2D loss surface around the model's weights along filter-normalised random directions."""
    from lossatlas.directions import DirectionSpec
    from lossatlas.evaluate import EvalSpec
    from lossatlas.surface import Axis
    from lossatlas.surface import surface as compute

    x_axis, y_axis = Axis.parse(x, "--x"), (Axis.parse(y, "--y") if y is not None else None)
    dspec = DirectionSpec(norm=norm, ignore=ignore, seed=seed)
    espec = EvalSpec(loss=loss, batch_size=batch_size, bn=bn, subset=parse_subset(subset), subset_seed=seed,
                     memory_bytes=parse_memory(memory))
    with make_executor(workers, scheduler) as executor:  # first: a wrong --scheduler fails fast
        dataset, net, provenance = load_problem(model, data, checkpoint)
        with progress_bar("surface") as update:
            ds = compute(net, dataset, x=x_axis, y=y_axis, eval_spec=espec, out=out,
                         directions=dspec if directions is DirectionKind.random else directions.value,
                         overwrite=overwrite, provenance=provenance, progress=update, device=_device(device),
                         executor=executor, hessian=hessian)
    _summary(ds, out)


@app.command()
@user_errors
def interpolate(model: ModelOpt, data: DataOpt, out: OutStoreOpt,
                checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Model A (α = 0).")],
                checkpoint2: Annotated[Path, typer.Option("--checkpoint2", help="Model B (α = 1).")],
                x: Annotated[str, typer.Option("--x", help="MIN:MAX:N values of α.")] = "-0.5:1.5:41",
                bn: BNOpt = BNPolicy.eval, loss: LossOpt = "cross_entropy", batch_size: BatchOpt = 1000,
                overwrite: OverwriteOpt = False, device: DeviceOpt = "cpu", workers: WorkersOpt = None,
                scheduler: SchedulerOpt = None, subset: SubsetOpt = None, memory: MemoryOpt = "1GiB") -> None:
    """Loss along the straight line (1 − α) θ_A + α θ_B between two checkpoints (Goodfellow et al.)."""
    from lossatlas.evaluate import EvalSpec
    from lossatlas.params import file_sha256, load_checkpoint
    from lossatlas.surface import Axis
    from lossatlas.surface import interpolate as compute

    axis = Axis.parse(x, "--x")
    espec = EvalSpec(loss=loss, batch_size=batch_size, bn=bn, subset=parse_subset(subset),
                     memory_bytes=parse_memory(memory))
    dataset, model_a, provenance = load_problem(model, data, checkpoint)
    model_b = load_checkpoint(model_a, checkpoint2)
    provenance.update(checkpoint2=str(checkpoint2), checkpoint2_sha256=file_sha256(checkpoint2))
    with make_executor(workers, scheduler) as executor, progress_bar("interpolation") as update:
        ds = compute(model_a, model_b, dataset, x=axis, eval_spec=espec, out=out, overwrite=overwrite,
                     provenance=provenance, progress=update, device=_device(device), executor=executor)
    _summary(ds, out)


@app.command()
@user_errors
def hessian(model: ModelOpt, data: DataOpt,
            out: Annotated[Path, typer.Option("--out", help="Result: a .zarr store, or a .json file.")],
            checkpoint: CheckpointOpt = None,
            top: Annotated[int, typer.Option(help="Largest eigenpairs to certify (0: none).")] = 5,
            bottom: Annotated[int, typer.Option(help="Smallest (most negative) eigenpairs.")] = 0,
            trace: Annotated[bool, typer.Option("--trace", help="tr(H) by Hutch++ with its standard error.")] = False,
            density: Annotated[bool, typer.Option("--density", help="Spectral density (SLQ) with a band.")] = False,
            critical: Annotated[bool, typer.Option("--critical", help="Minimum/maximum/saddle/degenerate + index.")
                                ] = False,
            tol: Annotated[float | None, typer.Option(help="Residual tolerance ‖Hv − λv‖ ≤ tol·max(|λ|, ε); "
                                                           "default 1e-6 (float64), 1e-3 (float32).")] = None,
            dtype: Annotated[Precision, typer.Option(help="Arithmetic of the products.")] = Precision.float64,
            params: Annotated[str | None, typer.Option(help="Regex selecting parameter names.")] = None,
            split: Annotated[str, typer.Option(help="train or test.")] = "train",
            max_hvps: Annotated[int, typer.Option(help="Product budget of each Lanczos run.")] = 1000,
            probes: Annotated[int, typer.Option(help="Density probes.")] = 5,
            bins: Annotated[int, typer.Option(help="Density grid points.")] = 100,
            bn: BNOpt = BNPolicy.eval, loss: LossOpt = "cross_entropy", batch_size: BatchOpt = 1000,
            seed: SeedOpt = 0, overwrite: OverwriteOpt = False, device: DeviceOpt = "cpu") -> None:
    """Certified Hessian eigenvalues, trace, spectral density and critical-point type at the model's weights."""
    from lossatlas.curvature.analysis import HessianSpec, hessian_analysis, save_hessian
    from lossatlas.evaluate import EvalSpec
    from lossatlas.plot import plot_spectrum

    spec = HessianSpec(top=top, bottom=bottom, trace=trace, density=density, critical=critical, tol=tol,
                       dtype=dtype.value, params=params, split=split, max_hvps=max_hvps, probes=probes,
                       bins=bins, seed=seed)
    espec = EvalSpec(loss=loss, batch_size=batch_size, bn=bn, splits=(split,))
    if out.exists() and not overwrite:
        raise UserInputError(f"'{out}' already exists; choose another --out or pass --overwrite")
    dataset, net, provenance = load_problem(model, data, checkpoint)
    with progress_bar("hessian") as update:
        ds, vectors = hessian_analysis(net, dataset, spec, espec, device=_device(device), provenance=provenance,
                                       progress=lambda phase, done, total: update(done, total, phase))
    save_hessian(ds, out, vectors, overwrite=overwrite)
    png = plot_spectrum(ds, out.with_name(out.name.removesuffix(".json").removesuffix(".zarr") + "_spectrum.png"))
    a = ds.attrs
    for end in ("top", "bottom"):
        if f"{end}_eigenvalues" in ds:
            pairs = ", ".join(f"{v:.6g} (res {r:.1e})" for v, r in zip(ds[f"{end}_eigenvalues"].values,
                                                                       ds[f"{end}_residuals"].values, strict=True))
            out_console.print(f"{end} eigenvalues: {pairs}", highlight=False, soft_wrap=True)
            if not bool(ds[f"{end}_converged"].values.all()):
                console.print(f"[yellow]warning:[/yellow] some {end} eigenpairs missed the tolerance within "
                              f"--max-hvps {max_hvps}; raise it or loosen --tol", highlight=False, soft_wrap=True)
    if "trace" in a:
        out_console.print(f"trace: {a['trace']:.6g} ± {a['trace_stderr']:.2g} ({a['trace_method']}, "
                          f"{a['trace_hvps']} HVPs)", highlight=False, soft_wrap=True)
    if "negative_mass" in a:
        out_console.print(f"density: {bins} bins, negative-eigenvalue mass {a['negative_mass']:.4g}",
                          highlight=False, soft_wrap=True)
    if "critical_kind" in a:
        out_console.print(f"critical point: {a['critical_kind']} (‖g‖ = {a['grad_norm']:.3g}, index "
                          f"{a['index']:.4g} {a['index_method']})", highlight=False, soft_wrap=True)
    out_console.print(f"wrote {out} ({a['n_params']} parameters, {a['hvp_count']} HVPs); spectrum: {png}",
                      highlight=False, soft_wrap=True)


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
    from lossatlas.plot import Levels, parse_kinds, plot_store

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
    from lossatlas.report import build_report

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
    from lossatlas.compare import compare_stores
    from lossatlas.plot import Levels, parse_kinds

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
    from lossatlas.export import export_store, parse_format

    kind = parse_format(fmt)
    target = out if out is not None else store.with_name(f"{store.name.removesuffix('.zarr')}.{kind.value}")
    path = export_store(store, target, kind, metric=metric, z_scale=z_scale, log=log)
    out_console.print(str(path), soft_wrap=True, highlight=False)


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


def _summary(ds: Any, out: Path) -> None:
    bad = int(ds.attrs.get("nonfinite_points", 0))
    dims = " × ".join(str(ds.sizes[d]) for d in ds["train_loss"].dims)
    loss = ds["train_loss"].values
    finite = loss[~(loss != loss)]
    low = f"{float(finite.min()):.6g}" if finite.size else "n/a"
    out_console.print(f"wrote {out} ({dims} points; min train loss {low}; non-finite points: {bad})")


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Usage-error classes of click and of the click copy that newer Typer releases vendor."""
    import click

    types: list[type[BaseException]] = [click.UsageError]
    try:
        from typer._click import exceptions as vendored  # Typer >= 0.2x ships its own click

        types.append(vendored.UsageError)
    except ImportError:
        pass
    return tuple(types)


def main() -> None:
    """Console-script entry point: usage errors, like user errors, are one red line and exit 2."""
    usage_errors = _usage_error_types()
    try:
        code = app(standalone_mode=False)
    except usage_errors as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # Typer has printed the help already
            sys.exit(0)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)  # type: ignore[union-attr]
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        console.print(f"[bold red]error:[/bold red] {message}{hint}", highlight=False, soft_wrap=True)
        code = 2
    except (KeyboardInterrupt, typer.Abort):
        console.print("[yellow]interrupted[/yellow]")
        code = 130
    except UserInputError as exc:  # raised outside a command
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
