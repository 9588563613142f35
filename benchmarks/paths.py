"""Paths: curve-training throughput against dnn-mode-connectivity's curve layers and a plain per-t loop, and
the cost of dynamic string sampling; also records the barriers these runs measure.

    python benchmarks/paths.py [--widths 256-256] [--epochs 3] [--repeats 3] [--dmc PATH/curves.py] [--quick]

Problem: two ``zoo:mlp`` (default 40-256-256-10) trained on ``mnist1d`` from seeds 1 and 2 (``--train-epochs``
of SGD with :func:`lossatlas.train.train`), a Bézier curve with one bend between them, batch 128, SGD lr
0.05 momentum 0.9. Every row trains the same bend from the same straight-line start with the same minibatch
order and the same t per minibatch (one ``torch.Generator``), so after the timed epochs the bends must agree
(to float32 rounding; the table prints the largest difference from lossatlas'):

* **lossatlas** :func:`lossatlas.paths.curves.fit_control_points`: φ(t) as a parameter dict, the unchanged
  module called through ``torch.func.functional_call``;
* **plain per-t loop**: per minibatch, copy φ(t) into an ordinary module's parameters, forward/backward, and
  hand c_k(t)·∇L to bend k (the chain rule by hand);
* **dnn-mode-connectivity** (Garipov et al.'s code, ``curves.py`` at commit f0bf253, BSD-2): the MLP rewritten
  with its ``curves.Linear`` layers inside ``curves.CurveNet`` (every layer holds all control points and mixes
  them per forward). Not on PyPI; pass ``--dmc`` with the path of its ``curves.py`` (``git clone
  https://github.com/timgaripov/dnn-mode-connectivity``); the row is skipped otherwise. Its ``train.py`` needs
  torchvision's data loaders, so only the curve layers are used.

Timings: wall-clock seconds for ``--epochs`` epochs, best of ``--repeats``, the methods alternated.
String sampling (:func:`lossatlas.paths.string.string_sampling`) is run on the same two MLPs at thresholds
relative to the larger endpoint loss, and on a deep linear teacher problem; its table gives beads, SGD steps,
evaluated points (dense segment points + descent checks), wall time and the normalised geodesic length.
Writes ``results/paths.json``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import machine_info, machine_line, markdown_table, set_threads, write_results
from torch import nn

from lossatlas.data import Dataset, load_data
from lossatlas.engine import resolve_loss
from lossatlas.models import build_model
from lossatlas.params import parameters_of
from lossatlas.paths.align import align_checkpoint
from lossatlas.paths.curves import CurveSpec, fit_control_points, initial_control_points, train_curve
from lossatlas.paths.string import StringSpec, string_sampling
from lossatlas.training import TrainSpec, train


def plain_loop(model: nn.Module, data: Dataset, points: list[dict[str, torch.Tensor]], spec: CurveSpec
               ) -> list[dict[str, torch.Tensor]]:
    """The same training, done the obvious way: load φ(t) into a module, backprop, chain rule by hand."""
    net = copy.deepcopy(model).train()
    loss_fn = resolve_loss("cross_entropy")
    bends = [{k: v.clone().requires_grad_(True) for k, v in p.items()} for p in points[1:-1]]
    opt = torch.optim.SGD([t for b in bends for t in b.values()], lr=spec.lr, momentum=spec.momentum)
    gen = torch.Generator().manual_seed(spec.seed)
    x, y = data.split("train")
    n = len(points) - 1
    binom = torch.tensor([float(math.comb(n, k)) for k in range(n + 1)])
    for _epoch in range(spec.epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], spec.batch_size):
            idx = order[i:i + spec.batch_size]
            t = torch.rand(1, generator=gen, dtype=torch.float64).float()
            c = binom * t ** torch.arange(n + 1) * (1 - t) ** torch.arange(n, -1, -1)
            with torch.no_grad():
                for name, p in net.named_parameters():
                    p.copy_(c[0] * points[0][name] + sum(c[k + 1] * b[name] for k, b in enumerate(bends))
                            + c[-1] * points[-1][name])
            net.zero_grad(set_to_none=True)
            loss_fn(net(x[idx]), y[idx]).mean().backward()
            grads = {name: p.grad for name, p in net.named_parameters()}
            for k, b in enumerate(bends):
                for name, tensor in b.items():
                    tensor.grad = c[k + 1] * grads[name]
            opt.step()
    return [points[0], *[{k: v.detach() for k, v in b.items()} for b in bends], points[-1]]


def dmc_loop(curves: Any, model: nn.Module, data: Dataset, points: list[dict[str, torch.Tensor]], spec: CurveSpec
             ) -> list[dict[str, torch.Tensor]]:
    """dnn-mode-connectivity's method: the MLP rebuilt from ``curves.Linear`` inside ``curves.CurveNet``."""
    linears = [name.removesuffix(".weight") for name, p in model.named_parameters() if name.endswith(".weight")]
    shapes = [tuple(model.get_submodule(name).weight.shape) for name in linears]

    class MLPCurve(nn.Module):
        def __init__(self, num_classes: int, fix_points: list[bool]) -> None:
            super().__init__()
            self.layers = nn.ModuleList([curves.Linear(i, o, fix_points=fix_points) for o, i in shapes])

        def forward(self, x: torch.Tensor, coeffs_t: torch.Tensor) -> torch.Tensor:
            for j, layer in enumerate(self.layers):
                x = layer(x, coeffs_t)
                if j < len(self.layers) - 1:
                    x = torch.relu(x)
            return x

    net = curves.CurveNet(shapes[-1][0], curves.Bezier, MLPCurve, len(points))
    with torch.no_grad():
        for j, name in enumerate(linears):
            for k, p in enumerate(points):
                getattr(net.net.layers[j], f"weight_{k}").copy_(p[f"{name}.weight"])
                getattr(net.net.layers[j], f"bias_{k}").copy_(p[f"{name}.bias"])
    net.train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=spec.lr, momentum=spec.momentum)
    gen = torch.Generator().manual_seed(spec.seed)
    x, y = data.split("train")
    loss_fn = resolve_loss("cross_entropy")
    for _epoch in range(spec.epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], spec.batch_size):
            idx = order[i:i + spec.batch_size]
            t = torch.rand(1, generator=gen, dtype=torch.float64).float()
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x[idx], t), y[idx]).mean().backward()
            opt.step()
    out = []
    for k in range(len(points)):
        out.append({f"{name}.{w}": getattr(net.net.layers[j], f"{w}_{k}").detach().clone()
                    for j, name in enumerate(linears) for w in ("weight", "bias")})
    return out


