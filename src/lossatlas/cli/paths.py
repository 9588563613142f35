"""Commands for paths between models and the topology of stored landscapes: ``curve``, ``connect``, ``align``,
``topology`` (library: :mod:`lossatlas.paths`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lossatlas.cli.common import (
    BatchOpt,
    DataOpt,
    LossOpt,
    ModelOpt,
    OverwriteOpt,
    SeedOpt,
    app,
    load_problem,
    out_console,
    progress_bar,
    user_errors,
)
from lossatlas.paths.curves import CurveKind

CheckpointA = Annotated[Path, typer.Option("--checkpoint", metavar="FILE", help="Model A (t = 0).")]
CheckpointB = Annotated[Path, typer.Option("--checkpoint2", metavar="FILE", help="Model B (t = 1), same architecture.")]


def _two_models(model: str, data: str, checkpoint: Path, checkpoint2: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
    from lossatlas.params import file_sha256, load_checkpoint

    dataset, model_a, provenance = load_problem(model, data, checkpoint)
    model_b = load_checkpoint(model_a, checkpoint2)
    provenance.update(checkpoint2=str(checkpoint2), checkpoint2_sha256=file_sha256(checkpoint2))
    return dataset, model_a, model_b, provenance


@app.command()
@user_errors
def curve(model: ModelOpt, data: DataOpt, checkpoint: CheckpointA, checkpoint2: CheckpointB,
          out: Annotated[Path, typer.Option("--out", help="Output directory (curve.zarr, control points, state).")],
          kind: Annotated[CurveKind, typer.Option(help="bezier or polychain.")] = CurveKind.bezier,
          bends: Annotated[int, typer.Option(help="Trainable control points between the ends.")] = 1,
          epochs: Annotated[int, typer.Option(help="Training epochs (one t ~ U(0,1) per minibatch).")] = 20,
          lr: Annotated[float, typer.Option(help="SGD learning rate of the bends.")] = 0.05,
          batch_size: BatchOpt = 128,
          points: Annotated[int, typer.Option(help="Values of t where curve and line are evaluated.")] = 61,
          seed: SeedOpt = 0, loss: LossOpt = "cross_entropy", overwrite: OverwriteOpt = False) -> None:
    """Train a mode-connecting curve between two checkpoints (Garipov et al. 2018) and compare it with the line."""
    from lossatlas.paths.curves import CurveSpec, train_curve

    spec = CurveSpec(kind=kind, bends=bends, epochs=epochs, lr=lr, batch_size=batch_size, points=points, seed=seed)
    dataset, model_a, model_b, provenance = _two_models(model, data, checkpoint, checkpoint2)
    with progress_bar("curve") as update:
        ds = train_curve(model_a, model_b, dataset, spec, out=out, loss=loss, overwrite=overwrite,
                         provenance=provenance, progress=update)
    a = ds.attrs
    out_console.print(f"wrote {out}: max train loss {a['curve_train_loss_max']:.5g} on the curve, "
                      f"{a['line_train_loss_max']:.5g} on the straight line (barriers "
                      f"{a['curve_train_loss_barrier']:.4g} vs {a['line_train_loss_barrier']:.4g}); length "
                      f"{a['curve_length']:.4g} vs {a['line_length']:.4g}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def connect(model: ModelOpt, data: DataOpt, checkpoint: CheckpointA, checkpoint2: CheckpointB,
            threshold: Annotated[float, typer.Option(help="Train-loss level the path must stay below.")],
            out: Annotated[Path, typer.Option("--out", help="Output directory (string.zarr, beads, state).")],
            max_beads: Annotated[int, typer.Option(help="Most beads before giving up.")] = 20,
            budget: Annotated[int, typer.Option(help="Most SGD steps, all beads together.")] = 20_000,
            points: Annotated[int, typer.Option(help="Dense evaluation points per segment.")] = 21,
            lr: Annotated[float, typer.Option(help="SGD learning rate of a bead's descent.")] = 0.05,
            penalty: Annotated[float, typer.Option(help="μ of (μ/2)‖θ − segment midpoint‖².")] = 1e-3,
            batch_size: BatchOpt = 128, seed: SeedOpt = 0, loss: LossOpt = "cross_entropy",
            overwrite: OverwriteOpt = False) -> None:
    """Dynamic string sampling (Freeman & Bruna 2017): connect two checkpoints by beads below --threshold."""
    from lossatlas.paths.string import StringSpec, string_sampling

    spec = StringSpec(threshold=threshold, max_beads=max_beads, budget=budget, points=points, lr=lr,
                      penalty=penalty, batch_size=batch_size, seed=seed)
    dataset, model_a, model_b, provenance = _two_models(model, data, checkpoint, checkpoint2)
    with progress_bar("string (SGD steps of the budget)") as update:
        ds = string_sampling(model_a, model_b, dataset, spec, out=out, loss=loss, overwrite=overwrite,
                             provenance=provenance, progress=update)
    a = ds.attrs
    verdict = "connected" if a["success"] else f"not connected ({a['reason']})"
    out_console.print(f"wrote {out}: {verdict}; {a['n_beads']} beads, max train loss on the path "
                      f"{a['max_train_loss']:.5g} (line {a['line_max_train_loss']:.5g}), normalised geodesic length "
                      f"{a['normalized_geodesic_length']:.4g}; {a['sgd_steps']} SGD steps, {a['evaluated_points']} "
                      "evaluated points", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def align(model: ModelOpt, data: DataOpt, checkpoint: CheckpointA, checkpoint2: CheckpointB,
          out: Annotated[Path, typer.Option("--out", help="Model B aligned to A (.safetensors); a .zarr beside it "
                                                          "holds the barriers.")],
          spec: Annotated[str | None, typer.Option("--spec", help="Permutation spec: JSON file or file.py:function "
                                                                  "(default: derived from the model).")] = None,
          points: Annotated[int, typer.Option(help="Points on each straight line.")] = 25,
          batch_size: BatchOpt = 1000, seed: SeedOpt = 0, loss: LossOpt = "cross_entropy") -> None:
    """Permute model B's hidden units to match model A (weight matching, Ainsworth et al. 2023); barrier before/after.

    Writes the aligned checkpoint (--out, .safetensors) and the two loss profiles beside it (.zarr)."""
    from lossatlas.paths.align import align_checkpoint, load_spec

    dataset, model_a, model_b, provenance = _two_models(model, data, checkpoint, checkpoint2)
    permutation = load_spec(spec, model_a) if spec else None
    with progress_bar("alignment") as update:
        ds = align_checkpoint(model_a, model_b, dataset, out=out, spec=permutation, points=points, loss=loss,
                              batch_size=batch_size, seed=seed, provenance=provenance, progress=update)
    a = ds.attrs
    out_console.print(f"wrote {out}: train-loss barrier {a['before_train_loss_barrier']:.4g} before alignment, "
                      f"{a['after_train_loss_barrier']:.4g} after ({out.with_suffix('.zarr')})", highlight=False,
                      soft_wrap=True)


@app.command()
@user_errors
def topology(store: Annotated[Path, typer.Argument(help="A 1D or 2D store written by lossatlas surface.")],
             metric: Annotated[str, typer.Option("--metric", help="Variable to analyse.")] = "train_loss",
             levels: Annotated[int, typer.Option(help="Values of λ for N_λ.")] = 200,
             out: Annotated[Path | None, typer.Option("--out", help="Result store (default: STORE.topology.zarr).")]
             = None) -> None:
    """Sublevel-set topology: components of {L ≤ λ} against λ, minima, saddles, persistence pairs, merge tree."""
    from lossatlas.paths.topology import topology_of_store

    ds = topology_of_store(store, metric=metric, out=out, levels=levels)
    target = out or store.with_name(f"{store.name.removesuffix('.zarr')}.topology.zarr")
    a = ds.attrs
    def count(n: int, one: str, many: str) -> str:
        return f"{n} {one if n == 1 else many}"

    out_console.print(f"wrote {target} and {target.with_suffix('.png')}: {count(a['n_minima'], 'minimum', 'minima')}, "
                      f"{count(a['n_saddles'], 'saddle', 'saddles')}, {count(a['n_maxima'], 'maximum', 'maxima')}; "
                      f"at most {int(ds['components'].max())} components",
                      highlight=False, soft_wrap=True)
