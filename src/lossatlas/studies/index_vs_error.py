"""Dauphin et al. 2014 / Pennington & Bahri 2017: the index of critical points grows with their loss."""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor
from torch.func import functional_call, grad, hessian, vmap

from lossatlas.curvature import HessianOperator, Tolerances, critical_point
from lossatlas.data import Dataset, load_data
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.errors import UserInputError
from lossatlas.studies.batched import batched_descent, model_loss, zoo_runs
from lossatlas.studies.framework import Context, Row, save_figure
from lossatlas.studies.registry import Published, Study, study
from lossatlas.studies.verdict import direction, exact, normal, published, relative_margin

SIGN_REF = ("Dauphin et al. 2014, Identifying and attacking the saddle point problem, Fig. 1 (critical points of "
            "higher error have a larger index); the notes: 'Larger error, larger p', seed 004:691")
EXPONENT_REF = ("Pennington & Bahri 2017, Geometry of neural network loss surfaces via random matrix theory, the index "
                "law alpha = alpha0 |eps/eps_c - 1|^(3/2); the notes write the exponent as 3/2 (seed 004, line 723)")
CRITERION = "a start converged when ||grad L|| <= {tol:g} and critical_point certified its index"
MIN_POINTS = 10
"""Fewest converged critical points (and fewest with index > 0) for the rank correlation and the three-parameter
fit to be read at all; below it the rows are not comparable (unconverged)."""


def _input_dim(spec: str) -> int:
    """Input dimension of a ``random:n=N,d=D`` spec (4 when absent); other specs are loaded to find it."""
    if spec.startswith("random"):
        keys = dict(item.split("=", 1) for item in spec.partition(":")[2].split(",") if "=" in item)
        return int(keys.get("d", 4))
    return int(np.prod(load_data(spec).input_shape))


def gradient_norm_descent(loss_fn: Any, theta: Tensor, iterations: int, grad_tol: float) -> tuple[Tensor, Tensor]:
    """Minimise ½‖∇L(θ)‖² from every row of ``theta (P, n)`` at once, Levenberg–Marquardt style.

    The residual is g = ∇L, its Jacobian the Hessian H, so a Gauss–Newton step solves (H² + μI) δ = −H g
    (through H = QΛQᵀ: δ = −Q diag(λ / (λ² + μ)) Qᵀ g); μ shrinks after a step that lowers ‖g‖ and grows
    after one that does not (then θ stays). Converges to critical points of any index (Dauphin et al. 2014
    find saddles this way; Pennington & Bahri 2017 too). Returns ``(θ, ‖∇L(θ)‖)``.
    """
    g_fn, h_fn = vmap(grad(loss_fn)), vmap(hessian(loss_fn))
    mu = torch.ones(theta.shape[0], dtype=theta.dtype)
    g = g_fn(theta)
    norm = g.norm(dim=1)
    for _ in range(iterations):
        if bool((norm <= grad_tol).all()):
            break
        lam, q = torch.linalg.eigh(h_fn(theta))
        coef = lam / (lam * lam + mu[:, None])
        step = -(q @ (coef[:, :, None] * (q.transpose(1, 2) @ g[:, :, None])))[:, :, 0]
        candidate = theta + step
        g_new = g_fn(candidate)
        better = (g_new.norm(dim=1) < norm) & (norm > grad_tol)
        theta = torch.where(better[:, None], candidate, theta)
        g = torch.where(better[:, None], g_new, g)
        norm = g.norm(dim=1)
        mu = torch.where(better, mu / 3, mu * 4).clamp(1e-12, 1e12)
    return theta, norm


def fit_index_curve(loss: np.ndarray, index: np.ndarray) -> tuple[float, float, float]:
    """Fit α = α₀ (ε/ε_c − 1)^p to critical points with α > 0 (Pennington & Bahri 2017, Eq. for the index):
    ε_c on a grid below the lowest such loss, α₀ and p by least squares in log–log, the ε_c with the smallest
    squared error in α. Returns ``(p, α₀, ε_c)`` (NaN with fewer than 3 distinct points)."""
    keep = index > 0
    eps, alpha = loss[keep], index[keep]
    if np.unique(eps).size < 3:
        return math.nan, math.nan, math.nan
    best = (math.inf, math.nan, math.nan, math.nan)
    for eps_c in np.linspace(1e-3, 1 - 1e-3, 400) * eps.min():
        xs = np.log(eps / eps_c - 1)
        design = np.stack([xs, np.ones_like(xs)], 1)
        (p, log_a), *_ = np.linalg.lstsq(design, np.log(alpha), rcond=None)
        err = float(((np.exp(log_a) * (eps / eps_c - 1) ** p - alpha) ** 2).sum())
        if err < best[0]:
            best = (err, float(p), float(np.exp(log_a)), float(eps_c))
    return best[1], best[2], best[3]


