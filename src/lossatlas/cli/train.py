"""``lossatlas train``: checkpoints (the initial point included) and metrics.csv."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli.common import (
    BatchOpt,
    DataOpt,
    LossOpt,
    ModelOpt,
    SeedOpt,
    app,
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
          epochs: Annotated[int, typer.Option(help="Passes over the training split.")] = 10,
          batch_size: BatchOpt = 128,
          lr: Annotated[float, typer.Option(help="Learning rate.")] = 0.05,
          optimizer: Annotated[OptimizerName, typer.Option(help="The optimiser.")] = OptimizerName.sgd,
          momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
          weight_decay: Annotated[float, typer.Option(help="L2 weight decay.")] = 0.0,
          seed: SeedOpt = 0,
          save_every: Annotated[int, typer.Option(help="Write a checkpoint every K epochs.")] = 1,
          loss: LossOpt = "cross_entropy") -> None:
    """Train a model; writes checkpoints (the initial point included) and metrics.csv to --out."""
    from lossatlas.training import TrainSpec, list_checkpoints
    from lossatlas.training import train as run_train

    spec = TrainSpec(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,  # type: ignore[arg-type]
                     momentum=momentum, weight_decay=weight_decay, seed=seed, save_every=save_every, loss=loss)
    dataset, net, provenance = load_problem(model, data, None, model_seed=seed)
    with progress_bar("training") as update:
        update(0, epochs)
        run_train(net, dataset, spec, out, provenance=provenance, progress=lambda e, n, _m: update(e, n))
    ckpts = list_checkpoints(out)
    out_console.print(f"wrote {len(ckpts)} checkpoints to {out / 'checkpoints'}; last: {ckpts[-1]}")
