"""The one training loop: checkpoints (initial point included), a metrics log, resume.

A run directory holds::

    run.json                      configuration (model and data specs, TrainSpec)
    checkpoints/epoch_0000.safetensors   θ at initialisation, then every ``save_every`` epochs and the last
    metrics.csv                   epoch, train/test loss and accuracy (from the evaluation engine)
    state.pt                      model + optimiser + RNG state of the last finished epoch (for resume)

Running the same command again continues from ``state.pt``; a different configuration is refused.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lossatlas.engine import EvalSpec, Evaluator, resolve_loss
from lossatlas.errors import UserInputError
from lossatlas.params import buffers_of, parameters_of, private_copy, save_checkpoint


class OptimizerName(str, Enum):
    """Optimisers offered by ``lossatlas train``."""

    sgd = "sgd"
    """Stochastic gradient descent (with ``momentum``, ``weight_decay``)."""
    adam = "adam"
    """Adam (Kingma & Ba 2015), ``weight_decay`` as L2."""


@dataclass(frozen=True)
class TrainSpec:
    """Hyper-parameters of one training run (validated once, here)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    optimizer: OptimizerName = OptimizerName.sgd
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    save_every: int = 1
    loss: str = "cross_entropy"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "optimizer", OptimizerName(self.optimizer))
        except ValueError:
            raise UserInputError(f"--optimizer must be sgd or adam, got '{self.optimizer}'") from None
        checks = [
            (self.epochs >= 0, f"--epochs must be >= 0, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.save_every >= 1, f"--save-every must be >= 1, got {self.save_every}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserInputError(message)
        resolve_loss(self.loss)


def _optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.optimizer is OptimizerName.adam:
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """Path of the checkpoint written after ``epoch`` epochs (0 = initialisation)."""
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch:04d}.safetensors"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, in training order."""
    return sorted((Path(run_dir) / "checkpoints").glob("epoch_*.safetensors"))


def train(model: nn.Module, data: Any, spec: TrainSpec, out: str | Path,
          provenance: dict[str, Any] | None = None,
          progress: Callable[[int, int, dict[str, float]], None] | None = None) -> nn.Module:
    """Train a copy of ``model`` on ``data``; returns the trained copy (``model`` is untouched).

    Minibatches are drawn from a ``torch.Generator`` seeded by ``spec.seed``, so the same command gives
    bit-identical checkpoints. Metrics after each epoch are full-split means from :class:`Evaluator`.
    ``progress(epoch, epochs, metrics)`` is called after each epoch.
    """
    out = Path(out)
    config = {"train": {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(spec).items()},
              **(provenance or {})}
    run_file = out / "run.json"
    if run_file.exists():
        old = json.loads(run_file.read_text())
        if old != config:
            raise UserInputError(f"'{out}' holds a run with a different configuration; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(config, indent=2))

    net = private_copy(model)
    loss_fn = resolve_loss(spec.loss)
    optimizer = _optimizer(net, spec)
    generator = torch.Generator().manual_seed(spec.seed)
    x, y = data.split("train")
    evaluator = Evaluator(net, data, EvalSpec(loss=spec.loss, batch_size=max(spec.batch_size, 500)))
    start_epoch = 0
    state_file = out / "state.pt"
    if state_file.exists():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start_epoch = int(state["epoch"])
    metrics_file = out / "metrics.csv"
    fields = ["epoch", *evaluator.metric_names]
    if start_epoch == 0:
        save_checkpoint(net, checkpoint_path(out, 0))
        _write_rows(metrics_file, fields, [{"epoch": 0, **_evaluate(evaluator, net)}])
    else:  # a kill after a row was appended but before state.pt was replaced leaves rows past the state
        _write_rows(metrics_file, fields, [r for r in _read_rows(metrics_file) if int(r["epoch"]) <= start_epoch])

    for epoch in range(start_epoch + 1, spec.epochs + 1):
        net.train()
        order = torch.randperm(x.shape[0], generator=generator)
        for i in range(0, x.shape[0], spec.batch_size):
            idx = order[i:i + spec.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(x[idx]), y[idx]).mean()
            loss.backward()
            optimizer.step()
        net.eval()
        row = _evaluate(evaluator, net)
        if epoch % spec.save_every == 0 or epoch == spec.epochs:
            save_checkpoint(net, checkpoint_path(out, epoch))
        with metrics_file.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=fields).writerow({"epoch": epoch, **row})
        tmp = state_file.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(), "epoch": epoch}, tmp)
        tmp.replace(state_file)
        if progress:
            progress(epoch, spec.epochs, row)
    return net


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write_rows(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    """Replace ``path`` atomically with a header and ``rows``."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _evaluate(evaluator: Evaluator, net: nn.Module) -> dict[str, float]:
    return evaluator.evaluate_one(parameters_of(net), buffers_of(net))