def study_data(spec: str, seed: int) -> Dataset:
    """``random:n=N,d=D``: x ~ N(0, I_D), y ~ N(0, 1) independent (the random-data setting of Pennington &
    Bahri's experiments); anything else goes to :func:`lossatlas.data.load_data`."""
    if not spec.startswith("random"):
        return load_data(spec, seed=seed)
    keys = dict(item.split("=", 1) for item in spec.partition(":")[2].split(",") if "=" in item)
    try:
        n, d = int(keys.get("n", 100)), int(keys.get("d", 4))
    except ValueError:
        raise UserInputError(f"index-vs-error: data '{spec}' must look like random:n=100,d=4") from None
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, d, generator=g), torch.randn(n, 1, generator=g)
    return Dataset(name=spec, x_train=x, y_train=y, x_test=None, y_test=None, task="regression", num_classes=None)


def _cell(p: IndexVsError, cell: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    data = study_data(p.data, p.data_seed)
    x, y = data.x_train.to(torch.float64), data.y_train.to(torch.float64)
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(p.runs)]
    spec = f"zoo:mlp:widths={'-'.join(map(str, p.widths))},activation={p.activation}"
    model, theta = zoo_runs(spec, seeds, input_shape=data.input_shape, output_dim=data.output_dim)
    per_sample = lambda out, t: ((out - t) ** 2).mean(-1)  # noqa: E731 - the library's "mse"
    loss = model_loss(model, x, y, per_sample)
    path = batched_descent(loss, theta, lr=p.lr, steps=max(p.snapshots), snapshot_at=p.snapshots)
    names, shapes = list(theta), [tuple(v.shape[1:]) for v in theta.values()]

    def unflatten(flat: Tensor) -> dict[str, Tensor]:
        out, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            out[name] = flat[offset:offset + math.prod(shape)].reshape(shape)
            offset += math.prod(shape)
        return out

    def flat_loss(flat: Tensor) -> Tensor:
        return per_sample(functional_call(model, unflatten(flat), (x,)), y).mean()

    starts = torch.cat([torch.cat([s[n].reshape(p.runs, -1) for n in names], 1) for _, s in path.snapshots])
    found, gnorm = gradient_norm_descent(flat_loss, starts, p.iterations, p.grad_tol)
    # the library's engine on the network itself (a float32 copy; the operator computes in float64)
    evaluator = Evaluator(copy.deepcopy(model).float(), data, EvalSpec(loss="mse", splits=("train",),
                                                                       batch_size=len(x)))
    rows = []
    for flat, g in zip(found, gnorm, strict=True):
        if g > p.grad_tol:
            rows.append((math.nan, math.nan, math.nan, float(g)))
            continue
        op = HessianOperator(evaluator, unflatten(flat), dtype=torch.float64)
        verdict = critical_point(op, tolerances=Tolerances(grad_tol=10 * p.grad_tol))
        index = math.nan if verdict.index is None else float(verdict.index)  # None: the extremes were not certified
        rows.append((verdict.loss, index, verdict.lambda_min, verdict.grad_norm))
    out = np.array(rows)
    return {"loss": out[:, 0], "index": out[:, 1], "lambda_min": out[:, 2], "grad_norm": out[:, 3],
            "start_step": np.repeat([s for s, _ in path.snapshots], p.runs)}


@study("index-vs-error", paper="Dauphin et al. 2014, Identifying and attacking the saddle point problem (NIPS); "
       "Pennington & Bahri 2017, Geometry of neural network loss surfaces via random matrix theory (ICML)",
       claim="critical points of higher loss have a larger index (fraction of negative Hessian eigenvalues); "
             "Pennington & Bahri predict alpha ~ |eps/eps_c - 1|^(3/2)")
