"""Zhang, Liang & Wainwright 2017: the convexified CNN against the two-layer CNN it relaxes, and convexity made
visible (same optimum from any start, convex lines) on the data lossatlas ships."""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from lossatlas.data import load_data
from lossatlas.engine import EvalSpec
from lossatlas.errors import UserInputError
from lossatlas.landscape import interpolate
from lossatlas.models.ccnn import PatchSpec, build_ccnn, cnn1
from lossatlas.models.nuclear import NuclearSpec, ccnn_start, fit_ccnn
from lossatlas.studies.framework import Context, Row, save_figure
from lossatlas.studies.registry import Published, Study, study
from lossatlas.studies.verdict import MARGIN_ACCURACY, exact, protocol, published, rate, sample, sanity
from lossatlas.training import TrainSpec, train

PATCHES = {"digits": PatchSpec(size=3, stride=1), "mnist1d": PatchSpec(size=5, stride=2)}
"""Patches per dataset: 3×3 windows of the 8×8 digits (P = 36), length-5 windows with stride 2 of MNIST-1D's 40
samples (P = 18); both models use the same patches."""

TABLE_1 = (("basic", 3.37, 2.38), ("rand", 9.83, 7.45), ("rot", 18.84, 13.39), ("img", 14.23, 10.40),
           ("img+rot", 45.96, 42.28))
"""Zhang et al. 2017, Table 1 (one-layer rows): (MNIST variant, CNN-1 (ReLU) error %, CCNN-1 error %)."""

TABLE_1_LINES = (149, 150)
"""Lines of the CNN-1 and CCNN-1 rows of Table 1 in the lecture notes (seed 000)."""

REPORTED = protocol(None, "reported, not judged: Zhang et al. print no number for our data")
CONVEX_LINE = sanity("yes", "a convex programme: its objective is convex along every line")

LINE = "-0.5:1.5:21"


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _line(model_a: torch.nn.Module, model_b: torch.nn.Module, data: Any) -> np.ndarray:
    """Train loss on (1 − t) θ_A + t θ_B for t in :data:`LINE`, through the engine (Goodfellow et al. 2015)."""
    with tempfile.TemporaryDirectory() as tmp:
        ds = interpolate(model_a, model_b, data, x=LINE, eval_spec=EvalSpec(splits=("train",)),
                         out=Path(tmp) / "line.zarr")
        return np.asarray(ds.train_loss.values, dtype=np.float64)


