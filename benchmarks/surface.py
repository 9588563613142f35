"""21×21 loss surfaces: lossatlas against loss-landscapes' ``random_plane``, in one process.

Two problems from the core issue, each trained briefly with :func:`lossatlas.training.train` so that biases
and BatchNorm statistics are not at their initial values (loss-landscapes' filter normalisation divides
by zero on an all-zero bias):

* ``mlp``: ``zoo:mlp:widths=256-256`` (40-256-256-10) on ``mnist1d`` (4000 training samples);
* ``bncnn``: ``zoo:bncnn`` (4 conv + BatchNorm, 16-32-32-64) on ``digits`` (1437 training samples).

Per problem, alternately ``--repeats`` times, the order of the tools rotated each repeat (best time kept):

* **loss-landscapes** 3.0.6: ``random_plane(model, Loss(F.cross_entropy, x_train, y_train), distance=0.5,
  steps=21, normalization="filter")``: 441 points, each one forward pass over all training samples;
* **lossatlas**: ``surface(model, data, x="-1:1:21", y="-1:1:21", eval_spec=EvalSpec(splits=("train",)))``:
  the same 441 points over the same samples, end to end (evaluator set-up, filter-normalised directions,
  provenance, zarr store with region writes), plus training accuracy, which loss-landscapes skips;
* **lossatlas engine**: ``Evaluator.evaluate_coords`` at loss-landscapes' own 441 parameter points
  (its directions re-drawn from the same seed with its own functions), which also checks that both
  tools compute the same numbers: the loss at θ, and the whole grid;
* **lossatlas engine, one batch**: the same with ``EvalSpec(batch_size=N)``, all N samples in one forward
  pass as loss-landscapes runs them (the default ``batch_size=1000`` splits the MLP's 4000 into 4 passes):
  what batch splitting costs.

The two tools draw different directions (loss-landscapes: uniform [0, 1) entries, the second made
orthogonal to the first, biases and BN affine parameters included; lossatlas: Gaussian, biases and BN
parameters zeroed, Li et al. 2018). Neither changes the cost of a point, which is one forward pass
over the data with every parameter moved. ``distance=0.5`` makes loss-landscapes' plane span about
±‖θ‖ per axis, like lossatlas' ``-1:1`` with filter-normalised directions.

Transformer (``--only gpt``): ``zoo:gpt:layers=2,width=128,heads=4`` on ``modadd:p=97,frac=0.3`` (2823 sequences of
3 tokens, the answer token scored, trained 2 epochs), an 11×11 grid: lossatlas ``surface()`` end to end and its engine
(``Evaluator.evaluate_coords``) against a plain per-point loop written here (θ + α d₁ + β d₂ loaded under
``torch.no_grad``, the split in batches of 1000, ``F.cross_entropy(logits.flatten(0, -2), y.flatten(),
ignore_index=-100, reduction="sum")`` over the scored tokens) that walks lossatlas' own directions, so the grids
must agree; target lossatlas ≥ 1.2× the loop. loss-landscapes' ``Loss(F.cross_entropy, x, y)`` fails on per-token
labels (the table says how); its ``Loss`` accepts any ``loss_fn(model(x), y)``, so it also runs with the flattening
loss, all sequences in one batch.

Streaming memory (``--only memory``): a map-style torch Dataset (:class:`SeededFeatures`) of 40,960 float32 vectors
of 4096 (640 MiB, each item drawn from its own seed when read, so the split never exists in memory) under
``EvalSpec(memory_bytes=64 MiB)``: the peak RSS (``VmHWM``) of fresh subprocesses that build the model and the streamed
Dataset and then do nothing (the baseline: Python, torch, lossatlas), ``Evaluator.evaluate_one`` at θ, or a 3-point
1-D ``surface()``; each checks its loss against a plain streaming loop.

Run ``make bench`` (or ``.venv-bench/bin/python benchmarks/surface.py``); ``--quick`` is a 5×5 smoke run.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import cpu_pressure, machine_info, machine_line, markdown_table, set_threads, timed, write_results
from torch import nn

from lossatlas.data import Dataset, load_data
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.landscape import surface
from lossatlas.models import build_model
from lossatlas.store import load_directions
from lossatlas.training import TrainSpec, train

try:
    import loss_landscapes
    from loss_landscapes.metrics import Loss
    from loss_landscapes.model_interface.model_parameters import orthogonal_to, rand_u_like
    from loss_landscapes.model_interface.model_wrapper import wrap_model
except ImportError:  # the project venv: lossatlas numbers only
    loss_landscapes = None

SEED = 0
DISTANCE = 0.5


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: a zoo model on a built-in dataset and the speed-up the issue asks for."""

    name: str
    model: str
    data: str
    epochs: int
    target: float