@dataclass(frozen=True)
class IndexVsError(Study):
    """Critical points of a small net at many loss levels: their index against their loss.

    A tanh MLP (zoo ``mlp``, one hidden layer of 8 units, 49 parameters) regressing random Gaussian targets
    on random Gaussian inputs (``random:n=100,d=4``, the random-data setting of Pennington & Bahri; any
    ``lossatlas.data`` spec such as ``teacher:n=100,d=3`` works too), mean squared error.
    ``runs`` GD training runs (batched) give starting points at the ``snapshots`` steps (high loss early,
    low loss late); from each, ½‖∇L‖² is minimised with Gauss–Newton steps built from the exact Hessian
    (:func:`gradient_norm_descent`) until ‖∇L‖ ≤ ``grad_tol``. Every critical point found is classified by
    :func:`lossatlas.curvature.critical_point` on a :class:`~lossatlas.curvature.HessianOperator` of the
    network (dense Hessian, exact index). Reported: the Spearman correlation of index with loss, and the
    fit α = α₀ (ε/ε_c − 1)^p whose exponent Pennington & Bahri predict to be 3/2.
    """

    data: str = "random:n=100,d=4"
    data_seed: int = 0
    widths: tuple[int, ...] = (8,)
    activation: str = "tanh"
    runs: int = 8
    lr: float = 0.05
    snapshots: tuple[int, ...] = (0, 3, 10, 30, 100, 300, 1000, 3000)
    iterations: int = 150
    grad_tol: float = 1e-7
    bootstrap: int = 200

    PUBLISHED = Published(
        source="Pennington & Bahri 2017 (index of critical points vs loss, alpha ∝ (eps/eps_c − 1)^(3/2)), as in the "
               "lecture notes (seed 004, 'Training Error v.s. Eigenvalues'); Dauphin et al. 2014, Fig. 1.",
        columns=("quantity", "value"),
        rows=(("exponent of alpha(eps)", 1.5), ("sign of the index-loss correlation", "positive")))
    NOTES = """Sources and margins. index_increases_with_loss: published (Dauphin et al. 2014, Fig. 1; the notes'
    'Larger error, larger p', seed 004:691), a label compared exactly; 'positive' means a Spearman rank
    correlation of index with loss above 0 at p < 0.05 (our criterion, fixed before any run). exponent:
    published 3/2 (Pennington & Bahri 2017), margin 10% of the published value (the uniform rule for a
    published mean, verdict.relative_margin: 0.15); measured with the bootstrap standard error of the fit.

    Convergence gate (stated before the runs): a start counts only if the Gauss–Newton search reached
    ||grad L|| <= grad_tol and critical_point certified its index; the others are counted in every row's
    note and `unconverged`, never counted as anything. Both rows need at least 10 converged critical
    points, 10 of them with index > 0 (a rank correlation and a three-parameter fit are not read on fewer);
    below that they are not comparable (unconverged). A start is a search for a critical point, not a
    training run: the claim is about the critical points found, so no minimum fraction of starts applies.

    Pennington & Bahri's 3/2 is a random-matrix prediction for large networks; a net of a few dozen
    parameters has few distinct critical points and an index that moves in steps of 1/n, so the fitted
    exponent is a rough number. Critical points found from several starts are counted once per start (the
    same point reached twice weighs twice).

    The Gauss–Newton search on ½‖∇L‖² also stalls at non-critical minima of ‖∇L‖² (Dauphin et al. 2014
    note the same); those starts are the unconverged ones. In our small runs most critical points found lie
    at high loss (from early-training starts); late-training starts rarely converge to ‖∇L‖ ≤ grad_tol
    within the iterations, so the low-loss end is thinly sampled."""

    def __post_init__(self) -> None:
        if self.runs < 1 or self.iterations < 1 or not self.snapshots or min(self.snapshots) < 0:
            raise UserInputError("index-vs-error: runs, iterations >= 1 and non-negative snapshot steps")
        if self.activation not in ("tanh", "sigmoid", "gelu", "relu", "quadratic"):
            raise UserInputError(f"index-vs-error: unsupported activation '{self.activation}'")

    @classmethod
    def full(cls) -> IndexVsError:
        return cls(runs=48, snapshots=(0, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000), iterations=300,
                   bootstrap=1000)

    def run(self, ctx: Context) -> xr.Dataset:
        out = ctx.map(functools.partial(_cell, self), [{"part": "critical-points"}])[0]
        return xr.Dataset({k: ("start", v) for k, v in out.items()})

    def check(self, ds: xr.Dataset) -> list[Row]:
        from scipy.stats import spearmanr

        converged = np.isfinite(ds["index"].values)  # the gate: ||grad L|| <= grad_tol and a certified index
        n, k = converged.size, int(converged.sum())
        loss, index = ds.loss.values[converged], ds["index"].values[converged]
        counted = (f"{k} of {n} starts reached a critical point ({CRITERION.format(tol=self.grad_tol)}); "
                   f"the other {n - k} are left out, not counted as anything")
        sign_expected = published("positive", SIGN_REF, 0.0)
        exponent_expected = published(1.5, EXPONENT_REF, relative_margin(1.5))
        positive = int((index > 0).sum())
        if k < MIN_POINTS or positive < MIN_POINTS:
            criterion = (f"{CRITERION.format(tol=self.grad_tol)}; at least {MIN_POINTS} critical points, "
                         f"{MIN_POINTS} of them with index > 0, are needed (here {k} and {positive})")
            return [Row.unconverged_row(q, {}, e, runs=n, unconverged=n - k, criterion=criterion)
                    for q, e in (("index_increases_with_loss", sign_expected), ("exponent", exponent_expected))]
        rho, pvalue = spearmanr(index, loss)
        row = Row.compare("index_increases_with_loss", {}, sign_expected,
                          direction(float(rho), ("positive", "negative"), p=float(pvalue), n=k), unconverged=n - k,
                          note=f"Spearman rho = {rho:.3f}, p = {pvalue:.2g} over {k} critical points ('positive' or "
                               f"'negative' needs p < 0.05; otherwise the sign is not established: inconclusive); "
                               f"{counted}")
        rows = [row]
        p, _, eps_c = fit_index_curve(loss, index)
        rng = np.random.default_rng(0)
        boots = np.array([fit_index_curve(loss[s], index[s])[0] for s in (rng.integers(0, k, k)
                                                                           for _ in range(self.bootstrap))])
        boots = boots[np.isfinite(boots)]
        measured = normal(p, float(boots.std(ddof=1))) if boots.size > 10 and np.isfinite(p) else exact(p)
        rows.append(Row.compare(
            "exponent", {}, exponent_expected, measured, unconverged=n - k,
            note=f"fit of alpha = alpha0 (eps/eps_c - 1)^p over the {positive} critical points with index > 0 "
                 f"(eps_c = {eps_c:.4g}); interval from the bootstrap standard error ({boots.size} resamples of the "
                 f"critical points); a net of {self.parameter_count()} parameters is far from the random-matrix "
                 f"regime of the prediction; {counted}"))
        return rows

    def parameter_count(self) -> int:
        """Parameters of the study's net (inputs from the data spec's ``d``, default 4; one output)."""
        sizes = (_input_dim(self.data), *self.widths, 1)
        return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def figures(self, ds: xr.Dataset, folder: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ok = np.isfinite(ds.index.values)
        loss, index = ds.loss.values[ok], ds.index.values[ok]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        sc = ax.scatter(loss, index, c=np.log10(1 + ds.start_step.values[ok]), cmap="viridis", s=18)
        fig.colorbar(sc, ax=ax, label="log10(1 + training step of the start)")
        p, a, eps_c = fit_index_curve(loss, index) if ok.sum() >= 3 else (math.nan,) * 3
        if np.isfinite(p):
            grid = np.linspace(eps_c * (1 + 1e-3), loss.max(), 200)
            ax.plot(grid, a * (grid / eps_c - 1) ** p, "r-", label=f"fit: α₀(ε/ε_c − 1)^{p:.2f}")
            ax.legend(fontsize=8)
        ax.set(xlabel="loss ε at the critical point", ylabel="index α (fraction of negative eigenvalues)",
               title="index vs error of critical points")
        return [save_figure(fig, folder / "index_vs_error.png", dpi=110)]


__all__ = ["IndexVsError", "fit_index_curve", "gradient_norm_descent"]
