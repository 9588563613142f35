"""The one training loop: checkpoints (initial point included), a metrics log, instrumentation, resume.

A run directory holds::

    run.json                      configuration (model and data specs, TrainSpec)
    checkpoints/epoch_0000.safetensors   θ at initialisation, then every ``save_every`` epochs and the last
    metrics.csv                   epoch, train/test loss and accuracy (from the evaluation engine), ‖θ‖₂ over all
                                  parameters (``param_norm``) and per tensor (``norm:<name>``)
    weight_histograms.npz         per checkpoint, counts of the weights over fixed bins (Li et al. 2018, Fig. 2)
    sharpness.csv                 with ``track_sharpness`` K: λmax of the training loss every K steps beside 2/lr
    state.pt                      model + optimiser + RNG state of the last finished epoch (for resume)

Running the same command again continues from ``state.pt``; asking for more epochs with an otherwise identical
configuration extends a finished run from its last state (bit-identical to a run asked for the longer schedule
from the start, except that the old last epoch keeps its checkpoint); a different configuration is refused
unless ``overwrite``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lossatlas.batch import call_model, num_rows, take, to_device
from lossatlas.engine import EvalSpec, Evaluator, resolve_loss
from lossatlas.engine.losses import minibatch_loss
from lossatlas.errors import UserInputError
from lossatlas.params import buffers_of, parameters_of, private_copy, save_checkpoint
from lossatlas.training_logs import (
    HISTOGRAMS,
    SHARPNESS,
    append_histogram,
    append_rows,
    norm_columns,
    read_rows,
    sharpness_row,
    trim_histograms,
    write_rows,
)


class OptimizerName(str, Enum):  # noqa: UP042 - the project's option style (Typer choices)
    """Optimisers offered by ``lossatlas train``."""

    sgd = "sgd"
    """Stochastic gradient descent (with ``momentum``, ``weight_decay``)."""
    adam = "adam"
    """Adam (Kingma & Ba 2015), ``weight_decay`` as L2."""
    rmsprop = "rmsprop"
    """RMSprop (Tieleman & Hinton 2012; torch defaults, α = 0.99, no momentum), ``weight_decay`` as L2."""


@dataclass(frozen=True)
class TrainSpec:
    """Hyper-parameters of one training run (validated once, here).

    Attributes:
        switch_at, optimizer2, lr2: after epoch ``switch_at`` continue with a fresh ``optimizer2`` at ``lr2``
            (default ``lr``): Im, Tao & Branson 2016, switching SGD ↔ Adam mid-run (seed 004).
        track_sharpness: K > 0 logs λmax of the training loss (certified Lanczos, float64) every K optimiser steps
            on a fixed stratified subset of ``sharpness_samples`` training samples, beside 2/lr: the
            edge-of-stability view (Cohen et al. 2021; 2/lr is the stability limit of plain gradient descent).
        warmup_epochs, milestones, lr_decay: a step schedule of the learning rate (:meth:`lr_factor`): linear
            warm-up over the first ``warmup_epochs`` epochs (Goyal et al. 2017), then × ``lr_decay`` after each
            epoch in ``milestones`` (He et al. 2016; Li et al. 2018 train their ResNets this way). Without them
            the learning rate is never touched.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    optimizer: OptimizerName = OptimizerName.sgd
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    save_every: int = 1
    loss: str = "cross_entropy"
    switch_at: int | None = None
    optimizer2: OptimizerName | None = None
    lr2: float | None = None
    track_sharpness: int = 0
    sharpness_samples: int = 1000
    warmup_epochs: int = 0
    milestones: tuple[int, ...] = ()
    lr_decay: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        object.__setattr__(self, "optimizer", _optimizer_name(self.optimizer, "--optimizer"))
        if self.optimizer2 is not None:
            object.__setattr__(self, "optimizer2", _optimizer_name(self.optimizer2, "--optimizer2"))
        switching = self.switch_at is not None
        checks = [
            (self.epochs >= 0, f"--epochs must be >= 0, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.save_every >= 1, f"--save-every must be >= 1, got {self.save_every}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (not switching or self.switch_at >= 1,  # type: ignore[operator]
             f"--switch-at must be an epoch >= 1, got {self.switch_at}"),
            (not switching or self.optimizer2 is not None,
             "--switch-at needs --optimizer2 (the optimiser to switch to)"),
            (switching or (self.optimizer2 is None and self.lr2 is None),
             "--optimizer2 and --lr2 only apply with --switch-at EPOCH"),
            (self.lr2 is None or self.lr2 > 0, f"--lr2 must be positive, got {self.lr2}"),
            (self.track_sharpness >= 0, f"--track-sharpness must be >= 0 steps, got {self.track_sharpness}"),
            (self.sharpness_samples >= 1, f"--sharpness-samples must be >= 1, got {self.sharpness_samples}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (all(m >= 1 for m in self.milestones), f"milestones must be epochs >= 1, got {self.milestones}"),
            (0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserInputError(message)
        resolve_loss(self.loss)

    def phase(self, epoch: int) -> int:
        """1 while epoch ≤ ``switch_at`` (or without a switch), 2 after the switch (epochs count from 1)."""
        return 2 if self.switch_at is not None and epoch > self.switch_at else 1

    def lr_in(self, phase: int) -> float:
        """Learning rate of a phase."""
        return self.lr if phase == 1 else (self.lr2 if self.lr2 is not None else self.lr)

    @property
    def scheduled(self) -> bool:
        """Whether the learning rate follows a schedule (warm-up or milestones)."""
        return bool(self.warmup_epochs or self.milestones)

    def lr_factor(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """Multiplier of the phase's learning rate at batch ``step`` (0-based) of ``epoch`` (from 1): ``t / (W·S)``
        for the t-th step (from 1) of the first W = ``warmup_epochs`` epochs, then ``lr_decay`` to the number of
        ``milestones`` already passed (epochs after a milestone M run at the decayed rate)."""
        t = (epoch - 1) * steps_per_epoch + step + 1
        warm = min(1.0, t / (self.warmup_epochs * steps_per_epoch)) if self.warmup_epochs else 1.0
        return warm * self.lr_decay ** sum(epoch > m for m in self.milestones)

    def optimizer_in(self, phase: int) -> OptimizerName:
        """Optimiser of a phase."""
        return self.optimizer if phase == 1 else self.optimizer2  # type: ignore[return-value]

    def config(self) -> dict[str, Any]:
        """JSON-able form (``run.json``'s ``train`` entry)."""
        return {k: (v.value if isinstance(v, Enum) else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}


def _optimizer_name(value: object, option: str) -> OptimizerName:
    try:
        return OptimizerName(value.value if isinstance(value, Enum) else value)
    except ValueError:
        choices = ", ".join(m.value for m in OptimizerName)
        raise UserInputError(f"{option} must be one of {choices}, got '{value}'") from None


def _optimizer(model: nn.Module, spec: TrainSpec, phase: int) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    name, lr = spec.optimizer_in(phase), spec.lr_in(phase)
    if name is OptimizerName.adam:
        return torch.optim.Adam(params, lr=lr, weight_decay=spec.weight_decay)
    if name is OptimizerName.rmsprop:
        return torch.optim.RMSprop(params, lr=lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """Path of the checkpoint written after ``epoch`` epochs (0 = initialisation)."""
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch:04d}.safetensors"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, in training order."""
    return sorted((Path(run_dir) / "checkpoints").glob("epoch_*.safetensors"))


_ARTIFACTS = ("run.json", "state.pt", "state.tmp", "metrics.csv", HISTOGRAMS, SHARPNESS)


def clear_run(out: str | Path) -> None:
    """Delete what :func:`train` writes in ``out`` (its files and checkpoints only; nothing else is touched)."""
    out = Path(out)
    for name in _ARTIFACTS:
        (out / name).unlink(missing_ok=True)
    for ckpt in list_checkpoints(out):
        ckpt.unlink()


def _check_config(out: Path, config: dict[str, Any]) -> None:
    """Refuse a run directory made with another configuration (the number of epochs may differ: extension)."""
    run_file = out / "run.json"
    if not run_file.exists():
        return
    old = json.loads(run_file.read_text())
    defaults = TrainSpec().config()
    old_train = {**defaults, **old.get("train", {})}  # runs made before a field existed used its default

    def comparable(cfg: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in cfg.items() if k != "device"},
                "train": {k: v for k, v in train.items() if k != "epochs"}}

    if comparable(old, old_train) != comparable(config, config["train"]):
        raise UserInputError(f"'{out}' holds a run with a different configuration; choose another --out or pass "
                             "--overwrite")


def train(model: nn.Module, data: Any, spec: TrainSpec, out: str | Path,
          provenance: dict[str, Any] | None = None,
          progress: Callable[[int, int, dict[str, float]], None] | None = None,
          device: str = "cpu", overwrite: bool = False) -> nn.Module:
    """Train a copy of ``model`` on ``data``; returns the trained copy (``model`` is untouched).

    Minibatches are drawn from a ``torch.Generator`` seeded by ``spec.seed``, so the same command gives
    bit-identical checkpoints. Metrics after each epoch are full-split means from :class:`Evaluator`.
    ``progress(epoch, epochs, metrics)`` is called once at the start with the epochs already done (metrics
    empty) and after each epoch. ``overwrite`` deletes an earlier run in ``out`` first.
    """
    out = Path(out)
    if overwrite:
        clear_run(out)
    config = {"train": spec.config(), **(provenance or {}), "device": str(device)}
    _check_config(out, config)
    out.mkdir(parents=True, exist_ok=True)

    net = private_copy(model).to(device)
    loss_fn = minibatch_loss(spec.loss)
    generator = torch.Generator().manual_seed(spec.seed)
    x, y = (to_device(t, device) for t in data.split("train"))
    evaluator = Evaluator(net, data, EvalSpec(loss=spec.loss, batch_size=max(spec.batch_size, 500)), device=device)
    start_epoch, phase = 0, 1
    optimizer = _optimizer(net, spec, phase)
    state_file = out / "state.pt"
    if state_file.exists():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        generator.set_state(state["generator"])
        start_epoch, phase = int(state["epoch"]), int(state.get("phase", 1))
        optimizer = _optimizer(net, spec, phase)
        optimizer.load_state_dict(state["optimizer"])
    if start_epoch > spec.epochs:
        raise UserInputError(f"'{out}' already holds {start_epoch} epochs; pass --epochs {start_epoch} or more to "
                             "extend it, or --overwrite to start over")
    (out / "run.json").write_text(json.dumps(config, indent=2))
    steps_per_epoch = -(-num_rows(x) // spec.batch_size)
    metrics_file, sharpness_file = out / "metrics.csv", out / SHARPNESS
    fields_ = ["epoch", *evaluator.metric_names, *norm_columns(net)]
    if start_epoch == 0:
        save_checkpoint(net, checkpoint_path(out, 0))
        trim_histograms(out / HISTOGRAMS, -1)
        append_histogram(out / HISTOGRAMS, 0, net)
        write_rows(metrics_file, fields_, [{"epoch": 0, **_evaluate(evaluator, net)}])
        sharpness_file.unlink(missing_ok=True)
        if spec.track_sharpness:
            append_rows(sharpness_file, [_sharpness(net, data, spec, 0, 0, phase, device)])
    else:  # a kill after a row was appended but before state.pt was replaced leaves rows past the state
        write_rows(metrics_file, fields_, [r for r in read_rows(metrics_file) if int(r["epoch"]) <= start_epoch])
        rows = read_rows(sharpness_file)
        if rows:
            last_step = start_epoch * steps_per_epoch
            write_rows(sharpness_file, list(rows[0]), [r for r in rows if int(r["step"]) <= last_step])
        trim_histograms(out / HISTOGRAMS, start_epoch)
    if progress:
        progress(start_epoch, spec.epochs, {})

    for epoch in range(start_epoch + 1, spec.epochs + 1):
        if spec.phase(epoch) != phase:  # Im et al.: a fresh optimiser from the switch on
            phase = spec.phase(epoch)
            optimizer = _optimizer(net, spec, phase)
        net.train()
        order = torch.randperm(num_rows(x), generator=generator).to(device)
        for b, i in enumerate(range(0, num_rows(x), spec.batch_size)):
            idx = order[i:i + spec.batch_size]
            if spec.scheduled:
                for group in optimizer.param_groups:
                    group["lr"] = spec.lr_in(phase) * spec.lr_factor(epoch, b, steps_per_epoch)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(call_model(net, take(x, idx)), take(y, idx))
            loss.backward()
            optimizer.step()
            step = (epoch - 1) * steps_per_epoch + b + 1
            if spec.track_sharpness and step % spec.track_sharpness == 0:
                append_rows(sharpness_file, [_sharpness(net, data, spec, step, epoch, phase, device)])
        net.eval()
        row = _evaluate(evaluator, net)
        if epoch % spec.save_every == 0 or epoch == spec.epochs:
            save_checkpoint(net, checkpoint_path(out, epoch))
            append_histogram(out / HISTOGRAMS, epoch, net)
        append_rows(metrics_file, [{"epoch": epoch, **row}], fields_)
        tmp = state_file.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(), "epoch": epoch, "phase": phase}, tmp)
        tmp.replace(state_file)
        if progress:
            progress(epoch, spec.epochs, row)
    return net


def _evaluate(evaluator: Evaluator, net: nn.Module) -> dict[str, float]:
    row = evaluator.evaluate_one(parameters_of(net), buffers_of(net))
    theta = parameters_of(net)
    total = torch.sqrt(sum((t.double() ** 2).sum() for t in theta.values()))  # type: ignore[arg-type]
    return {**row, "param_norm": float(total), **{f"norm:{k}": float(t.double().norm()) for k, t in theta.items()}}



def _sharpness(net: nn.Module, data: Any, spec: TrainSpec, step: int, epoch: int, phase: int,
               device: str) -> dict[str, Any]:
    """A ``sharpness.csv`` row for the optimiser and learning rate of ``phase``."""
    return sharpness_row(net, data, loss=spec.loss, batch_size=max(spec.batch_size, 500),
                         samples=spec.sharpness_samples, seed=spec.seed, lr=spec.lr_in(phase),
                         optimizer=spec.optimizer_in(phase).value, step=step, epoch=epoch, device=device)
