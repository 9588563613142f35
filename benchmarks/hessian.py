"""Top-5 Hessian eigenvalues and a 100-bin spectral density: lossatlas against PyHessian and
hessian-eigenthings, with scipy's ``eigsh`` over lossatlas' HVP as the reference, in one process.

Problem: ``zoo:mlp:widths=256-256`` (40-256-256-10, 78,858 parameters) on ``mnist1d`` (all 4000 training
samples), trained briefly with :func:`lossatlas.training.train` (SGD) so the point is a trained network.
Every tool sees the same float32 model and the same four batches of 1000 samples (equal batches, so
hessian-eigenthings' mean of batch means is the full-split mean here).

Rows (each after one untimed warm-up product, one timed run each):

* **reference**: ``scipy.sparse.linalg.eigsh(k=5, which="LA", tol=1e-10)`` over lossatlas' float64 HVP;
* **lossatlas** ``lanczos`` (thick restart, certified residuals) over float32 and float64 HVPs;
* **eigsh over lossatlas' float32 HVP** (the scipy round trip, as curvlinops does);
* **PyHessian** 0.1 ``hessian.eigenvalues(top_n=5)`` (power iteration + deflation, its defaults);
* **hessian-eigenthings** 1.0.0a5 ``lanczos(op, k=5)`` with its defaults (``max_iter = 2k``, no restart),
  then with ``max_iter`` doubled until all five are within 1e-3 of the reference ("made correct").

Density: lossatlas ``spectral_density(probes=P, steps=80, bins=100)`` against hessian-eigenthings
``spectral_density(num_runs=P, lanczos_steps=80, num_grid_points=100)`` and PyHessian ``density(iter=80,
n_v=P)``. Run ``make -C benchmarks hessian`` (or ``.venv-bench/bin/python benchmarks/hessian.py``);
``--quick`` is a smoke run on a smaller MLP.

Critical points (``--only critical`` runs just this part): the cost of ``lossatlas hessian --critical`` on its
dense path (the whole Hessian from n products through the cached per-batch graphs, every eigenvalue, the top-5
pairs from the same decomposition) against ``--top 5`` (certified Lanczos), each a full
:func:`hessian_analysis` call (evaluator, gradient, graphs included), alternated over ``--repeats`` rounds, best
kept, on CNNs of about 2,000 parameters trained for 2 epochs: ``zoo:cnn1d:channels=14`` on ``mnist1d`` (1,998)
and ``zoo:bncnn:channels=8-8-8-8`` on ``digits`` (1,986). The issue's target: the ratio at most 10.

HVP / gradient (``--only ratio``): the cost of ONE full-split Hessian-vector product over ONE full-split gradient,
float32, both through :class:`HessianOperator` (``op.matvec(v)`` against ``op.value_and_gradient()``), for
``cache=False`` (each product records and drops one batch's graph of ∇L at a time) and for the cached per-batch
graphs (forced where the default's memory estimate declines them; the first product, which records the graphs, is
reported apart), on ``zoo:mlp:widths=256-256``/``mnist1d``, ``zoo:bncnn``/``digits`` and the built-in transformer
``zoo:gpt:layers=2,width=128,heads=4``/``modadd:p=97,frac=0.3`` (trained 1 epoch); PyHessian's
``dataloader_hv_product`` against a plain ``loss.backward()`` over the same dataloader, and its single-batch mode
(``data=(x, y)``: the graph of ∇L kept between products) against a one-batch gradient. For the transformer PyHessian
gets ``F.cross_entropy(logits.flatten(0, -2), y.flatten(), ignore_index=-100)``; it fails through PyTorch's fused CPU
attention (no double backward), which the table says, and is then run under ``sdpa_kernel(SDPBackend.MATH)`` as
lossatlas does inside its products. Best of ``max(--repeats, 3)`` rounds, tools alternated, order rotated; wall and
CPU seconds. Target: an HVP at most 3× a gradient. ``--profile`` adds torch.profiler tables of the transformer's
gradient and products.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import cpu_pressure, machine_info, machine_line, markdown_table, set_threads, timed, write_results
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, TensorDataset

from lossatlas.curvature.analysis import HessianSpec, hessian_analysis
from lossatlas.curvature.density import spectral_density
from lossatlas.curvature.hvp import HessianOperator
from lossatlas.curvature.krylov import Which, lanczos
from lossatlas.data import load_data
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.models import build_model
from lossatlas.training import TrainSpec, train

try:
    from pyhessian import hessian as PyHessian  # noqa: N812 - the peer's class name
    from pyhessian.utils import hessian_vector_product
except ImportError:
    PyHessian = None
try:
    import hessian_eigenthings as eigenthings
except ImportError:
    eigenthings = None

K, BATCH, SEED = 5, 1000, 0


def trained_mlp(widths: str, epochs: int, workdir: Path) -> tuple[nn.Module, Any]:
    data = load_data("mnist1d")
    model = build_model(f"zoo:mlp:widths={widths}", input_shape=data.input_shape, output_dim=data.output_dim,
                        seed=SEED)
    spec = TrainSpec(epochs=epochs, batch_size=64, lr=0.05, seed=SEED)
    return train(model, data, spec, workdir / "train").eval(), data


def log(message: str) -> None:
    print(f"[hessian bench] {message}", file=sys.stderr, flush=True)


def rel_error(values: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(np.sort(values)[::-1][:K] - reference) / np.abs(reference)))


def eigsh_top(op: HessianOperator) -> tuple[np.ndarray, int]:
    from scipy.sparse.linalg import LinearOperator, eigsh

    start = op.hvp_count
    lin = LinearOperator((op.n, op.n), matvec=lambda v: op.matvec(torch.from_numpy(np.asarray(v).ravel())).numpy(),
                         dtype=np.float64)
    v0 = np.random.default_rng(SEED).standard_normal(op.n)
    values = eigsh(lin, k=K, which="LA", tol=1e-10, v0=v0, return_eigenvectors=False)
    return np.sort(values)[::-1], op.hvp_count - start


def loader(data: Any) -> DataLoader:
    return DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=BATCH, shuffle=False)


class Counted:
    """Counts a peer operator's products."""

    def __init__(self, op: Any) -> None:
        self.op, self.count = op, 0
        inner = op.matvec

        def matvec(v: torch.Tensor) -> torch.Tensor:
            self.count += 1
            return inner(v)

        op.matvec = matvec


