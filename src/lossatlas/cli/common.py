"""What every command shares: the Typer app, consoles, error handling, progress bars, option types.

Errors the user can fix (:class:`lossatlas.errors.UserInputError`) print one red line and exit 2; user strings
are printed verbatim (never parsed as Rich markup). Ctrl-C stops cleanly with exit 130 and says what was kept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import typer.core
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from lossatlas.directions import Ignore, Norm  # noqa: F401 - option types used by command modules
from lossatlas.engine.bn import BNPolicy
from lossatlas.errors import NonFiniteError, UserInputError
from lossatlas.execute import check_device  # noqa: F401 - `--device`, checked for the command modules
from lossatlas.specs import split_hf_spec

_METAVARS = {"<int>": "N", "<float>": "NUMBER", "<path>": "PATH", "<str>": "TEXT"}
"""What an option without its own metavar shows instead of a Python type."""


def _flag_type(self: Any, ctx: Any) -> str | None:
    """Typer shows ``<bool>`` beside every flag (``--help`` too); a flag takes no value, so show nothing. Other
    Python types read as metavars (``<int>`` → ``N``, ``<float>`` → ``NUMBER``), choices as ``a|b``."""
    if getattr(self, "is_flag", False) and not getattr(self, "count", False):
        return ""
    shown = _option_type(self, ctx)
    if isinstance(shown, str) and shown.startswith("<") and shown.endswith(">") and not self.metavar:
        return _METAVARS.get(shown, shown[1:-1])
    return shown  # type: ignore[no-any-return]


_option_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


def _argument_type(self: Any, ctx: Any) -> str | None:
    """An argument with a metavar (``STORE``) needs no Python type beside it (``<path>``, ``<list[Path]>``)."""
    if self.metavar:
        return ""
    shown = _plain_argument_type(self, ctx)
    if isinstance(shown, str) and shown.startswith("<") and shown.endswith(">"):
        return _METAVARS.get(shown, shown[1:-1])
    return shown  # type: ignore[no-any-return]


def _argument_usage(self: Any) -> str:
    """``STORE`` / ``[STORE]`` / ``STORE...`` on the usage line (Typer writes ``{STORE}``, a Python-ish set)."""
    name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
    return name + ("..." if self.nargs != 1 and not name.rstrip("]").endswith("...") else "")


_plain_argument_type = typer.core.TyperArgument.display_type_rich
typer.core.TyperArgument.display_type_rich = _argument_type  # type: ignore[method-assign]
if hasattr(typer.core.TyperArgument, "_usage_display_name"):
    typer.core.TyperArgument._usage_display_name = _argument_usage  # type: ignore[method-assign]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="lossatlas: loss landscapes of neural networks — surfaces, curvature, paths, studies.")
console = Console(stderr=True, soft_wrap=True)
out_console = Console(soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


RESUMABLE = ("finished work is saved; run the same command again to resume "
             "(--overwrite would discard it)")
"""What Ctrl-C prints for commands that keep their progress on disk."""


def error_line(message: str) -> None:
    """``error: MESSAGE`` in red on stderr, the message printed verbatim (no Rich markup, no wrapping)."""
    console.print(Text.assemble(("error: ", "bold red"), str(message)), soft_wrap=True)


def warning_line(message: str) -> None:
    """``warning: MESSAGE`` in yellow on stderr, verbatim."""
    console.print(Text.assemble(("warning: ", "yellow"), str(message)), soft_wrap=True)


_PENDING: list[str] = []


def warn_when_running(message: str) -> None:
    """A warning shown once the work starts (the first progress update) or when the command ends, and dropped
    if the command stops at a user error first, so that error stays one line."""
    _PENDING.append(message)


def _flush_warnings() -> None:
    while _PENDING:
        warning_line(_PENDING.pop(0))


def user_errors(fn: F | None = None, *, interrupted: str = RESUMABLE) -> Any:
    """Turn user errors into one red line + exit 2, and Ctrl-C into a clean stop (exit 130).

    ``interrupted``: what the stop message says about the work done so far (e.g. how to resume); use as
    ``@user_errors`` or ``@user_errors(interrupted="...")``.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _PENDING.clear()
            try:
                result = fn(*args, **kwargs)
            except (UserInputError, NonFiniteError) as exc:
                _PENDING.clear()
                error_line(str(exc))
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                console.print(Text.assemble(("interrupted: ", "yellow"), interrupted), soft_wrap=True)
                raise typer.Exit(130) from None
            _flush_warnings()
            return result

        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