PROBLEMS = (
    Problem("mlp", "zoo:mlp:widths=256-256", "mnist1d", epochs=5, target=1.1),
    Problem("bncnn", "zoo:bncnn", "digits", epochs=5, target=1.4),
)


def trained_model(problem: Problem, data: Dataset, workdir: Path) -> nn.Module:
    """The problem's model after a few epochs of SGD (seeded; a few seconds)."""
    model = build_model(problem.model, input_shape=data.input_shape, output_dim=data.output_dim, seed=SEED)
    spec = TrainSpec(epochs=problem.epochs, batch_size=64, lr=0.05, seed=SEED)
    return train(model, data, spec, workdir / f"train-{problem.name}").eval()


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-add flops (2 per MAC) of the Linear and Conv layers in one forward pass over ``x``."""
    total = 0

    def count(module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2 * out.numel() * module.in_features
        elif isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            total += 2 * out.numel() * module.weight[0].numel()

    handles = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def loss_landscapes_plane(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> np.ndarray:
    """loss-landscapes' ``random_plane`` (steps × steps), directions drawn from ``torch.manual_seed(SEED)``."""
    torch.manual_seed(SEED)
    return loss_landscapes.random_plane(model, Loss(F.cross_entropy, x, y), distance=DISTANCE, steps=steps,
                                        normalization="filter", deepcopy_model=False)


def loss_landscapes_points(model: nn.Module, steps: int) -> tuple[dict[str, torch.Tensor], list[dict], torch.Tensor]:
    """θ, the two directions and the (steps², 2) coordinates of the points ``random_plane`` evaluates.

    The directions are re-drawn with loss-landscapes' own functions in ``random_plane``'s order, from the
    same seed. ``random_plane`` starts at θ − (steps/2)(d₁ + d₂) and walks the grid in place, one column
    per d₁ step, moving along d₂ up the even columns and down the odd ones; an odd column is stored one
    d₂ step lower than an even one (index k sits at (k − steps/2) d₂ there, at (k + 1 − steps/2) d₂ in
    an even column). Row-major: point ``i * steps + k`` is grid entry ``[i, k]``.
    """
    names = [name for name, _ in model.named_parameters()]
    torch.manual_seed(SEED)
    start = wrap_model(copy.deepcopy(model)).get_module_parameters()
    d1 = rand_u_like(start)
    d2 = orthogonal_to(d1)
    d1.filter_normalize_(start)
    d2.filter_normalize_(start)
    d1.mul_(((start.model_norm() / DISTANCE) / steps) / d1.model_norm())
    d2.mul_(((start.model_norm() / DISTANCE) / steps) / d2.model_norm())
    theta = {n: p.detach().clone() for n, p in zip(names, start.parameters, strict=True)}
    dirs = [{n: t.detach().clone() for n, t in zip(names, d.parameters, strict=True)} for d in (d1, d2)]
    half = steps / 2
    coords = [(i - half, k + (1 if i % 2 == 0 else 0) - half) for i in range(steps) for k in range(steps)]
    return theta, dirs, torch.tensor(coords, dtype=torch.float64)