def eigenthings_operator(model: nn.Module, data: Any) -> Counted:
    op = eigenthings.HessianOperator(model, loader(data), eigenthings.supervised_loss(nn.CrossEntropyLoss()))
    op.matvec(torch.randn(op.size))  # warm-up
    return Counted(op)


Tool = Callable[[], dict[str, Any]]
"""One timed run: returns ``values`` (top-5), ``hvps`` and ``certified``."""


def lossatlas_tool(op: HessianOperator, tol: float) -> Tool:
    def run() -> dict[str, Any]:
        start = op.hvp_count
        res = lanczos(op.matvec, op.n, K, Which.largest, tol=tol, seed=SEED)
        return dict(values=res.eigenvalues.numpy(), hvps=op.hvp_count - start,
                    certified=f"{int(res.converged.sum())}/{K}")

    return run


def eigsh_tool(op: HessianOperator) -> Tool:
    def run() -> dict[str, Any]:
        values, hvps = eigsh_top(op)
        return dict(values=values, hvps=hvps, certified="—")

    return run


def pyhessian_tool(model: nn.Module, data: Any) -> Tool:
    h = PyHessian(model, nn.CrossEntropyLoss(), dataloader=loader(data), cuda=False)
    count = {"n": 0}
    inner = h.dataloader_hv_product

    def product(v: list[torch.Tensor]) -> Any:
        count["n"] += 1
        return inner(v)

    inner([torch.randn_like(p) for p in h.params])  # warm-up
    h.dataloader_hv_product = product

    def run() -> dict[str, Any]:
        torch.manual_seed(SEED)
        count["n"] = 0
        values, _ = h.eigenvalues(top_n=K)
        return dict(values=np.asarray(values), hvps=count["n"], certified="—")

    return run


