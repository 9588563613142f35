"""Li et al. 2018 (Sec. 5, Figs. 2-3): small vs large batches, with and without weight decay, and sharpness."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from lossatlas.curvature.hvp import HessianOperator
from lossatlas.curvature.sharpness import engine_value_and_gradient, epsilon_sharpness
from lossatlas.directions import DirectionSpec, Ignore, Norm
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.errors import UserInputError
from lossatlas.landscape import interpolate, surface
from lossatlas.params import parameters_of
from lossatlas.paths.barrier import path_eval_spec
from lossatlas.studies.batch_size_checks import MEASURES, SHARPER_WHEN_LARGER, batch_size_figures, claim_rows
from lossatlas.studies.framework import Context, Row, cell_id, cell_seed
from lossatlas.studies.registry import Published, Study, study
from lossatlas.studies.runs import TrainedRun, derived_seeds, read_run, study_data, train_run, weights
from lossatlas.training import OptimizerName, TrainSpec


def _run(params: BatchSizeWeightDecay, study_dir: str, study_seed: int, wd: float, batch: int, seed_index: int,
         fit: bool = True) -> tuple[TrainedRun, list[int]]:
    """One SGD run (trained, or read back when ``fit`` is False); the four configurations of one seed index share
    θ₀, the minibatch seed and the probe directions."""
    seeds = derived_seeds(cell_seed(study_seed, {"seed": seed_index}), 4)
    key = {"weight_decay": wd, "batch_size": batch, "seed": seed_index}
    decay = params.lr_decay != 1.0 and params.epochs >= 2  # Li et al.'s first step decay, at half the epochs
    spec = TrainSpec(epochs=params.epochs, batch_size=batch, lr=params.lr, momentum=params.momentum,
                     weight_decay=wd, optimizer=OptimizerName.sgd, seed=seeds[1], save_every=max(1, params.epochs // 2),
                     switch_at=params.epochs // 2 if decay else None, optimizer2=OptimizerName.sgd if decay else None,
                     lr2=params.lr * params.lr_decay if decay else None)
    folder, data = Path(study_dir) / "runs" / cell_id(key), study_data(params.data)
    if not fit:
        return read_run(folder, model=params.model, data=data, init_seed=seeds[0], epochs=params.epochs), seeds
    return train_run(folder, model=params.model, data=data, spec=spec, init_seed=seeds[0], device=params.device), seeds


def _run_cell(params: BatchSizeWeightDecay, study_dir: str, study_seed: int, cell: dict[str, Any],
              seed: int) -> dict[str, np.ndarray]:
    """Train one configuration and measure its minimum: λmax, ε-sharpness, 1-D curves, weights, ‖θ‖₂."""
    run, seeds = _run(params, study_dir, study_seed, cell["weight_decay"], cell["batch_size"], cell["seed"])
    data = study_data(params.data)
    folder = run.folder
    hess = Evaluator(run.final, data, EvalSpec(splits=("train",), subset=params.hessian_samples,
                                               subset_seed=seeds[2]), device=params.device)
    top = HessianOperator(hess, dtype="float32").eigenpairs(1, "largest", tol=1e-3, max_matvecs=300, seed=seeds[2])
    full = Evaluator(run.final, data, EvalSpec(splits=("train",)), device=params.device)
    eps = epsilon_sharpness(engine_value_and_gradient(full), parameters_of(run.final), epsilon=params.epsilon,
                            max_iter=params.eps_iterations, seed=seeds[3])
    grid = f"-{params.curve_range:g}:{params.curve_range:g}:{params.curve_points}"
    curves = {}
    for name, norm in (("fn", Norm.filter), ("unit", Norm.model)):
        ds = surface(run.final, data, x=grid, directions=DirectionSpec(norm=norm, ignore=Ignore.biasbn, seed=seeds[3]),
                     out=folder / f"curve_{name}.zarr", device=params.device)
        curves[name] = ds
    kept = float(np.sqrt(sum(float((p.double() ** 2).sum()) for p in parameters_of(run.final).values()
                             if p.dim() > 1)))  # 'model' norm: the direction has this length at α = 1
    m = run.metrics
    return {"test_error": np.array(1.0 - m["test_accuracy"][-1]), "train_loss": np.array(m["train_loss"][-1]),
            "train_error": np.array(1.0 - m["train_accuracy"][-1]), "param_norm": m["param_norm"],
            "lambda_max": np.array(float(top.eigenvalues[0])), "lambda_converged": np.array(bool(top.converged[0])),
            "eps_sharpness": np.array(eps.sharpness), "alpha": curves["fn"].x.values,
            "fn_train_loss": curves["fn"].train_loss.values, "fn_test_loss": curves["fn"].test_loss.values,
            "unit_train_loss": curves["unit"].train_loss.values, "unit_test_loss": curves["unit"].test_loss.values,
            "unit_scale": np.array(kept), "weights": weights(run.final).astype(np.float32)}


def _pair_cell(params: BatchSizeWeightDecay, study_dir: str, study_seed: int, cell: dict[str, Any],
               seed: int) -> dict[str, np.ndarray]:
    """Li et al.'s Fig. 2: the line from the small-batch (α = 0) to the large-batch solution (α = 1)."""
    small, _ = _run(params, study_dir, study_seed, cell["weight_decay"], params.small_batch, cell["seed"], fit=False)
    large, _ = _run(params, study_dir, study_seed, cell["weight_decay"], params.large_batch, cell["seed"], fit=False)
    points = 4 * ((params.curve_points - 1) // 4) + 1  # α = 0 and 1 on the grid
    ds = interpolate(small.final, large.final, study_data(params.data), x=f"-0.5:1.5:{points}",
                     eval_spec=path_eval_spec(), out=Path(study_dir) / "runs" / f"{cell_id(cell)}_interpolation.zarr",
                     device=params.device)
    return {"x": ds.x.values, **{f"line_{m}": ds[m].values for m in
                                 ("train_loss", "test_loss", "train_accuracy", "test_accuracy")}}


@study("batch-size-weight-decay",
       paper="Li, Xu, Taylor, Studer & Goldstein 2018, Visualizing the loss landscape of neural nets (NeurIPS), "
             "Sec. 5, Figs. 2-3; Keskar et al. 2017 for ε-sharpness",
       claim="Small batches give lower test error than large ones with and without weight decay; without "
             "normalisation the apparent sharpness flips when weight decay is turned on, while filter-normalised "
             "plots order the minima by test error")
@dataclass(frozen=True)
class BatchSizeWeightDecay(Study):
    """Small-batch (SB) and large-batch (LB) SGD, weight decay 0 and 5e-4, on a VGG-9-style net (Li et al. 2018).

    Protocol (Li et al. Sec. 5 at laptop scale): ``zoo:vgg9_1d:width=16`` (VGG-9's 7 conv + 2 FC layers with
    BatchNorm, a quarter of its widths, on MNIST-1D's 40-sample signals); SGD with momentum 0.9 and learning
    rate 0.1, divided by 10 (``lr_decay``) after half the epochs (Li et al. divide it by 10 after 150, 225 and
    275 of 300 epochs), batch ``small_batch`` and ``large_batch`` (ratio 32; Li et al.: 128 and
    8192 on CIFAR-10), weight decay 0 and 5e-4, ``epochs`` epochs for every configuration; the four
    configurations of one seed share θ₀, the minibatch seed and the probe directions. Per run: test error,
    ‖θ‖₂ per epoch, the weights (tensors with ≥ 2 dims); λmax of the training loss (certified Lanczos on
    ``hessian_samples`` training samples, BN in eval mode); Keskar et al.'s ε-sharpness (ε = 1e-3, L-BFGS-B
    in the box, :mod:`lossatlas.curvature.sharpness`); the training loss along one random direction with
    filter normalisation (biases and BN ignored, α in filter units) and along the same draw scaled to unit
    Euclidean length (α in parameter-space distance), and each curve's width at ``width_height`` nats above
    the minimum. Per weight decay and seed: the line from the SB (α = 0) to the LB solution (α = 1) on
    [−0.5, 1.5], with BatchNorm statistics re-estimated on the training split at every point
    (:func:`lossatlas.paths.barrier.path_eval_spec`; Li et al. interpolate the running statistics with the
    weights, whose variances turn negative past the ends), and the width of that curve at ``width_height``
    around each end.
    """

    weight_decays: tuple[float, ...] = (0.0, 5e-4)
    small_batch: int = 32
    large_batch: int = 1024
    seeds: int = 1
    epochs: int = 3
    lr: float = 0.1
    lr_decay: float = 0.1
    momentum: float = 0.9
    model: str = "zoo:vgg9_1d:width=8"
    data: str = "mnist1d"
    hessian_samples: int = 500
    epsilon: float = 1e-3
    eps_iterations: int = 5
    curve_range: float = 1.0
    curve_points: int = 13
    width_height: float = 0.1
    large_quantile: float = 0.9
    small_quantile: float = 0.1
    device: str = "cpu"

    PUBLISHED = Published(
        source="Li et al. 2018 (NeurIPS), Sec. 5: Fig. 2 (SB→LB interpolation, ‖θ‖₂ during training, weight "
               "histograms) and Fig. 3 (filter-normalised 1-D/2-D plots, test error in each title), VGG-9 on "
               "CIFAR-10, batch 128 vs 8192, weight decay 0 vs 5e-4, as reproduced in the lecture notes (seed 000, "
               "lines 33 and 42); Keskar et al. 2017 (ICLR), Table 3 (ε-sharpness of LB minima larger)",
        columns=("claim", "weight_decay", "published"),
        rows=(("small_batch_lower_test_error", 0.0, "yes"), ("small_batch_lower_test_error", 5e-4, "yes"),
              ("interpolation_flatter_end", 0.0, "SB"), ("interpolation_flatter_end", 5e-4, "LB"),
              ("weight_norm_grows (SB and LB)", 0.0, "yes"), ("more_large_weights", 0.0, "SB"),
              ("more_small_weights", 5e-4, "SB"), ("sharper_batch fn_width", "both", "LB"),
              ("sharper_batch eps_sharpness", 0.0, "LB"), ("sharpness_orders_test_error fn_width", "all", "yes")),
        note="directions only: Li et al. print test errors on CIFAR-10 in the figure titles, not comparable with "
             "MNIST-1D, so every published row is the direction of an effect (batch_size_checks.CLAIMS)")
    NOTES = """Sources: every published row is a direction Li et al. 2018 state or show (Figs. 2-3, quoted in the
    lecture notes, seed 000 lines 33 and 42), or Keskar et al. 2017's (ε-sharpness, Table 3); Li et al.'s
    numbers are CIFAR-10 errors, so no row compares a number. Rows with no expected value (test error per
    configuration, sharpness by measures or at weight decays the papers say nothing about, Spearman ρ,
    ‖θ‖₂ with weight decay) are measurements shown beside the claims, 'not comparable'.

    Verdict of a direction: the effect is measured per seed as a paired difference (LB − SB test error; SB
    minus LB width around each end of the SB→LB line; SB − LB share of large or small weights; LB − SB
    sharpness, widths counted as sharper when smaller) or, for the ordering claim, as Spearman's ρ of
    sharpness with test error over the runs (percentile bootstrap, 1000 resamples). The measured direction is
    the side of 0 on which its 95% interval (Student t over seeds) lies: the row agrees when that is the
    published direction, differs when it is the other (Holm-corrected within the claim), and is inconclusive
    when the interval contains 0 (3 seeds give wide intervals: only clear effects are decided). weight_norm_grows
    is exact: the mean ‖θ‖₂ over seeds rises from epoch 0 to the middle and to the end (with BatchNorm, the
    weights feeding a BN layer are scale-invariant and plain SGD without decay can only lengthen them; the
    last layer and momentum are what could make the row fail).

    Convergence gate (stated before the full run): a run's end point counts as a minimum when its final
    training error is at most 1% (training accuracy ≥ 99%, as Keskar et al.'s SB and LB minima); comparisons
    of minima use the seeds whose SB and LB runs both passed, and a cell with fewer than half (or fewer than
    two) is 'not comparable (unconverged)', never 'differs'; weight_norm_grows, a property of training, has no
    gate. The quick preset (one seed, 3 epochs, an eighth of the widths, 13-point curves, 5 L-BFGS-B
    iterations, λmax on 500 samples) is a smoke test: its runs are far from converged (the large batch takes
    12 steps), so its comparisons of minima are not comparable.

    Scale: MNIST-1D (4000 training, 1000 test signals) with a VGG-9-style net of a quarter (full) or an
    eighth (quick) of VGG-9's widths, batches 32 and 1024, 20 epochs (full) with one step decay of the
    learning rate; Li et al. trained 300 epochs with three. Digits (359 test images) was tried first with batches
    16/1024 and 40 epochs: every configuration reached 98.3-100% test accuracy (one seed), too few test
    images apart to order the runs, so the study runs on MNIST-1D. Weights: 'large' means |w| above the
    pooled (SB and LB of one weight decay and seed) 90th percentile of |w|, 'small' below its 10th.

    Protocol history: the first full run used a constant learning rate. Its small-batch runs with weight
    decay did not converge (training error 3-15% at the end, against 0-1% for the others), so they were no
    minima; that run found the small batch *not* better (test error SB 2.8% vs LB 2.5% without weight decay,
    10.9% vs 2.9% with it), the SB→LB line flatter around SB at both weight decays, SB with more large
    weights, and LB sharper by filter-normalised width, λmax and ε-sharpness at both weight decays. The
    learning-rate step of Li et al.'s schedule was then added (without other changes) and the study run
    again."""

    def __post_init__(self) -> None:
        if self.small_batch >= self.large_batch or self.small_batch < 1:
            raise UserInputError("batch-size-weight-decay: need 1 <= small_batch < large_batch")
        if min(self.seeds, self.epochs, self.hessian_samples, self.eps_iterations) < 1 or self.curve_points < 5:
            raise UserInputError("batch-size-weight-decay: seeds, epochs, hessian_samples, eps_iterations must be "
                                 "positive and curve_points >= 5")
        if not self.weight_decays or any(w < 0 for w in self.weight_decays) or not self.width_height > 0 or \
                not self.lr_decay > 0:
            raise UserInputError("batch-size-weight-decay: weight decays must be >= 0, width_height and lr_decay > 0")

    @classmethod
    def full(cls) -> BatchSizeWeightDecay:
        return cls(seeds=3, epochs=20, model="zoo:vgg9_1d:width=16", hessian_samples=1000, eps_iterations=10,
                   curve_points=41)

    def run(self, ctx: Context) -> xr.Dataset:
        study_dir, batches = str(ctx.folder), (self.small_batch, self.large_batch)
        cells = [{"weight_decay": w, "batch_size": b, "seed": s}
                 for w in self.weight_decays for b in batches for s in range(self.seeds)]
        runs = ctx.map(functools.partial(_run_cell, self, study_dir, ctx.seed), cells)
        lines = ctx.map(functools.partial(_pair_cell, self, study_dir, ctx.seed),
                        [{"weight_decay": w, "seed": s} for w in self.weight_decays for s in range(self.seeds)])
        shape = (len(self.weight_decays), 2, self.seeds)

        def stack(results: list[dict[str, np.ndarray]], name: str, dims: tuple[int, ...]) -> np.ndarray:
            return np.stack([r[name] for r in results]).reshape(*dims, *results[0][name].shape)

        run_dims = ("weight_decay", "batch", "seed")
        data: dict[str, Any] = {k: (run_dims, stack(runs, k, shape)) for k in
                                ("test_error", "train_error", "train_loss", "lambda_max", "lambda_converged",
                                 "eps_sharpness", "unit_scale")}
        data["param_norm"] = ((*run_dims, "epoch"), stack(runs, "param_norm", shape))
        data["weights"] = ((*run_dims, "weight_index"), stack(runs, "weights", shape))
        for k in ("fn_train_loss", "fn_test_loss", "unit_train_loss", "unit_test_loss"):
            data[k] = ((*run_dims, "alpha"), stack(runs, k, shape))
        for k in ("line_train_loss", "line_test_loss", "line_train_accuracy", "line_test_accuracy"):
            data[k] = (("weight_decay", "seed", "x"), stack(lines, k, (len(self.weight_decays), self.seeds)))
        return xr.Dataset(data, coords={"weight_decay": list(self.weight_decays), "batch": ["SB", "LB"],
                                        "batch_size": ("batch", list(batches)), "seed": np.arange(self.seeds),
                                        "epoch": np.arange(self.epochs + 1), "alpha": runs[0]["alpha"],
                                        "x": lines[0]["x"]})

    def check(self, ds: xr.Dataset) -> list[Row]:
        return claim_rows(self, ds)

    def figures(self, ds: xr.Dataset, folder: Path) -> list[Path]:
        return batch_size_figures(self, ds, folder)


__all__ = ["MEASURES", "SHARPER_WHEN_LARGER", "BatchSizeWeightDecay"]