def run_problem(problem: Problem, steps: int, repeats: int, workdir: Path) -> dict[str, Any]:
    """Time both tools on one problem; check they agree at θ and over loss-landscapes' grid."""
    data = load_data(problem.data)
    model = trained_model(problem, data, workdir)
    x, y = data.split("train")
    spec = EvalSpec(splits=("train",))
    axis = f"-1:1:{steps}"
    points = steps * steps
    row: dict[str, Any] = {
        "problem": problem.name, "model": problem.model, "data": problem.data,
        "parameters": sum(p.numel() for p in model.parameters()), "samples_per_point": int(x.shape[0]),
        "grid": f"{steps}x{steps}", "points": points, "target_ratio": problem.target,
        "batch_size": spec.batch_size, "gflop_per_point": forward_flops(model, x) / 1e9,
    }
    evaluator = Evaluator(model, data, spec)
    one_batch = Evaluator(model, data, EvalSpec(splits=("train",), batch_size=int(x.shape[0])))
    theta = evaluator.theta()
    row["lossatlas_loss_at_theta"] = evaluator.evaluate_one(theta)["train_loss"]
    if loss_landscapes is not None:
        row["loss_landscapes_loss_at_theta"] = loss_landscapes.point(copy.deepcopy(model), Loss(F.cross_entropy, x, y))
        ll_theta, ll_dirs, ll_coords = loss_landscapes_points(model, steps)

    times: dict[str, list[float]] = {"loss_landscapes": [], "lossatlas": [], "lossatlas_engine": [],
                                     "lossatlas_engine_one_batch": []}
    results: dict[str, Any] = {}

    def run_ll() -> Any:
        return loss_landscapes_plane(copy.deepcopy(model).eval(), x, y, steps)

    def run_surface(repeat: int) -> Any:
        # a new store each time, as a first run writes it (not timing the deletion of the previous repeat's)
        return surface(model, data, x=axis, y=axis, eval_spec=spec, out=workdir / f"{problem.name}-{repeat}.zarr")

    tools: list[tuple[str, Callable[[int], Any]]] = [("lossatlas", run_surface)]
    if loss_landscapes is not None:
        tools += [("loss_landscapes", lambda _r: run_ll()),
                  ("lossatlas_engine", lambda _r: evaluator.evaluate_coords(ll_theta, ll_dirs, ll_coords)),
                  ("lossatlas_engine_one_batch", lambda _r: one_batch.evaluate_coords(ll_theta, ll_dirs, ll_coords))]
    for repeat in range(repeats):
        # alternate the tools so all see the same machine load, and rotate their order each repeat so that none
        # always runs right after the same other one (a run after the one-batch engine pays for its freed memory)
        shift = repeat % len(tools)
        for name, fn in tools[shift:] + tools[:shift]:
            seconds, results[name] = timed(lambda fn=fn, repeat=repeat: fn(repeat))
            times[name].append(seconds)
    ds = results["lossatlas"]
    ll_grid, engine = results.get("loss_landscapes"), results.get("lossatlas_engine")

    row["seconds"] = times
    row["one_point_per_pass"] = evaluator._one_point_per_pass(points)
    row["channels_last"] = evaluator._channels_last
    centre = steps // 2
    row["lossatlas_surface_loss_at_theta"] = float(ds["train_loss"].values[centre, centre])
    for tool, runs in times.items():
        if runs:
            row[f"{tool}_points_per_s"] = points / min(runs)
            row[f"{tool}_gflops"] = row[f"{tool}_points_per_s"] * row["gflop_per_point"]
    if loss_landscapes is not None:  # the centre of the surface and evaluate_one at θ, against loss-landscapes
        row["loss_at_theta_abs_diff"] = max(abs(row[k] - row["loss_landscapes_loss_at_theta"]) for k in
                                            ("lossatlas_loss_at_theta", "lossatlas_surface_loss_at_theta"))
        ours = engine["train_loss"].numpy().reshape(steps, steps)
        row["grid_max_abs_diff"] = float(np.abs(ours - ll_grid).max())
        row["grid_max_rel_diff"] = float((np.abs(ours - ll_grid) / np.abs(ll_grid)).max())
        row["ratio"] = row["lossatlas_points_per_s"] / row["loss_landscapes_points_per_s"]
        row["engine_ratio"] = row["lossatlas_engine_points_per_s"] / row["loss_landscapes_points_per_s"]
        row["engine_one_batch_ratio"] = (row["lossatlas_engine_one_batch_points_per_s"]
                                         / row["loss_landscapes_points_per_s"])
        row["target_met"] = row["ratio"] >= problem.target
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of a run."""
    headers = ["problem", "params", "samples/point", "grid", "loss-landscapes pts/s", "lossatlas pts/s",
               "ratio", "target", "engine pts/s (ratio)", "engine, one batch (ratio)", "|Δ loss| at θ",
               "max rel. Δ on grid"]
    out = []
    for r in rows:
        peer = "loss_landscapes_points_per_s" in r
        ratio = f"**{r['ratio']:.2f}×**" + ("" if r["target_met"] else " (missed)") if peer else "–"
        out.append([
            f"{r['problem']} ({r['model']} on {r['data']})", f"{r['parameters']:,}", r["samples_per_point"],
            r["grid"], f"{r['loss_landscapes_points_per_s']:.1f}" if peer else "–",
            f"{r['lossatlas_points_per_s']:.1f}", ratio, f"≥ {r['target_ratio']:g}×",
            f"{r['lossatlas_engine_points_per_s']:.1f} ({r['engine_ratio']:.2f}×)" if peer else "–",
            f"{r['lossatlas_engine_one_batch_points_per_s']:.1f} ({r['engine_one_batch_ratio']:.2f}×)"
            if peer else "–",
            f"{r['loss_at_theta_abs_diff']:.1e}" if peer else "–",
            f"{r['grid_max_rel_diff']:.1e}" if peer else "–",
        ])
    return markdown_table(headers, out)


def flops_table(rows: list[dict[str, Any]], matmul_gflops: float) -> str:
    """Achieved GFLOP/s (Linear and Conv multiply-adds only) next to the run's fp32 matmul figure."""
    headers = ["problem", "GFLOP/point", "loss-landscapes GFLOP/s", "lossatlas engine GFLOP/s",
               "lossatlas surface() GFLOP/s", "fp32 matmul GFLOP/s (same run)"]
    out = [[r["problem"], f"{r['gflop_per_point']:.3f}",
            f"{r['loss_landscapes_gflops']:.0f}" if "loss_landscapes_gflops" in r else "–",
            f"{r['lossatlas_engine_gflops']:.0f}" if "lossatlas_engine_gflops" in r else "–",
            f"{r['lossatlas_gflops']:.0f}", f"{matmul_gflops:.0f}"] for r in rows]
    return markdown_table(headers, out)