def eigenthings_tool(model: nn.Module, data: Any, max_iter: int | None) -> Tool:
    counted = eigenthings_operator(model, data)
    kwargs = {} if max_iter is None else {"max_iter": max_iter}

    def run() -> dict[str, Any]:
        counted.count = 0
        res = eigenthings.lanczos(counted.op, k=K, which="LA", seed=SEED, **kwargs)
        return dict(values=res.eigenvalues.detach().cpu().numpy().astype(np.float64), hvps=counted.count,
                    certified=f"{int(res.converged.sum())}/{K} (own test)")

    return run


def eigenthings_max_iter(model: nn.Module, data: Any, reference: np.ndarray) -> tuple[int, list[dict[str, Any]]]:
    """Double ``max_iter`` from the default 2k until all five are within 1e-3 of the reference."""
    tried, max_iter = [], 2 * K
    while True:
        out = eigenthings_tool(model, data, max_iter)()
        error = rel_error(out["values"], reference)
        tried.append(dict(max_iter=max_iter, error=error, certified=out["certified"]))
        log(f"hessian-eigenthings max_iter={max_iter}: max rel. error {error:.2e}")
        if error <= 1e-3 or max_iter >= 640:
            return max_iter, tried
        max_iter *= 2


def hvp_seconds(model: nn.Module, data: Any, ops: dict[str, HessianOperator], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds of one full-split product per tool, interleaved."""
    fns: dict[str, Callable[[], Any]] = {}
    for name, op in ops.items():
        v = torch.randn(op.n, dtype=torch.float64)
        fns[f"lossatlas ({name})"] = lambda op=op, v=v: op.matvec(v)
    if PyHessian is not None:
        h = PyHessian(model, nn.CrossEntropyLoss(), dataloader=loader(data), cuda=False)
        vp = [torch.randn_like(p) for p in h.params]
        fns["PyHessian"] = lambda: h.dataloader_hv_product(vp)
    if eigenthings is not None:
        op_e = eigenthings_operator(model, data).op
        ve = torch.randn(op_e.size)
        fns["hessian-eigenthings"] = lambda: op_e.matvec(ve)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn)[0])
    return {k: min(v) for k, v in times.items()}


def run(widths: str, epochs: int, probes: int, repeats: int, workdir: Path) -> dict[str, Any]:
    model, data = trained_mlp(widths, epochs, workdir)
    ev = Evaluator(model, data, EvalSpec(batch_size=BATCH, splits=("train",)))
    op64, op32 = HessianOperator(ev, dtype="float64"), HessianOperator(ev, dtype="float32")
    for op in (op64, op32):
        op.matvec(torch.randn(op.n, dtype=torch.float64))  # warm-up (torch.func's first call is slow)
    seconds, (reference, hvps) = timed(lambda: eigsh_top(op64))
    log(f"reference {reference} in {seconds:.1f}s, {hvps} HVPs")
    rows: list[dict[str, Any]] = [dict(tool="scipy eigsh over lossatlas HVP (float64): reference", seconds=seconds,
                                       hvps=hvps, values=reference.tolist(), error=0.0, certified="—")]
    tools: dict[str, Tool] = {"lossatlas lanczos (float32, tol 1e-4)": lossatlas_tool(op32, 1e-4),
                              "lossatlas lanczos (float64, tol 1e-8)": lossatlas_tool(op64, 1e-8),
                              "scipy eigsh over lossatlas HVP (float32)": eigsh_tool(op32)}
    notes: dict[str, str] = {}
    tried: list[dict[str, Any]] = []
    if PyHessian is not None:
        tools["PyHessian eigenvalues(top_n=5), defaults"] = pyhessian_tool(model, data)
    else:
        notes["PyHessian"] = "not installed"
    if eigenthings is not None:
        needed, tried = eigenthings_max_iter(model, data, reference)
        tools["hessian-eigenthings lanczos, defaults (max_iter=2k)"] = eigenthings_tool(model, data, None)
        tools[f"hessian-eigenthings lanczos, max_iter={needed} (made correct)"] = eigenthings_tool(model, data, needed)
    else:
        notes["hessian-eigenthings"] = "not installed"
    best: dict[str, dict[str, Any]] = {}
    for round_ in range(repeats):
        for name, tool in tools.items():
            try:
                seconds, out = timed(tool)
            except Exception as exc:  # noqa: BLE001 - a crashing peer is a result
                notes[name] = f"crashed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                continue
            log(f"round {round_}: {name}: {seconds:.1f}s, {out['hvps']} HVPs")
            if name not in best or seconds < best[name]["seconds"]:
                best[name] = dict(tool=name, seconds=seconds, hvps=out["hvps"],
                                  values=np.sort(out["values"])[::-1].tolist(),
                                  error=rel_error(out["values"], reference), certified=out["certified"])
    rows += [best[name] for name in tools if name in best]
    rows += [dict(tool=name, note=note) for name, note in notes.items()]
    per_hvp = hvp_seconds(model, data, {"float32": op32, "float64": op64}, repeats=5)
    log(f"one HVP: {per_hvp}")
    density = density_rows(model, data, op32, probes)
    return {"n_params": op64.n, "samples": int(data.x_train.shape[0]), "reference": reference.tolist(),
            "top5": rows, "eigenthings_max_iter": tried, "seconds_per_hvp": per_hvp, "density": density,
            "repeats": repeats}


def density_rows(model: nn.Module, data: Any, op32: HessianOperator, probes: int) -> list[dict[str, Any]]:
    rows = []
    start = op32.hvp_count
    seconds, dens = timed(lambda: spectral_density(op32, probes=probes, steps=80, bins=100, seed=SEED))
    integral = float(np.trapezoid(dens.density.numpy(), dens.grid.numpy()))
    rows.append(dict(tool=f"lossatlas spectral_density (probes={probes}, steps=80, bins=100)", seconds=seconds,
                     hvps=op32.hvp_count - start, integral=integral))
    if eigenthings is not None:
        counted = eigenthings_operator(model, data)
        seconds, res = timed(lambda: eigenthings.spectral_density(counted.op, num_runs=probes, lanczos_steps=80,
                                                                   num_grid_points=100, seed=SEED))
        rows.append(dict(tool=f"hessian-eigenthings spectral_density (num_runs={probes}, steps=80, 100 points)",
                         seconds=seconds, hvps=counted.count,
                         integral=float(np.trapezoid(res.density.numpy(), res.grid.numpy()))))
    else:
        rows.append(dict(tool="hessian-eigenthings spectral_density", note="not installed"))
    if PyHessian is not None:
        h = PyHessian(model, nn.CrossEntropyLoss(), dataloader=loader(data), cuda=False)
        try:
            seconds, _ = timed(lambda: h.density(iter=80, n_v=probes))
            rows.append(dict(tool=f"PyHessian density (iter=80, n_v={probes})", seconds=seconds))
        except Exception as exc:  # noqa: BLE001 - a crashing peer is a result
            last = traceback.extract_tb(exc.__traceback__)[-1]
            rows.append(dict(tool=f"PyHessian density (iter=80, n_v={probes})",
                             note=f"crashed: {type(exc).__name__}: {str(exc).splitlines()[0]} "
                                  f"({Path(last.filename).name}:{last.lineno})"))
    else:
        rows.append(dict(tool="PyHessian density", note="not installed"))
    log(f"{rows}")
    return rows


CRITICAL_MODELS = (("zoo:cnn1d:channels=14", "mnist1d"), ("zoo:bncnn:channels=8-8-8-8", "digits"))


def trained(spec: str, data_name: str, epochs: int, workdir: Path) -> tuple[nn.Module, Any]:
    data = load_data(data_name)
    model = build_model(spec, input_shape=data.input_shape, output_dim=data.output_dim, seed=SEED)
    if epochs:
        model = train(model, data, TrainSpec(epochs=epochs, batch_size=64, lr=0.05, seed=SEED),
                      workdir / spec.replace(":", "_")).eval()
    return model, data


def critical_rows(repeats: int, epochs: int, workdir: Path, models: Any = CRITICAL_MODELS) -> list[dict[str, Any]]:
    """``--critical`` (dense path) against ``--top 5``: seconds (best of alternated rounds) and their ratio."""
    rows = []
    for spec, data_name in models:
        model, data = trained(spec, data_name, epochs, workdir)
        runs = {"top-5": HessianSpec(top=5), "critical (dense) + top-5": HessianSpec(top=5, critical=True)}
        best: dict[str, float] = {}
        out: dict[str, Any] = {}
        hessian_analysis(model, data, HessianSpec(top=1))  # warm-up: torch.func's first calls are slow
        for round_ in range(repeats):
            for name, hspec in runs.items():
                seconds, (ds, _) = timed(lambda m=model, d=data, h=hspec: hessian_analysis(m, d, h))
                best[name] = min(best.get(name, float("inf")), seconds)
                out[name] = ds.attrs
                log(f"{spec} round {round_}: {name}: {seconds:.1f}s, {ds.attrs['hvp_count']} HVPs")
        crit = out["critical (dense) + top-5"]
        rows.append(dict(model=spec, data=data_name, n=crit["n_params"], samples=int(data.x_train.shape[0]),
                         top5_seconds=best["top-5"], top5_hvps=out["top-5"]["hvp_count"],
                         critical_seconds=best["critical (dense) + top-5"], critical_hvps=crit["hvp_count"],
                         ratio=best["critical (dense) + top-5"] / best["top-5"], kind=crit["critical_kind"],
                         counts=[crit["negative_count"], crit["zero_count"], crit["positive_count"]]))
    return rows


def critical_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["model (data, samples)", "n", "`--top 5` s (HVPs)", "`--critical` dense s (HVPs)", "ratio", "s per HVP: "
         "top-5 / dense column", "verdict (neg/zero/pos)"],
        [[f"`{r['model']}` ({r['data']}, {r['samples']})", r["n"], f"{r['top5_seconds']:.2f} ({r['top5_hvps']})",
          f"{r['critical_seconds']:.2f} ({r['critical_hvps']})", f"**{r['ratio']:.1f}×**",
          f"{r['top5_seconds'] / r['top5_hvps']:.4f} / {r['critical_seconds'] / r['critical_hvps']:.4f}",
          f"{r['kind']} ({'/'.join(map(str, r['counts']))})"] for r in rows])


def tables(result: dict[str, Any]) -> str:
    ours = next(r for r in result["top5"] if r["tool"].startswith("lossatlas lanczos (float32"))
    top = []
    for r in result["top5"]:
        if "note" in r:
            top.append([r["tool"], r["note"], "", "", "", ""])
            continue
        ratio = r["seconds"] / ours["seconds"]
        top.append([r["tool"], f"{r['seconds']:.1f}", r["hvps"], f"{r['error']:.1e}", r["certified"], f"{ratio:.2f}×"])
    hvp = markdown_table(["one full-split HVP (best of 5)", "seconds"],
                         [[k, f"{v:.3f}"] for k, v in result["seconds_per_hvp"].items()])
    tried = ", ".join(f"max_iter={t['max_iter']}: {t['error']:.1e}" for t in result["eigenthings_max_iter"])
    dens = []
    for r in result["density"]:
        dens.append([r["tool"], r["note"] if "note" in r else f"{r['seconds']:.1f}", r.get("hvps", ""),
                     f"{r['integral']:.6f}" if "integral" in r else ""])
    return "\n\n".join([
        f"Top-{K} eigenvalues, {result['n_params']:,} parameters, {result['samples']} samples; reference "
        + ", ".join(f"{v:.5g}" for v in result["reference"]),
        markdown_table(["tool", "seconds", "HVPs", "max rel. error vs eigsh", "certified", "time / lossatlas f32"],
                       top),
        f"hessian-eigenthings max. relative error by max_iter: {tried or 'not run'}",
        hvp,
        markdown_table(["spectral density", "seconds", "HVPs", "∫ density"], dens),
    ])


@dataclass(frozen=True)
class RatioProblem:
    """One model of the HVP / gradient comparison: a zoo spec on a built-in dataset."""

    name: str
    model: str
    data: str


RATIO_PROBLEMS = (
    RatioProblem("mlp", "zoo:mlp:widths=256-256", "mnist1d"),
    RatioProblem("bncnn", "zoo:bncnn", "digits"),
    RatioProblem("gpt", "zoo:gpt:layers=2,width=128,heads=4", "modadd:p=97,frac=0.3"),
)
RATIO_QUICK = (
    RatioProblem("mlp", "zoo:mlp:widths=32-32", "mnist1d"),
    RatioProblem("bncnn", "zoo:bncnn:channels=8-8-8-8", "digits"),
    RatioProblem("gpt", "zoo:gpt:layers=1,width=32,heads=2", "modadd:p=23,frac=0.3"),
)
RATIO_TARGET = 3.0


def token_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The batch contract's loss for any labels: class (N,) or per-token (N, T) with -100 ignored, as a mean."""
    return F.cross_entropy(logits.flatten(0, -2), y.flatten(), ignore_index=-100)


def first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:160] if lines else ''}"