def _ccnn_cell(params: CCNNStudy, cell: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Choose R on a held-out fifth of the training set, then solve the programme from A = 0 and from a random A."""
    data = load_data(cell["data"])
    x, y = data.split("train")
    xt, yt = data.split("test")
    model = build_ccnn(data.input_shape, data.output_dim, PATCHES[cell["data"]], x, kind=params.kind,
                       features=params.features, seed=seed)
    z = model.feature_matrix(x)
    val_acc = np.full(len(params.radii), np.nan)
    if len(params.radii) > 1:
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
        cut = int(0.8 * x.shape[0])
        fit_idx, val_idx = order[:cut], order[cut:]
        for i, radius in enumerate(params.radii):
            fit = fit_ccnn(model, x[fit_idx], y[fit_idx], NuclearSpec(radius=radius, iterations=params.iterations,
                                                                      gap_tol=params.max_fw_gap), features=z[fit_idx])
            val_acc[i] = _accuracy(fit.model, x[val_idx], y[val_idx])
    radius = float(params.radii[int(np.nanargmax(val_acc)) if len(params.radii) > 1 else 0])
    fits = [fit_ccnn(model, x, y, NuclearSpec(radius=radius, iterations=params.iterations, init=init,
                                              init_seed=seed + 1, gap_tol=params.max_fw_gap), features=z)
            for init in ("zero", "random")]
    start = ccnn_start(model, NuclearSpec(radius=radius, init="random", init_seed=seed + 1))
    line = _line(fits[0].model, fits[1].model, data)
    line_start = _line(start, fits[1].model, data)
    return {"radius": np.asarray(radius), "val_accuracy": val_acc,
            "objective": np.array([f.objective for f in fits]), "fw_gap": np.array([f.fw_gap for f in fits]),
            "bias_grad_norm": np.array([f.bias_grad_norm for f in fits]),
            "test_accuracy": np.array([_accuracy(f.model, xt, yt) for f in fits]),
            "distance": np.asarray(float(torch.cat([(fits[0].model.weight - fits[1].model.weight).flatten(),
                                                    fits[0].model.bias - fits[1].model.bias]).detach().norm())),
            "line": line, "line_from_start": line_start, "n_test": np.asarray(yt.shape[0])}


def _cnn_cell(params: CCNNStudy, cell: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """CNN-1 trained by SGD from ``cnn_seeds`` initialisations; the line between the first two solutions."""
    data = load_data(cell["data"])
    xt, yt = data.split("test")
    patches = PATCHES[cell["data"]]
    nets = []
    final_loss = []
    for s in range(params.cnn_seeds):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + s)
            model = cnn1(input_shape=data.input_shape, output_dim=data.output_dim, filters=params.cnn_filters,
                         size=patches.size, stride=patches.stride, padding=patches.padding, pool=patches.pool)
        spec = TrainSpec(epochs=params.cnn_epochs, batch_size=64, lr=params.cnn_lr, momentum=0.9, seed=seed + s,
                         save_every=params.cnn_epochs)
        with tempfile.TemporaryDirectory() as tmp:
            net = train(model, data, spec, Path(tmp) / "run", device=params.device).cpu()
            metrics = np.genfromtxt(Path(tmp) / "run" / "metrics.csv", delimiter=",", names=True)
        nets.append(net.eval())
        final_loss.append(float(np.atleast_1d(metrics["train_loss"])[-1]))
    line = _line(nets[0], nets[1], data) if len(nets) > 1 else np.full(21, np.nan)
    return {"test_accuracy": np.array([_accuracy(n, xt, yt) for n in nets]), "objective": np.array(final_loss),
            "line": line, "n_test": np.asarray(yt.shape[0])}


def second_differences(values: np.ndarray) -> np.ndarray:
    """f(t − h) − 2 f(t) + f(t + h) on an even grid: ≥ 0 everywhere for a convex f."""
    return values[2:] - 2 * values[1:-1] + values[:-2]


def line_barrier(values: np.ndarray) -> float:
    """max over the segment t ∈ [0, 1] minus the larger end (the line's ``t`` grid is :data:`LINE`)."""
    t = np.linspace(-0.5, 1.5, values.size)
    inside = values[(t >= -1e-9) & (t <= 1 + 1e-9)]
    return float(inside.max() - max(inside[0], inside[-1]))


@study("ccnn",
       paper="Zhang, Liang & Wainwright 2017, Convexified Convolutional Neural Networks (ICML; arXiv:1609.01000)",
       claim="relaxing a two-layer CNN to a nuclear-norm-constrained linear model over patch-kernel features gives a "
             "convex programme (one optimum from every start, convex lines) whose test error is lower than that "
             "of the CNN it relaxes (Table 1: CCNN-1 < CNN-1 on every MNIST variant)")
@dataclass(frozen=True)
class CCNNStudy(Study):
    """Convexified CNN (CCNN-1) against CNN-1 on digits and MNIST-1D, and the convexity of its programme.

    Method (Zhang et al. Sec. 3, Alg. 1 with one layer). Patches z_p(x) (:data:`PATCHES`), the RBF patch kernel
    with the median-heuristic γ and ``features`` random Fourier (or Nyström) features Q(z); the predictor
    f_k(x) = tr(Z(x) A_k) + b_k; the programme min F(A, b) (mean cross-entropy) s.t. ‖A‖_* ≤ R, solved by
    accelerated projected gradient with an SVD projection onto the nuclear-norm ball
    (:mod:`lossatlas.models.nuclear`), each solve stopping once its Frank–Wolfe gap is ≤ ``max_fw_gap`` or after
    ``iterations``; a CCNN row counts only when both final solves are so certified. R is chosen among ``radii`` by
    accuracy on a held-out fifth of the training set (the paper cross-validates), then the programme is solved
    on the whole training set from A = 0 and from a random A. CNN-1: the same
    patches, ``cnn_filters`` ReLU filters and a linear layer, trained by SGD (momentum 0.9, batch 64) from
    ``cnn_seeds`` initialisations. Convexity: the objective values reached from the two starts, and the train loss
    along the line between the two solutions (engine, ``interpolate``), for both models.
    """

    datasets: tuple[str, ...] = ("digits",)
    kind: str = "rff"
    features: int = 64
    radii: tuple[float, ...] = (30.0,)
    iterations: int = 1000
    cnn_filters: int = 16
    cnn_epochs: int = 10
    cnn_lr: float = 0.05
    cnn_seeds: int = 2
    max_fw_gap: float = 0.01
    device: str = "cpu"

    PUBLISHED = Published(
        source="Zhang, Liang & Wainwright 2017, Table 1 (classification error %, one-layer rows), reproduced in the "
               "lecture notes (seed 000, 'Convexified CNN: MNIST').",
        columns=("variant", "cnn1_error_pct", "ccnn1_error_pct"), rows=TABLE_1,
        note="Those are MNIST variants (28×28, 10-12k training images); lossatlas ships none of them, so their "
             "numbers are context, not comparable with ours. The measured claim is the ordering CCNN-1 < CNN-1 on "
             "our data, and the convexity of the programme.")
    NOTES = """Sources and margins. Table 1's MNIST-variant rows are published (Zhang et al. 2017, seed 000:149-150),
    margin MARGIN_ACCURACY = 3 points, and not comparable: lossatlas has none of those data sets. ccnn_beats_cnn
    is Table 1's ordering (CCNN-1 below CNN-1 on all five variants), a published label tested on our data: our
    CCNN-1 test error against the mean CNN-1 error over cnn_seeds seeds. Our test errors (Wilson interval on the
    test split for CCNN-1; Student-t over seeds for CNN-1), CNN-1's lines and objective spread are reported only.

    Convergence gate (issue 17, item 3): a CCNN-1 solve is certified to within its Frank–Wolfe gap (F − F* ≤ gap
    while ∇_b F ≈ 0, Jaggi 2013); the claim row counts only when both final solves (A = 0 and a random A) reach
    gap ≤ max_fw_gap = 0.01 nats of mean cross-entropy (two orders below the objective's change across the R
    grid), else it is not comparable (unconverged). Every solve stops as soon as it is certified (the gap is
    checked every 10 iterations), so iterations is a budget. fw_gap_max is that protocol row. Set-up checks that
    fixed the full preset (seed 0, random start, float64, before any claim row was read): at m = 256 the gap after
    1000 iterations is 0.011 (digits) and 0.012 (MNIST-1D) at R = 100, the largest R of the grid, and below 1e-3
    at R = 10 by 500 iterations; the budget is 3000. Features: random Fourier features approximate the RBF patch
    kernel; on 2000 training patches the relative Frobenius error of their Gram matrix is 0.16-0.29 at m = 64,
    0.09-0.18 at m = 256 and 0.06-0.09 at m = 1024 (three seeds); m = 256 is the largest power of two whose
    programme (a design matrix of N × 256·P) fits the full preset's budget, so the full preset uses it (64 before).
    The quick preset keeps m = 64 and one R.

    Sanity rows (cannot fail unless the code is broken, never counted as agreement): objective_spread = |F(start
    1) − F(start 2)| ≤ the larger gap (the certificate bounds it by construction); line_convex and line_barrier of
    CCNN-1 (the objective of a convex programme is convex along every line; its maximum on a segment is at an
    end): second differences of the train loss along the line ≥ −1e-6 (float32 evaluation), barrier ≤ 1e-6. For
    CNN-1, line_convex 'no' and a positive barrier are what non-convexity predicts; they are reported, no paper
    gives them. A first quick run judged objective_spread with 1e-3 · F, which says nothing about convergence."""

    def __post_init__(self) -> None:
        bad = [d for d in self.datasets if d not in PATCHES]
        if bad:
            raise UserInputError(f"ccnn: no patch setting for data '{bad[0]}'; choose from {', '.join(PATCHES)}")
        if not self.radii or min(self.radii) <= 0 or self.iterations < 1 or self.features < 1 or \
                not self.max_fw_gap > 0:
            raise UserInputError("ccnn: radii must be positive, iterations >= 1, features >= 1 and max_fw_gap > 0")
        if self.cnn_seeds < 2 or self.cnn_epochs < 1:
            raise UserInputError("ccnn: cnn_seeds >= 2 (two solutions for the line) and cnn_epochs >= 1")

    @classmethod
    def full(cls) -> CCNNStudy:
        return cls(datasets=("digits", "mnist1d"), features=256, radii=(10.0, 30.0, 100.0), iterations=3000,
                   cnn_epochs=30, cnn_seeds=3)

    def run(self, ctx: Context) -> xr.Dataset:
        ccnn = ctx.map(functools.partial(_ccnn_cell, self), [{"model": "ccnn", "data": d} for d in self.datasets])
        cnn = ctx.map(functools.partial(_cnn_cell, self), [{"model": "cnn", "data": d} for d in self.datasets])
        t = np.linspace(-0.5, 1.5, 21)
        return xr.Dataset(
            {"ccnn_radius": ("data", [c["radius"] for c in ccnn]),
             "ccnn_val_accuracy": (("data", "radius"), np.stack([c["val_accuracy"] for c in ccnn])),
             "ccnn_objective": (("data", "start"), np.stack([c["objective"] for c in ccnn])),
             "ccnn_fw_gap": (("data", "start"), np.stack([c["fw_gap"] for c in ccnn])),
             "ccnn_bias_grad_norm": (("data", "start"), np.stack([c["bias_grad_norm"] for c in ccnn])),
             "ccnn_test_accuracy": (("data", "start"), np.stack([c["test_accuracy"] for c in ccnn])),
             "ccnn_distance": ("data", [c["distance"] for c in ccnn]),
             "ccnn_line": (("data", "t"), np.stack([c["line"] for c in ccnn])),
             "ccnn_line_from_start": (("data", "t"), np.stack([c["line_from_start"] for c in ccnn])),
             "cnn_test_accuracy": (("data", "seed"), np.stack([c["test_accuracy"] for c in cnn])),
             "cnn_objective": (("data", "seed"), np.stack([c["objective"] for c in cnn])),
             "cnn_line": (("data", "t"), np.stack([c["line"] for c in cnn])),
             "n_test": ("data", [c["n_test"] for c in ccnn])},
            coords={"data": list(self.datasets), "start": ["zero", "random"], "radius": list(self.radii), "t": t,
                    "seed": np.arange(self.cnn_seeds)})

    def check(self, ds: xr.Dataset) -> list[Row]:
        rows = [Row.compare("test_error_pct", {"data": f"MNIST-{v}", "model": m},
                            published(pub, f"Zhang, Liang & Wainwright 2017, Table 1 ({m} row, MNIST-{v}), seed "
                                           f"000:{line}", MARGIN_ACCURACY), exact(None),
                            note="Zhang et al.'s Table 1 (MNIST variants we do not have): published context only")
                for v, cnn_pub, ccnn_pub in TABLE_1
                for m, pub, line in (("CNN-1", cnn_pub, TABLE_1_LINES[0]), ("CCNN-1", ccnn_pub, TABLE_1_LINES[1]))]
        for d in ds.data.values:
            cell = ds.sel(data=d)
            n_test = int(cell.n_test)
            ccnn_err = 100 * (1 - float(cell.ccnn_test_accuracy.values[0]))
            cnn_errors = 100 * (1 - cell.cnn_test_accuracy.values)
            cnn_err = float(cnn_errors.mean())
            gaps, bias_grads = cell.ccnn_fw_gap.values, cell.ccnn_bias_grad_norm.values
            unsolved = int((~(gaps <= self.max_fw_gap)).sum())  # a NaN gap is not a certificate
            solved = f"Frank–Wolfe gaps {', '.join(f'{g:.2g}' for g in gaps)} (threshold {self.max_fw_gap:g})"
            rows.append(Row.compare("test_error_pct", {"data": str(d), "model": "CCNN-1"}, REPORTED,
                                    rate(round(ccnn_err / 100 * n_test), n_test),
                                    note=f"R = {float(cell.ccnn_radius):g}; {solved}"))
            rows.append(Row.compare("test_error_pct", {"data": str(d), "model": "CNN-1"}, REPORTED,
                                    sample(cnn_errors)))
            rows.append(Row.compare("fw_gap_max", {"data": str(d), "model": "CCNN-1"}, protocol(
                0.0, f"convergence criterion of the convex programme: Frank–Wolfe gap ≤ {self.max_fw_gap:g} (a "
                     "certified bound on F − F*, Jaggi 2013) from both starts", margin=self.max_fw_gap),
                exact(float(np.max(gaps))), note=f"after at most {self.iterations} iterations; ‖∇_b F‖ = "
                                                 f"{', '.join(f'{g:.1g}' for g in bias_grads)}"))
            claim = published("yes", "Zhang, Liang & Wainwright 2017, Table 1: CCNN-1 below CNN-1 on all five MNIST "
                                     "variants, seed 000:149-150", 0.0)
            note = f"CCNN-1 {ccnn_err:.1f}% vs CNN-1 {cnn_err:.1f}% (mean of {cnn_errors.size} seeds)"
            if ccnn_err >= cnn_err:
                radius = float(cell.ccnn_radius)
                edge = " (the largest of radii: the validation optimum may lie beyond)" if radius == max(
                    self.radii) and len(self.radii) > 1 else ""
                note += (f", R = {radius:g}{edge}, m = {self.features} {self.kind} features of "
                         f"{PATCHES[str(d)].size}-wide patches; the kernel approximation, R grid and patch setting "
                         "were fixed before the run and not tuned after it")
            if unsolved:
                rows.append(Row.unconverged_row("ccnn_beats_cnn", {"data": str(d)}, claim, runs=gaps.size,
                                                unconverged=unsolved, note=f"{solved}; {note}",
                                                criterion=f"Frank–Wolfe gap ≤ {self.max_fw_gap:g}"))
            else:
                rows.append(Row.compare("ccnn_beats_cnn", {"data": str(d)}, claim,
                                        exact("yes" if ccnn_err < cnn_err else "no"), note=note))
            objective = cell.ccnn_objective.values
            rows.append(Row.compare("objective_spread", {"data": str(d), "model": "CCNN-1"}, sanity(
                0.0, "certificate: F − F* ≤ the Frank–Wolfe gap of each solve while ∇_b F ≈ 0 (Jaggi 2013), so "
                     "|F₁ − F₂| ≤ the larger gap by construction", margin=float(np.max(gaps))),
                exact(float(abs(objective[0] - objective[1]))),
                note="two starts (A = 0, random A) of one convex programme"))
            cnn_obj = cell.cnn_objective.values
            rows.append(Row.compare("objective_spread", {"data": str(d), "model": "CNN-1"}, REPORTED,
                                    exact(float(cnn_obj.max() - cnn_obj.min())),
                                    note="final train losses of the SGD seeds"))
            for model, line in (("CCNN-1", cell.ccnn_line.values), ("CNN-1", cell.cnn_line.values)):
                convex = "yes" if second_differences(line).min() >= -1e-6 else "no"
                key = {"data": str(d), "model": model}
                if model == "CCNN-1":
                    rows.append(Row.compare("line_convex", key, CONVEX_LINE, exact(convex)))
                    rows.append(Row.compare("line_barrier", key, sanity(
                        0.0, "a convex function on a segment peaks at an end", margin=1e-6), exact(line_barrier(line))))
                else:
                    rows.append(Row.compare("line_convex", key, REPORTED, exact(convex),
                                            note="'no' is what non-convexity predicts; no paper gives it"))
                    rows.append(Row.compare("line_barrier", key, REPORTED, exact(line_barrier(line))))
            start = "yes" if second_differences(cell.ccnn_line_from_start.values).min() >= -1e-6 else "no"
            rows.append(Row.compare("line_convex", {"data": str(d), "model": "CCNN-1", "from": "random start"},
                                    CONVEX_LINE, exact(start)))
        return rows

    def figures(self, ds: xr.Dataset, folder: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = ds.sizes["data"]
        fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
        for ax, d in zip(axes[0], ds.data.values, strict=True):
            cell = ds.sel(data=d)
            ax.plot(ds.t, cell.cnn_line, "o-", label="CNN-1: solution of seed 0 → of seed 1")
            ax.plot(ds.t, cell.ccnn_line, "s-", label="CCNN-1: solution from A = 0 → from a random A")
            ax.plot(ds.t, cell.ccnn_line_from_start, "^--",
                    label="CCNN-1: random A → its solution (t > 1 leaves ‖A‖_* ≤ R)")
            ax.axvline(0, color="grey", lw=0.5)
            ax.axvline(1, color="grey", lw=0.5)
            ax.set(yscale="log", xlabel="t", ylabel="train loss",
                   title=f"{d}: CCNN-1 {100 * (1 - float(cell.ccnn_test_accuracy[0])):.1f}% vs CNN-1 "
                         f"{100 * (1 - float(cell.cnn_test_accuracy.mean())):.1f}% test error")
            ax.legend(fontsize=7)
        return [save_figure(fig, folder / "ccnn_lines.png", dpi=120)]


__all__ = ["CCNNStudy", "PATCHES", "TABLE_1", "line_barrier", "second_differences"]