# -- the transformer problem: lossatlas' surface() against a plain per-point loop --------------------------------

TOKEN_PROBLEM = Problem("gpt", "zoo:gpt:layers=2,width=128,heads=4", "modadd:p=97,frac=0.3", epochs=2, target=1.2)
TOKEN_QUICK = Problem("gpt", "zoo:gpt:layers=1,width=32,heads=2", "modadd:p=23,frac=0.3", epochs=1, target=1.2)


def token_cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The batch contract's per-token loss: ``F.cross_entropy`` over flattened tokens, -100 ignored."""
    return F.cross_entropy(logits.flatten(0, -2), y.flatten(), ignore_index=-100, reduction=reduction)


def plain_surface_loop(model: nn.Module, theta: dict[str, torch.Tensor], dirs: list[dict[str, torch.Tensor]],
                       xs: np.ndarray, ys: np.ndarray, x: torch.Tensor, y: torch.Tensor, batch: int) -> np.ndarray:
    """The loss surface the way one writes it by hand: per grid point, load θ + α d₁ + β d₂ into the model under
    ``torch.no_grad``, run the whole split in batches and accumulate the token-mean cross-entropy."""
    net = copy.deepcopy(model).eval()
    params = dict(net.named_parameters())
    tokens = int((y != -100).sum())
    zero = {k: torch.zeros_like(p) for k, p in params.items()}
    d1 = {k: dirs[0].get(k, zero[k]).to(p.dtype) for k, p in params.items()}
    d2 = {k: dirs[1].get(k, zero[k]).to(p.dtype) for k, p in params.items()}
    out = np.empty((len(xs), len(ys)))
    with torch.no_grad():
        for i, alpha in enumerate(xs):
            for j, beta in enumerate(ys):
                for k, p in params.items():
                    p.copy_(theta[k] + float(alpha) * d1[k] + float(beta) * d2[k])
                total = 0.0
                for start in range(0, x.shape[0], batch):
                    logits = net(x[start:start + batch])
                    total += float(token_cross_entropy(logits, y[start:start + batch], reduction="sum"))
                out[i, j] = total / tokens
    return out