def loader_gradient(model: nn.Module, dl: DataLoader, criterion: Callable[..., torch.Tensor]) -> list[torch.Tensor]:
    """∇ of the sample-weighted mean over ``dl``, one ``loss.backward()`` per batch: PyHessian's product loop without
    ``create_graph`` (PyHessian has no gradient routine of its own)."""
    n = len(dl.dataset)  # type: ignore[arg-type]
    model.zero_grad(set_to_none=True)
    for xb, yb in dl:
        (criterion(model(xb), yb) * (xb.shape[0] / n)).backward()
    return [p.grad for p in model.parameters()]  # type: ignore[misc]


def ratio_problem(problem: RatioProblem, repeats: int, epochs: int, workdir: Path) -> dict[str, Any]:
    """Seconds of one full-split gradient and one full-split HVP (float32), per tool, best of ``repeats`` rounds
    with the tools alternated (their order rotated every round); each tool warmed up once, untimed."""
    model, data = trained(problem.model, problem.data, epochs, workdir)
    ev = Evaluator(model, data, EvalSpec(batch_size=BATCH, splits=("train",)))
    uncached = HessianOperator(ev, dtype="float32", cache=False)
    default = HessianOperator(ev, dtype="float32")
    chose = default.cache
    cached = default if chose else HessianOperator(ev, dtype="float32", cache=True)
    row: dict[str, Any] = dict(problem=problem.name, model=problem.model, data=problem.data, n=uncached.n,
                               samples=uncached.num_samples, terms=int(uncached.terms), default_caches=chose,
                               graph_estimate_mib=uncached._graph_bytes() / 2**20,
                               budget_mib=ev.spec.memory_bytes / 2**20, notes={})
    v = torch.randn(uncached.n, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
    vd = uncached.to_dict(v.float())
    x, y = data.x_train, data.y_train
    criterion = token_cross_entropy if y.dim() > 1 else nn.CrossEntropyLoss()
    fns: dict[str, Callable[[], Any]] = {
        "lossatlas gradient": uncached.value_and_gradient,
        "lossatlas HVP, cache=False": lambda: uncached.matvec(v),
        "lossatlas HVP, cached graphs": lambda: cached.matvec(v),
    }
    uncached.matvec(v)  # torch.func's first call in a process is slow (~1 s): not part of the graph recording
    seconds, out = timed(lambda: cached.matvec(v))  # records every batch's graph of the gradient, then one sweep
    row["first_cached_product_s"] = seconds
    reference = out
    if PyHessian is not None:
        ph_model = copy.deepcopy(model).eval()
        names = [n for n, _ in ph_model.named_parameters()]
        h = PyHessian(ph_model, criterion, dataloader=loader(data), cuda=False)
        vp = [vd[n].clone() for n in names]
        try:
            h.dataloader_hv_product(vp)
            plain_ok = True
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run is a result
            row["notes"]["PyHessian"] = f"does not run: {first_line(exc)}"
            plain_ok = False
        kernel: Callable[[], Any] = contextlib.nullcontext
        if not plain_ok:  # e.g. no double backward through the fused CPU attention: the math kernel, as lossatlas
            kernel = functools.partial(sdpa_kernel, SDPBackend.MATH)
            row["pyhessian_math_kernel"] = True
        dl = loader(data)
        fns["PyHessian gradient (loss.backward per batch)"] = lambda: loader_gradient(ph_model, dl, criterion)

        def ph_hvp() -> Any:
            with kernel():
                return h.dataloader_hv_product(vp)[1]

        try:
            hv = ph_hvp()
            flat = torch.cat([t.reshape(-1).double() for t in hv])
            row["pyhessian_rel_diff"] = float((flat - reference).norm() / reference.norm())
            fns["PyHessian HVP (dataloader_hv_product)"] = ph_hvp
        except Exception as exc:  # noqa: BLE001
            row["notes"]["PyHessian (math kernel)"] = f"does not run: {first_line(exc)}"
        # PyHessian's single-batch mode keeps the graph of ∇L: data=(x, y) runs backward(create_graph=True) once
        one_model = copy.deepcopy(model).eval()
        one_params = list(one_model.parameters())
        fns["PyHessian gradient, one batch"] = lambda: torch.autograd.grad(criterion(one_model(x), y), one_params)
        try:
            with kernel():
                seconds, h1 = timed(lambda: PyHessian(one_model, criterion, data=(x, y), cuda=False))
            row["pyhessian_one_batch_graph_s"] = seconds

            def ph_one() -> Any:
                return hessian_vector_product(h1.gradsH, h1.params, vp)

            flat = torch.cat([t.reshape(-1).double() for t in ph_one()])
            row["pyhessian_one_batch_rel_diff"] = float((flat - reference).norm() / reference.norm())
            fns["PyHessian HVP, one batch, graph kept"] = ph_one
        except Exception as exc:  # noqa: BLE001
            row["notes"]["PyHessian one batch"] = f"does not run: {first_line(exc)}"
    else:
        row["notes"]["PyHessian"] = "not installed"
    for fn in fns.values():  # warm-up (torch.func's first calls are slow)
        fn()
    row["uncached_rel_diff"] = float((uncached.matvec(v) - reference).norm() / reference.norm())
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for round_ in range(repeats):
        shift = round_ % len(order)
        for name in order[shift:] + order[:shift]:
            gc.collect()  # PyHessian's backward(create_graph=True) leaves parameter <-> graph cycles for the collector
            start = time.process_time()
            times[name].append(timed(fns[name])[0])
            cpu[name].append(time.process_time() - start)
        log(f"{problem.name} round {round_}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
    row["seconds"] = {k: min(v) for k, v in times.items()}
    row["cpu_seconds"] = {k: min(v) for k, v in cpu.items()}
    row["all_seconds"] = times
    fns.clear()
    gc.collect()
    return row


def ratio_rows(problems: Any, repeats: int, epochs: int, workdir: Path) -> list[dict[str, Any]]:
    return [ratio_problem(p, repeats, epochs, workdir) for p in problems]


def ratio_table(rows: list[dict[str, Any]]) -> str:
    """One line per (model, tool): gradient and HVP seconds, their ratio (wall; CPU seconds in parentheses) against
    the ≤ 3× target."""
    out = []

    def pair(r: dict[str, Any], grad: str, hvp: str) -> tuple[str, str, float, str]:
        s, c = r["seconds"], r["cpu_seconds"]
        ratio = s[hvp] / s[grad]
        return (f"{s[grad]:.3f}", f"{s[hvp]:.3f}", ratio, f"{ratio:.2f}× ({c[hvp] / c[grad]:.2f}×)")

    for r in rows:
        label = f"{r['problem']} (n={r['n']:,})"
        default = (f"default {'caches' if r['default_caches'] else '**does not cache**'}: estimate "
                   f"{r['graph_estimate_mib']:.0f} MiB vs budget {r['budget_mib']:.0f} MiB; first product (records "
                   f"the graphs) {r['first_cached_product_s']:.3f} s")
        for name, extra in (("lossatlas HVP, cache=False", f"rel. Δ vs cached {r['uncached_rel_diff']:.1e}"),
                            ("lossatlas HVP, cached graphs", default)):
            g, h, ratio, text = pair(r, "lossatlas gradient", name)
            out.append([label, name, g, h, f"**{text}**", "met" if ratio <= RATIO_TARGET else "missed", extra])
        kernel = " (math SDPA kernel, set by us)" if r.get("pyhessian_math_kernel") else ""
        if "PyHessian HVP (dataloader_hv_product)" in r["seconds"]:
            g, h, _, text = pair(r, "PyHessian gradient (loss.backward per batch)",
                                 "PyHessian HVP (dataloader_hv_product)")
            out.append([label, "PyHessian `dataloader_hv_product`" + kernel, g, h, text, "",
                        f"rel. Δ vs lossatlas {r['pyhessian_rel_diff']:.1e}"])
        if "PyHessian HVP, one batch, graph kept" in r["seconds"]:
            g, h, _, text = pair(r, "PyHessian gradient, one batch", "PyHessian HVP, one batch, graph kept")
            out.append([label, "PyHessian `data=` one batch, graph kept" + kernel, g, h, text, "",
                        f"graph recorded in {r['pyhessian_one_batch_graph_s']:.3f} s; rel. Δ "
                        f"{r['pyhessian_one_batch_rel_diff']:.1e}"])
        for tool, note in r["notes"].items():
            out.append([label, tool, "", "", "", "", note])
    models = "; ".join(f"{r['problem']}: `{r['model']}` on `{r['data']}`, {r['samples']} samples" for r in rows)
    return models + "\n\n" + markdown_table(
        ["model", "tool", "gradient s", "HVP s", "HVP / gradient, wall (CPU)", f"≤ {RATIO_TARGET:g}×", "notes"], out)


def profile_gpt_hvp(problem: RatioProblem, workdir: Path, rows: int = 18) -> str:
    """torch.profiler tables (self CPU time) of one gradient, one uncached and one cached HVP of ``problem``."""
    from torch.profiler import ProfilerActivity, profile

    model, data = trained(problem.model, problem.data, 0, workdir)
    ev = Evaluator(model, data, EvalSpec(batch_size=BATCH, splits=("train",)))
    uncached = HessianOperator(ev, dtype="float32", cache=False)
    cached = HessianOperator(ev, dtype="float32", cache=True)
    v = torch.randn(uncached.n, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
    parts = []
    for name, fn in (("gradient", uncached.value_and_gradient), ("HVP, cache=False", lambda: uncached.matvec(v)),
                     ("HVP, cached graphs", lambda: cached.matvec(v))):
        fn()
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            seconds, _ = timed(fn)
        parts.append(f"#### {problem.model}: {name} ({seconds:.3f} s)\n\n```\n"
                     + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows) + "```")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 40-32-32-10 MLP, 2 epochs: a smoke run")
    parser.add_argument("--only", choices=("all", "top5", "critical", "ratio"), default="all", help="run one part")
    parser.add_argument("--profile", action="store_true",
                        help="with the ratio part: torch.profiler tables of the transformer's gradient and HVPs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--probes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the top-5 runs (best kept)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    info = machine_info(threads, peers=("PyHessian", "hessian-eigenthings", "scipy"))
    widths, epochs = ("32-32", 2) if args.quick else ("256-256", args.epochs)
    text = machine_line(info)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in ("all", "top5"):
            result = run(widths, epochs, args.probes, args.repeats, Path(tmp))
            result.update(machine=info, model=f"zoo:mlp:widths={widths}", epochs=epochs, quick=args.quick)
            if not args.quick:
                write_results("hessian", result)
            text += "\n\n" + tables(result)
        if args.only in ("all", "critical"):
            models = (("zoo:cnn1d:channels=4", "mnist1d"),) if args.quick else CRITICAL_MODELS
            rows = critical_rows(args.repeats, 0 if args.quick else 2, Path(tmp), models)
            if not args.quick:
                write_results("hessian_critical", {"machine": info, "rows": rows, "repeats": args.repeats})
            text += "\n\n" + critical_table(rows)
        if args.only in ("all", "ratio"):
            problems = RATIO_QUICK if args.quick else RATIO_PROBLEMS
            repeats = 1 if args.quick else max(args.repeats, 3)
            ratio = ratio_rows(problems, repeats, 0 if args.quick else 1, Path(tmp))
            info["cpu_pressure_at_end"] = cpu_pressure()
            if not args.quick:
                write_results("hessian_ratio", {"machine": info, "rows": ratio, "repeats": repeats})
            text += (f"\n\nOne full-split HVP / one full-split gradient, float32, best of {repeats} alternated "
                     f"(CPU pressure at the end {info['cpu_pressure_at_end']} %)\n\n" + ratio_table(ratio))
            if args.profile:
                text += "\n\n" + profile_gpt_hvp(problems[-1], Path(tmp))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