class _Count(ProgressColumn):
    """``done/total``, or ``done`` alone while the total is open (a Lanczos run ends at its certificate)."""

    def render(self, task: Task) -> Text:
        done = int(task.completed)
        return Text(f"{done}/{int(task.total)}" if task.total is not None else str(done), style="progress.download")


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[..., None]]:
    """A Rich progress bar, shown from the first ``update(done, total)`` on (so early errors stay one line).

    ``total=None`` shows an open-ended (pulsing) bar with the count alone.
    """
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), _Count(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
    task = bar.add_task(description, total=None)
    started = False

    def update(done: int, total: int | None, description: str | None = None) -> None:
        nonlocal started
        if not started:
            _flush_warnings()
            bar.start()
            started = True
        bar.update(task, completed=done, total=total, description=description)
        if total is None:
            for t in bar.tasks:
                if t.id == task:
                    t.total = None

    try:
        yield update
    finally:
        if started:
            bar.stop()


# -- shared option types --------------------------------------------------------------------------
ModelOpt = Annotated[str, typer.Option("--model", metavar="SPEC", help="zoo:NAME, file.py:function or "
                                                                       "package.module:function [:key=value,...]; "
                                                                       "hf:DIR or hf:config.json (Hugging Face, "
                                                                       "local files only).")]
DataOpt = Annotated[str, typer.Option("--data", metavar="SPEC", help="mnist1d, digits, teacher, xor, jellyfish, "
                                                                     "spirals, modadd (tokens), file.npz or "
                                                                     "file.py:function [:key=value,...]; "
                                                                     "text:FILE.txt[,block=128,tokenizer=DIR].")]
CheckpointOpt = Annotated[Path | None, typer.Option("--checkpoint", metavar="FILE",
                                                    help="Weights (.safetensors or .pt); default: the untrained "
                                                         "initialisation (with a warning).")]
SeedOpt = Annotated[int, typer.Option("--seed", metavar="N", help="Seed of every random choice (stored).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", metavar="N", help="Samples per forward pass.")]
LossOpt = Annotated[str, typer.Option("--loss", metavar="SPEC", help="cross_entropy, mse, or module:function "
                                                                     "returning one loss per sample or per "
                                                                     "token.")]
BNOpt = Annotated[BNPolicy, typer.Option("--bn", help="BatchNorm statistics: stored (eval), re-estimated on the "
                                                      "training split (recompute), or perturbed (states).")]
OutStoreOpt = Annotated[Path, typer.Option("--out", metavar="PATH", help="Result store (a .zarr directory).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing result, discarding its "
                                                                "progress.")]
DeviceOpt = Annotated[str, typer.Option("--device", metavar="DEVICE", help="cpu, cuda or cuda:N.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", metavar="N", help="Local Dask cluster of N worker "
                                                                               "processes.")]
SchedulerOpt = Annotated[str | None, typer.Option("--scheduler", metavar="ADDRESS",
                                                  help="Existing Dask cluster (tcp://HOST:8786).")]
SubsetOpt = Annotated[str | None, typer.Option("--subset", metavar="FRACTION|COUNT",
                                               help="A fixed stratified subset (0.1 or 500); stores *_stderr.")]
MemoryOpt = Annotated[str, typer.Option("--memory", metavar="SIZE", help="Memory per batched pass (e.g. 2GB).")]
GridOpt = "MIN:MAX:N"


class Split(str, Enum):  # noqa: UP042 - the project's option style (Typer choices)
    """A split of the data."""

    train = "train"
    test = "test"


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


def load_problem(model_spec: str, data_spec: str, checkpoint: Path | None, model_seed: int = 0,
                 warn_untrained: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """Dataset, model (checkpoint loaded) and provenance strings for a command.

    Without a checkpoint the model keeps its random initialisation: ``warn_untrained`` prints a yellow warning
    when the work starts (commands that map a landscape almost always meant to pass ``--checkpoint``) and the
    provenance records
    ``weights`` (:data:`lossatlas.viz.describe.UNTRAINED`), which the summary and the report show.
    """
    from lossatlas.data import load_data
    from lossatlas.models import build_model
    from lossatlas.params import file_sha256, load_checkpoint
    from lossatlas.viz.describe import UNTRAINED

    data = load_data(data_spec)
    model = build_model(model_spec, input_shape=data.input_shape, output_dim=data.output_dim, seed=model_seed)
    provenance: dict[str, Any] = {"model": model_spec, "data": data_spec, "model_seed": model_seed}
    if checkpoint is not None:
        model = load_checkpoint(model, checkpoint)
        provenance.update(checkpoint=str(checkpoint), checkpoint_sha256=file_sha256(checkpoint),
                          weights=f"checkpoint {checkpoint}")
    elif _pretrained(model_spec):  # hf:DIR loads the weights saved in DIR: they are not an initialisation
        provenance["weights"] = f"saved in {split_hf_spec(model_spec)[0]}"
    elif warn_untrained:
        provenance["weights"] = UNTRAINED
        warn_when_running(f"no --checkpoint: using the model's untrained initial weights (seed {model_seed}); "
                     "pass --checkpoint FILE to map a trained model")
    return data, model, provenance


def _pretrained(model_spec: str) -> bool:
    """Whether the spec loads saved weights by itself (``hf:DIR``; ``hf:config.json`` draws random ones)."""
    return model_spec.strip().startswith("hf:") and not split_hf_spec(model_spec)[0].endswith(".json")


def out_line(text: str) -> None:
    """One line on stdout, verbatim (no markup, no highlighting, never wrapped inside a path or number)."""
    out_console.print(Text(text), soft_wrap=True, highlight=False)


def summary(ds: Any, out: Path | None) -> None:
    """``wrote OUT (11 × 11 points; min train loss … at …; centre …; non-finite points: 0) [subset 10%]`` and
    the notes a reader must see (subset estimate, BN statistics re-estimated)."""
    from lossatlas.viz.describe import notes, qualifiers

    bad = int(ds.attrs.get("nonfinite_points", 0))
    metric = "train_loss" if "train_loss" in ds else next(iter(ds.data_vars))
    dims = " × ".join(str(ds.sizes[d]) for d in ds[metric].dims)
    parts = [f"{dims} points", *_loss_summary(ds, metric), f"non-finite points: {bad}"]
    tags = qualifiers(ds.attrs)
    line = f"wrote {out} ({'; '.join(parts)})" + (f" [{', '.join(tags)}]" if tags else "")
    out_line(line)
    for note in notes(ds.attrs):
        if not note.startswith("untrained"):  # the warning was printed when the model was loaded
            out_line(f"note: {note}")
    if "hessian_converged" in ds:
        failed = int(ds.attrs.get("hessian_unconverged", 0))
        out_line(f"convexity map: {failed} of {int(ds['hessian_converged'].size)} points unconverged "
                 "(λmin/λmax not certified within the product budget; marked in plots and the report)")


def _loss_summary(ds: Any, metric: str) -> list[str]:
    """``min train loss 0.1235 ± 0.0057 at x = -0.4, y = 0`` and the value at the centre (x = 0, y = 0)."""
    import numpy as np

    from lossatlas.engine.subset import Z95
    from lossatlas.viz.describe import sig, with_error

    var = ds[metric]
    values = np.asarray(var.values, dtype=float)
    se = ds.get(f"{metric}_stderr")
    half = Z95 * np.asarray(se.values, dtype=float) if se is not None else None
    name = metric.replace("_", " ")

    def show(index: tuple[int, ...]) -> str:
        v = values[index]
        return with_error(v, half[index]) + " (95%)" if half is not None else sig(v)

    if not np.isfinite(values).any():
        return [f"no finite {name}"]
    best = tuple(int(i) for i in np.unravel_index(int(np.nanargmin(np.where(np.isfinite(values), values, np.nan))),
                                                  values.shape))
    where = ", ".join(f"{d} = {sig(ds[d].values[i])}" for d, i in zip(var.dims, best, strict=True))
    out = [f"min {name} {show(best)} at {where}"]
    centre = []
    for d in var.dims:
        hit = np.flatnonzero(np.asarray(ds[d].values) == 0.0)
        centre.append(int(hit[0]) if hit.size else None)
    label = "α = 0" if ds.attrs.get("kind") == "interpolation" else "centre"
    if all(i is not None for i in centre):
        out.append(f"{label} {show(tuple(centre))}")  # type: ignore[arg-type]
    return out