def run_token_problem(problem: Problem, steps: int, repeats: int, workdir: Path) -> dict[str, Any]:
    """lossatlas ``surface()`` (end to end), its engine alone, a plain per-point loop and loss-landscapes (with a
    loss function that flattens the tokens) on the same grid; alternated, order rotated, best kept."""
    data = load_data(problem.data)
    model = trained_model(problem, data, workdir)
    x, y = data.split("train")
    spec = EvalSpec(splits=("train",))
    axis = f"-1:1:{steps}"
    row: dict[str, Any] = {
        "problem": problem.name, "model": problem.model, "data": problem.data, "grid": f"{steps}x{steps}",
        "parameters": sum(p.numel() for p in model.parameters()), "samples_per_point": int(x.shape[0]),
        "tokens_per_point": int((y != -100).sum()), "points": steps * steps, "target_ratio": problem.target,
        "batch_size": spec.batch_size, "notes": {}, "gflop_per_point": forward_flops(model, x) / 1e9,
    }
    # an untimed first run: torch's first calls, and lossatlas' own directions for the loop to walk
    first = surface(model, data, x=axis, y=axis, eval_spec=spec, out=workdir / "gpt-warm.zarr")
    dirs = load_directions(workdir / "gpt-warm.zarr")
    theta = {k: p.detach().clone() for k, p in model.named_parameters()}
    xs, ys = first["x"].values, first["y"].values
    evaluator = Evaluator(model, data, spec)
    coords = torch.tensor([(a, b) for a in xs for b in ys], dtype=torch.float64)
    full_dirs = [{k: d.get(k, torch.zeros_like(v)) for k, v in theta.items()} for d in dirs]
    tools: list[tuple[str, Callable[[int], Any]]] = [
        ("lossatlas", lambda r: surface(model, data, x=axis, y=axis, eval_spec=spec, out=workdir / f"gpt-{r}.zarr")),
        ("plain_loop", lambda _r: plain_surface_loop(model, theta, dirs, xs, ys, x, y, spec.batch_size)),
        ("lossatlas_engine", lambda _r: evaluator.evaluate_coords(theta, full_dirs, coords)),
    ]
    if loss_landscapes is not None:
        try:  # what the README's usage gives: its Loss metric with plain F.cross_entropy on (x, y)
            loss_landscapes.point(copy.deepcopy(model), Loss(F.cross_entropy, x, y))
            row["notes"]["loss-landscapes, Loss(F.cross_entropy, x, y)"] = "runs"
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run is a result
            row["notes"]["loss-landscapes, Loss(F.cross_entropy, x, y)"] = (
                f"does not run: {type(exc).__name__}: {str(exc).splitlines()[0][:140]}")
        flat = Loss(token_cross_entropy, x, y)  # its Metric calls loss_fn(model(x), y): a flattening loss runs
        row["loss_landscapes_loss_at_theta"] = loss_landscapes.point(copy.deepcopy(model), flat)
        tools.append(("loss_landscapes", lambda _r: loss_landscapes.random_plane(
            copy.deepcopy(model).eval(), flat, distance=DISTANCE, steps=steps, normalization="filter",
            deepcopy_model=False)))
    else:
        row["notes"]["loss-landscapes"] = "not installed"
    times: dict[str, list[float]] = {name: [] for name, _ in tools}
    results: dict[str, Any] = {}
    for repeat in range(repeats):
        shift = repeat % len(tools)
        for name, fn in tools[shift:] + tools[:shift]:
            seconds, results[name] = timed(functools.partial(fn, repeat))
            times[name].append(seconds)
        print(f"  repeat {repeat}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    ours = results["lossatlas"]["train_loss"].values
    loop = results["plain_loop"]
    engine = results["lossatlas_engine"]["train_loss"].numpy().reshape(ours.shape)
    row["seconds"] = times
    for name, runs in times.items():
        row[f"{name}_points_per_s"] = row["points"] / min(runs)
        row[f"{name}_gflops"] = row[f"{name}_points_per_s"] * row["gflop_per_point"]
    row["ratio"] = row["lossatlas_points_per_s"] / row["plain_loop_points_per_s"]
    row["engine_ratio"] = row["lossatlas_engine_points_per_s"] / row["plain_loop_points_per_s"]
    row["target_met"] = row["ratio"] >= problem.target
    row["grid_max_rel_diff"] = float((np.abs(ours - loop) / np.abs(loop)).max())
    row["engine_grid_max_rel_diff"] = float((np.abs(engine - loop) / np.abs(loop)).max())
    centre = steps // 2
    row["loss_at_theta"] = float(loop[centre, centre])
    if "loss_landscapes" in times:
        row["loss_landscapes_ratio"] = row["lossatlas_points_per_s"] / row["loss_landscapes_points_per_s"]
        row["loss_landscapes_abs_diff_at_theta"] = abs(row["loss_landscapes_loss_at_theta"] - row["loss_at_theta"])
    return row


def token_table(r: dict[str, Any]) -> str:
    """The transformer problem's table: points per second per tool, against the plain loop."""
    base = r["plain_loop_points_per_s"]
    rows = [
        ["plain per-point loop (`torch.no_grad`, batches of 1000, token-mean CE)", f"{base:.1f}", "1.00×", "",
         "reference", f"{r['plain_loop_gflops']:.0f}"],
        ["**lossatlas `surface()`** (end to end, zarr store)", f"{r['lossatlas_points_per_s']:.1f}",
         f"**{r['ratio']:.2f}×**", f"≥ {r['target_ratio']:g}× ({'met' if r['target_met'] else 'missed'})",
         f"max rel. Δ on grid {r['grid_max_rel_diff']:.1e}", f"{r['lossatlas_gflops']:.0f}"],
        ["lossatlas engine (`Evaluator.evaluate_coords`, same points)", f"{r['lossatlas_engine_points_per_s']:.1f}",
         f"{r['engine_ratio']:.2f}×", "", f"max rel. Δ on grid {r['engine_grid_max_rel_diff']:.1e}",
         f"{r['lossatlas_engine_gflops']:.0f}"],
    ]
    if "loss_landscapes_points_per_s" in r:
        rows.append(["loss-landscapes `random_plane`, `Loss` with a flattening loss (all sequences in one batch)",
                     f"{r['loss_landscapes_points_per_s']:.1f}", f"{r['loss_landscapes_points_per_s'] / base:.2f}×", "",
                     f"\\|Δ loss\\| at θ {r['loss_landscapes_abs_diff_at_theta']:.1e}",
                     f"{r['loss_landscapes_gflops']:.0f}"])
    for tool, note in r["notes"].items():
        rows.append([tool, "", "", "", note, ""])
    head = (f"{r['problem']}: `{r['model']}` on `{r['data']}`, {r['parameters']:,} parameters, "
            f"{r['samples_per_point']} sequences ({r['tokens_per_point']} scored tokens) per point, {r['grid']} grid, "
            f"best of {len(next(iter(r['seconds'].values())))}; {r['gflop_per_point']:.2f} GFLOP per point (Linear "
            f"layers' multiply-adds)")
    return head + "\n\n" + markdown_table(["tool", "pts/s", "vs plain loop", "target", "check", "GFLOP/s"], rows)


# -- streaming: peak memory of a split ~10× the memory budget, in a subprocess ----------------------------------

class SeededFeatures(torch.utils.data.Dataset):
    """A map-style Dataset of ``n`` float32 feature vectors of length ``dim``, item i drawn from a generator seeded
    with (seed, i) when it is read, and label i mod 10: the split (n · dim · 4 bytes) never exists in memory."""

    num_classes = 10

    def __init__(self, n: int, dim: int, seed: int = 0) -> None:
        self.n, self.dim, self.seed = n, dim, seed
        self._generator = torch.Generator()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self._generator.manual_seed(self.seed * 1_000_003 + i)
        return torch.randn(self.dim, generator=self._generator), i % 10


STREAM_DIM = 4096  # 16 KiB per item
STREAM_MODEL = "zoo:mlp:widths=256"


def memory_child(mode: str, budget_mib: int, split_mib: int, threads: int) -> dict[str, Any]:
    """In a fresh process: build the streamed dataset and the model; then (``mode``) nothing, ``evaluate_one`` at θ,
    or a 1-D surface of 3 points; report the peak RSS (``VmHWM``, ``ru_maxrss``) and the seconds."""
    import resource

    from lossatlas.data import _from_streams

    torch.set_num_threads(threads)
    n = split_mib * 2**20 // (4 * STREAM_DIM)
    data = _from_streams("seeded-features", SeededFeatures(n, STREAM_DIM), None)
    model = build_model(STREAM_MODEL, input_shape=(STREAM_DIM,), output_dim=10, seed=SEED).eval()
    spec = EvalSpec(splits=("train",), memory_bytes=budget_mib * 2**20)
    out: dict[str, Any] = {"mode": mode, "items": n, "split_mib": n * STREAM_DIM * 4 / 2**20,
                           "model_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20}
    start = time.perf_counter()
    if mode == "evaluate_one":
        ev = Evaluator(model, data, spec)
        out["loss"] = ev.evaluate_one(ev.theta())["train_loss"]
    elif mode == "surface":
        with tempfile.TemporaryDirectory() as tmp:
            ds = surface(model, data, x="-1:1:3", eval_spec=spec, out=Path(tmp) / "s.zarr")
            out["loss"] = float(ds["train_loss"].values[1])
    out["seconds"] = time.perf_counter() - start
    out["vm_hwm_mib"] = _status_mib("VmHWM")
    out["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if mode != "baseline":  # after the peak was read: the loss at θ from a plain streaming loop, one batch at a time
        ds_ = SeededFeatures(n, STREAM_DIM)
        total = 0.0
        with torch.no_grad():
            for lo in range(0, n, 1000):
                items = [ds_[i] for i in range(lo, min(lo + 1000, n))]
                xb = torch.stack([t for t, _ in items])
                yb = torch.tensor([c for _, c in items])
                total += float(F.cross_entropy(model(xb), yb, reduction="sum"))
        out["plain_loss"] = total / n
    return out


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def streaming_rows(budget_mib: int, split_mib: int, threads: int) -> list[dict[str, Any]]:
    """Run :func:`memory_child` in fresh subprocesses: the baseline (imports, model, dataset), then each mode."""
    import resource  # POSIX only

    rows = []
    # the last run fixes glibc's mmap threshold, so every large buffer is returned to the OS when freed: the difference
    # to the run before is heap fragmentation, not memory held by lossatlas
    for mode, env in (("baseline", {}), ("evaluate_one", {}), ("surface", {}),
                      ("surface", {"MALLOC_MMAP_THRESHOLD_": "131072"})):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", mode, "--memory-mib", str(budget_mib),
               "--split-mib", str(split_mib), "--threads", str(threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **env})
        if done.returncode != 0:
            rows.append({"mode": mode, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"})
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["env"] = " ".join(f"{k}={v}" for k, v in env.items())
        row["children_maxrss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        rows.append(row)
        print(f"  memory {mode}: {row}", flush=True)
    return rows


def streaming_table(rows: list[dict[str, Any]], budget_mib: int) -> str:
    base = next((r for r in rows if r["mode"] == "baseline" and "error" not in r), None)
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["mode"], "", "", "", "", "", f"failed: {r['error']}"])
            continue
        extra = "" if base is None or r is base else f"{r['vm_hwm_mib'] - base['vm_hwm_mib']:.0f}"
        check = "" if "plain_loss" not in r else f"loss {r['loss']:.6f}, plain loop {r['plain_loss']:.6f}"
        name = r["mode"] if r["mode"] != "surface" else "1-D `surface()`, 3 points"
        out.append([name + (f" (`{r['env']}`)" if r.get("env") else ""),
                    f"{r['split_mib']:.0f} ({r['items']:,} × {STREAM_DIM} float32)", budget_mib,
                    f"{r['model_mib']:.1f}", f"{r['vm_hwm_mib']:.0f}", extra, f"{r['seconds']:.1f}", check])
    return markdown_table(["process", "split MiB (items)", "budget MiB", "model MiB", "peak RSS MiB",
                           "peak − baseline MiB", "seconds", "check"], out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=21, help="grid points per axis, odd (default 21)")
    parser.add_argument("--repeats", type=int, default=4,
                        help="timed runs per tool, best kept (default 4: each tool once in each position)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--problems", default=",".join(p.name for p in PROBLEMS), help="comma-separated")
    parser.add_argument("--quick", action="store_true", help="5×5 grid, one repeat: a smoke run")
    parser.add_argument("--only", choices=("all", "peers", "gpt", "memory"), default="all",
                        help="peers: the mlp/bncnn problems; gpt: the transformer against a plain loop; memory: the "
                             "streaming peak-memory figure")
    parser.add_argument("--gpt-steps", type=int, default=11, help="grid points per axis of the transformer problem")
    parser.add_argument("--memory-mib", type=int, default=64, help="memory budget (EvalSpec.memory_bytes) in MiB")
    parser.add_argument("--split-mib", type=int, default=640, help="size of the streamed split in MiB")
    parser.add_argument("--memory-child", choices=("baseline", "evaluate_one", "surface"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.memory_mib, args.split_mib, args.threads or 1)))
        return 0
    steps, repeats = (5, 1) if args.quick else (args.steps, args.repeats)
    if steps < 3 or steps % 2 == 0 or repeats < 1:
        parser.error("--steps must be odd and >= 3 (θ is the centre point) and --repeats >= 1")
    chosen = [p for p in PROBLEMS if p.name in args.problems.split(",")]
    if not chosen:
        parser.error(f"--problems must name some of {', '.join(p.name for p in PROBLEMS)}")
    threads = set_threads(args.threads)
    info = machine_info(threads, peers=("loss-landscapes",))
    print(machine_line(info), flush=True)
    if loss_landscapes is None:
        print("loss-landscapes is not installed (use the bench venv: make bench); lossatlas only.")
    rows: list[dict[str, Any]] = []
    token: dict[str, Any] | None = None
    memory: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lossatlas-bench-") as tmp:
        if args.only in ("all", "peers"):
            for problem in chosen:
                print(f"running {problem.name} ({steps}x{steps}, {repeats} repeats) ...", flush=True)
                rows.append(run_problem(problem, steps, repeats, Path(tmp)))
        if args.only in ("all", "gpt"):
            token_steps, token_repeats = (5, 1) if args.quick else (args.gpt_steps, min(args.repeats, 3))
            problem = TOKEN_QUICK if args.quick else TOKEN_PROBLEM
            print(f"running {problem.name} ({token_steps}x{token_steps}, {token_repeats} repeats) ...", flush=True)
            token = run_token_problem(problem, token_steps, token_repeats, Path(tmp))
    if args.only in ("all", "memory"):
        split_mib = 64 if args.quick else args.split_mib
        budget_mib = 8 if args.quick else args.memory_mib
        print(f"streaming {split_mib} MiB under a {budget_mib} MiB budget, in subprocesses ...", flush=True)
        memory = streaming_rows(budget_mib, split_mib, threads)
    info["cpu_pressure_at_end"] = cpu_pressure()
    if rows:
        print()
        print(table(rows))
        print()
        print(flops_table(rows, info["fp32_matmul_gflops"]))
    if token is not None:
        print()
        print(token_table(token))
    if memory:
        print()
        print(streaming_table(memory, 8 if args.quick else args.memory_mib))
    print(f"\nCPU pressure at the end: {info['cpu_pressure_at_end']} %.")
    payload = {"machine": info, "steps": steps, "repeats": repeats, "rows": rows, "gpt": token, "memory": memory}
    path = write_results("surface" if args.only == "all" else f"surface_{args.only}", payload)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
