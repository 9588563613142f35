"""``lossatlas train``: checkpoints (the initial point included), metrics.csv, weight histograms, sharpness."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli.common import (
    BatchOpt,
    DataOpt,
    DeviceOpt,
    LossOpt,
    ModelOpt,
    OverwriteOpt,
    SeedOpt,
    app,
    check_device,
    load_problem,
    out_console,
    progress_bar,
    user_errors,
)
from lossatlas.training import OptimizerName


@app.command()
@user_errors
def train(model: ModelOpt, data: DataOpt,
          out: Annotated[Path, typer.Option("--out", help="Run directory (checkpoints, metrics.csv).")],
          epochs: Annotated[int, typer.Option(help="Passes over the training split; more than a finished run "
                                                   "has extends it from its last state.")] = 10,
          batch_size: BatchOpt = 128,
          lr: Annotated[float, typer.Option(help="Learning rate.")] = 0.05,
          optimizer: Annotated[OptimizerName, typer.Option(help="The optimiser.")] = OptimizerName.sgd,
          momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
          weight_decay: Annotated[float, typer.Option(help="L2 weight decay.")] = 0.0,
          seed: SeedOpt = 0,
          save_every: Annotated[int, typer.Option(help="Write a checkpoint every K epochs.")] = 1,
          loss: LossOpt = "cross_entropy",
          switch_at: Annotated[int | None, typer.Option("--switch-at", metavar="EPOCH", help="After this epoch "
                                                        "continue with --optimizer2 (Im et al. 2016).")] = None,
          optimizer2: Annotated[OptimizerName | None, typer.Option(help="Optimiser after --switch-at.")] = None,
          lr2: Annotated[float | None, typer.Option(help="Learning rate after --switch-at (default --lr).")] = None,
          track_sharpness: Annotated[int, typer.Option("--track-sharpness", metavar="K", help="Log λmax of the "
                                                       "training loss every K steps beside 2/lr (0: off).")] = 0,
          sharpness_samples: Annotated[int, typer.Option(metavar="N", help="Training samples (fixed subset) of "
                                                         "the sharpness λmax.")] = 1000,
          device: DeviceOpt = "cpu", overwrite: OverwriteOpt = False) -> None:
    """Train a model; writes checkpoints (the initial point included) and metrics.csv to --out."""
    from lossatlas.training import TrainSpec, list_checkpoints
    from lossatlas.training import train as run_train

    spec = TrainSpec(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
                     weight_decay=weight_decay, seed=seed, save_every=save_every, loss=loss, switch_at=switch_at,
                     optimizer2=optimizer2, lr2=lr2, track_sharpness=track_sharpness,
                     sharpness_samples=sharpness_samples)
    device = check_device(device)
    dataset, net, provenance = load_problem(model, data, None, model_seed=seed, warn_untrained=False)
    done: list[int] = []
    last: dict[str, float] = {}
    with progress_bar("training") as update:
        def report(epoch: int, total: int, metrics: dict[str, float]) -> None:
            done.append(epoch)
            last.clear()
            last.update(metrics)
            update(epoch, total)

        run_train(net, dataset, spec, out, provenance=provenance, progress=report, device=device,
                  overwrite=overwrite)
    ckpts = list_checkpoints(out)
    if len(done) == 1 and done[0] > 0:
        out_console.print(f"{out} already holds all {epochs} epochs; nothing to do (a larger --epochs extends it, "
                          "--overwrite starts over)")
    else:
        out_console.print(f"wrote {len(ckpts)} checkpoints to {out / 'checkpoints'}; last: {ckpts[-1]}")
        shown = [f"{name.replace('_', ' ')} {last[name]:.4g}" for name in
                 ("train_loss", "train_accuracy", "test_loss", "test_accuracy") if name in last]
        if shown:
            out_console.print(f"epoch {done[-1]}: " + ", ".join(shown))
