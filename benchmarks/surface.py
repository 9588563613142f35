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

Run ``make bench`` (or ``.venv-bench/bin/python benchmarks/surface.py``); ``--quick`` is a 5×5 smoke run.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=21, help="grid points per axis, odd (default 21)")
    parser.add_argument("--repeats", type=int, default=4,
                        help="timed runs per tool, best kept (default 4: each tool once in each position)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--problems", default=",".join(p.name for p in PROBLEMS), help="comma-separated")
    parser.add_argument("--quick", action="store_true", help="5×5 grid, one repeat: a smoke run")
    args = parser.parse_args(argv)
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
    with tempfile.TemporaryDirectory(prefix="lossatlas-bench-") as tmp:
        rows = []
        for problem in chosen:
            print(f"running {problem.name} ({steps}x{steps}, {repeats} repeats) ...", flush=True)
            rows.append(run_problem(problem, steps, repeats, Path(tmp)))
    info["cpu_pressure_at_end"] = cpu_pressure()
    print()
    print(table(rows))
    print()
    print(flops_table(rows, info["fp32_matmul_gflops"]))
    print(f"\nCPU pressure at the end: {info['cpu_pressure_at_end']} %.")
    path = write_results("surface", {"machine": info, "steps": steps, "repeats": repeats, "rows": rows})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