def load_dmc(path: str | None) -> Any:
    if not path:
        return None
    spec = importlib.util.spec_from_file_location("dmc_curves", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def max_difference(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> float:
    return max(float((x[k] - y[k]).abs().max()) for x, y in zip(a, b, strict=True) for k in x)


def linear_teacher() -> tuple[nn.Module, nn.Module, Dataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    data = Dataset(name="linear-teacher", x_train=x, y_train=x @ torch.randn(4, 8, generator=g).T, x_test=None,
                   y_test=None, task="regression", num_classes=None)
    models = []
    for seed in (1, 2):
        m = build_model("zoo:linear:widths=16-16", input_shape=(8,), output_dim=4, seed=seed)
        opt = torch.optim.Adam(m.parameters(), lr=0.01)
        for _ in range(3000):
            opt.zero_grad()
            ((m(x) - data.y_train) ** 2).mean().backward()
            opt.step()
        models.append(m.eval())
    return models[0], models[1], data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="256-256")
    parser.add_argument("--train-epochs", type=int, default=20, help="SGD epochs of the two endpoint models")
    parser.add_argument("--epochs", type=int, default=3, help="curve-training epochs per timed run")
    parser.add_argument("--curve-epochs", type=int, default=30, help="epochs of the curve whose barrier is reported")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady when shared)")
    parser.add_argument("--dmc", default=None, help="path of dnn-mode-connectivity's curves.py")
    parser.add_argument("--quick", action="store_true", help="small MLP, one repeat: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.widths, args.train_epochs, args.epochs, args.curve_epochs, args.repeats = "32-32", 3, 1, 2, 1
    info = machine_info(set_threads(args.threads))
    dmc = load_dmc(args.dmc)
    data = load_data("mnist1d")
    tmp = Path(tempfile.mkdtemp(prefix="lossatlas-bench-paths-"))
    try:
        models = [train(build_model(f"zoo:mlp:widths={args.widths}", input_shape=data.input_shape,
                                    output_dim=data.output_dim, seed=s), data,
                        TrainSpec(epochs=args.train_epochs, seed=s), tmp / f"m{s}") for s in (1, 2)]
        a, b = models
        spec = CurveSpec(epochs=args.epochs, batch_size=128, lr=0.05)
        start = initial_control_points(parameters_of(a), parameters_of(b), 1)
        methods = {"lossatlas (functional_call)": lambda: fit_control_points(a, data, start, spec, "cross_entropy")[0],
                   "plain per-t loop": lambda: plain_loop(a, data, start, spec)}
        if dmc is not None:
            methods["dnn-mode-connectivity curves.Linear"] = lambda: dmc_loop(dmc, a, data, start, spec)
        best = {name: np.inf for name in methods}
        results: dict[str, Any] = {}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                results[name] = fn()
                best[name] = min(best[name], time.perf_counter() - t0)
        reference = results["lossatlas (functional_call)"]
        curve_rows = [[name, f"{best[name]:.2f}", f"{args.epochs / best[name]:.2f}",
                       f"{best[name] / best['lossatlas (functional_call)']:.2f}×",
                       f"{max_difference(reference, results[name]):.1e}"] for name in methods]

        curve = train_curve(a, b, data, CurveSpec(epochs=args.curve_epochs, points=21), out=tmp / "curve")
        aligned = align_checkpoint(a, b, data, out=tmp / "b_aligned.safetensors", points=21)
        barrier_rows = [[label, f"{ds.attrs[f'{key}_train_loss_max']:.4f}",
                         f"{ds.attrs[f'{key}_train_loss_barrier']:.4f}", f"{ds.attrs[f'{key}_test_loss_barrier']:.4f}"]
                        for label, ds, key in (("straight line A→B", curve, "line"),
                                               (f"Bézier curve, 1 bend, {args.curve_epochs} epochs", curve, "curve"),
                                               ("straight line A→π(B), weight matching", aligned, "after"))]

        string_rows = []
        ends = max(curve["curve_train_loss"].values[[0, -1]])
        problems = [("mnist1d MLPs", a, b, data, "cross_entropy", [f * ends for f in (1.5, 1.2)], 128, 0.05),
                    ("deep linear 8-16-16-4", *linear_teacher(), "mse", [0.05, 0.01], 64, 0.01)]
        for label, ma, mb, dset, loss, thresholds, batch, lr in problems:
            for thr in thresholds:
                t0 = time.perf_counter()
                ds = string_sampling(ma, mb, dset, StringSpec(threshold=thr, batch_size=batch, lr=lr, budget=5000),
                                     out=tmp / f"string-{label}-{thr}", loss=loss)
                seconds = time.perf_counter() - t0
                at = ds.attrs
                string_rows.append([label, f"{thr:.4g}", "yes" if at["success"] else "no", at["n_beads"],
                                    at["sgd_steps"], at["evaluated_points"], f"{seconds:.1f}",
                                    f"{at['normalized_geodesic_length']:.3f}", f"{at['line_max_train_loss']:.4g}",
                                    f"{at['max_train_loss']:.4g}"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_results("paths", {"widths": args.widths, "epochs": args.epochs, "curve_rows": curve_rows,
                            "barrier_rows": barrier_rows, "string_rows": string_rows, "machine": info})
    print(f"\n### Curve training: Bézier, 1 bend, `zoo:mlp:widths={args.widths}` on `mnist1d`, {args.epochs} epochs\n")
    print(markdown_table(["method", "time (s)", "epochs/s", "time vs lossatlas", "max |bend − lossatlas'|"],
                         curve_rows))
    if dmc is None:
        print("\n(dnn-mode-connectivity row skipped: pass --dmc PATH/curves.py)")
    print("\n### Barriers between the two endpoint models (train loss max / barrier, test barrier)\n")
    print(markdown_table(["path", "max train loss", "train barrier", "test barrier"], barrier_rows))
    print("\n### Dynamic string sampling\n")
    print(markdown_table(["problem", "threshold", "connected", "beads", "SGD steps", "evaluated points", "time (s)",
                          "normalised geodesic length", "line max loss", "path max loss"], string_rows))
    print("\n" + machine_line(info))


if __name__ == "__main__":
    main()
