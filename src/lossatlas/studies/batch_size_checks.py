"""Checks and figures of the ``batch-size-weight-decay`` study (Li et al. 2018, Sec. 5): the claims as rows.

This module imports nothing from the study itself: what the checks need from its parameters is the small
:class:`BatchSizeParams` protocol, so ``batch_size_weight_decay`` imports this module and not the other way round.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import xarray as xr

from lossatlas.curvature.sharpness import curve_width
from lossatlas.studies.framework import Row, converged_runs
from lossatlas.studies.verdict import Expected, direction, exact, normal, paired_test, published, sample

MEASURES = ("fn_width", "unit_width", "lambda_max", "eps_sharpness")
"""Sharpness measures: filter-normalised curve width, Euclidean curve width, top Hessian eigenvalue, Keskar's ε."""
SHARPER_WHEN_LARGER = {"fn_width": False, "unit_width": False, "lambda_max": True, "eps_sharpness": True}

SOLVED_TRAIN_ERROR = 0.01
"""Convergence gate: a run's end point counts as a minimum when its final training error is at most 1% (training
accuracy ≥ 99%; Keskar et al. 2017 compare SB and LB minima that fit their training sets, Li et al. 2018 train
300 epochs to near-zero training loss). Stated before the full run; runs above it are counted, never compared."""
CRITERION = f"final training error <= {100 * SOLVED_TRAIN_ERROR:g}%"

LI = "Li, Xu, Taylor, Studer & Goldstein 2018 (NeurIPS), Sec. 5"
KESKAR = "Keskar, Mudigere, Nocedal, Smelyanskiy & Tang 2017 (ICLR)"

#: (claim, weight decay or None for every weight decay) → the expected direction, with its source. Every published
#: row is a direction the paper states or shows (Li et al. print CIFAR-10 numbers only, not comparable with ours).
CLAIMS: dict[tuple[str, float | None], Expected] = {
    **{("small_batch_lower_test_error", w): published(
        "yes", f"{LI}, Fig. 2 (test errors under (a), (d)) and Fig. 3 titles: SB below LB at weight decay 0 and "
               "5e-4; seed 000:42", 0.0) for w in (0.0, 5e-4)},
    ("interpolation_flatter_end", 0.0): published(
        "SB", f"{LI}, Fig. 2(a): on the SB→LB line without weight decay the SB end is the flatter; seed 000:33", 0.0),
    ("interpolation_flatter_end", 5e-4): published(
        "LB", f"{LI}, Fig. 2(d): with weight decay the LB end is the flatter (the apparent sharpness flips); "
              "seed 000:33", 0.0),
    ("weight_norm_grows", 0.0): published(
        "yes", f"{LI}, Fig. 2(b): 'when weight decay is disabled, the weight norm grows steadily'; seed 000:33", 0.0),
    ("weight_norm_grows", 5e-4): published(
        None, f"{LI}, Fig. 2(e) plots ‖θ‖₂ with weight decay; the text states no direction", 0.0),
    ("more_large_weights", 0.0): published(
        "SB", f"{LI}, Fig. 2(c): 'small-batch methods produce more large weights with zero weight decay'; "
              "seed 000:33", 0.0),
    ("more_large_weights", 5e-4): published(None, f"{LI}, Fig. 2(f): no claim about large weights with weight decay",
                                            0.0),
    ("more_small_weights", 5e-4): published(
        "SB", f"{LI}, Fig. 2(f): '... and more small weights with non-zero weight decay'; seed 000:33", 0.0),
    ("more_small_weights", 0.0): published(None, f"{LI}, Fig. 2(c): no claim about small weights without decay", 0.0),
    **{("sharper_batch:fn_width", w): published(
        "LB", f"{LI}, Fig. 3: with filter normalisation the LB minima are the sharper at both weight decays; "
              "seed 000:42", 0.0) for w in (0.0, 5e-4)},
    ("sharper_batch:eps_sharpness", 0.0): published(
        "LB", f"{KESKAR}, Table 3 (ε-sharpness in the full space): LB minima sharper than SB", 0.0),
    ("sharpness_orders_test_error:fn_width", None): published(
        "yes", f"{LI}, Fig. 3 and its discussion: filter-normalised sharpness orders the minima by test error; "
               "seed 000:42", 0.0),
}
NO_CLAIM = {
    "test_error_pct": f"{LI}, Fig. 3 titles: CIFAR-10 test errors of VGG-9, not comparable with MNIST-1D",
    "sharper_batch": f"{LI}: no claim for this measure at this weight decay (Li et al. argue unnormalised "
                     "sharpness misleads)",
    "spearman_sharpness_test_error": f"{LI}: the correlation is stated in words; no coefficient is printed",
    "sharpness_orders_test_error": f"{LI}: no claim for this measure",
}


def expected(claim: str, wd: float | None = None, measure: str | None = None) -> Expected:
    """The expected value of ``claim`` (at weight decay ``wd``, for sharpness ``measure``), or a published row with
    no value (the paper makes no claim there: the row is not comparable)."""
    name = f"{claim}:{measure}" if measure else claim
    for (c, w), value in CLAIMS.items():
        if c == name and (w is None or wd is None or np.isclose(w, wd)):
            return value
    return published(None, NO_CLAIM.get(claim, f"{LI}: no claim at this weight decay"), 0.0)


class BatchSizeParams(Protocol):
    """What the checks read from the study's parameters."""

    @property
    def width_height(self) -> float: ...

    @property
    def large_quantile(self) -> float: ...

    @property
    def small_quantile(self) -> float: ...


def measures(params: BatchSizeParams, ds: xr.Dataset) -> xr.Dataset:
    """Per run: ``fn_width`` (α units), ``unit_width`` (parameter-space distance), ``lambda_max``,
    ``eps_sharpness`` (percent), with dims (weight_decay, batch, seed)."""
    alpha = ds.alpha.values

    def width(curves: xr.DataArray) -> xr.DataArray:
        return xr.apply_ufunc(lambda c: curve_width(alpha, c, params.width_height).width, curves,
                              input_core_dims=[["alpha"]], vectorize=True)

    return xr.Dataset({"fn_width": width(ds.fn_train_loss), "unit_width": width(ds.unit_train_loss) * ds.unit_scale,
                       "lambda_max": ds.lambda_max, "eps_sharpness": ds.eps_sharpness})


def solved(ds: xr.Dataset) -> np.ndarray:
    """The convergence gate per run (dims weight_decay, batch, seed): :data:`SOLVED_TRAIN_ERROR`, finite loss."""
    return np.asarray((ds.train_error <= SOLVED_TRAIN_ERROR) & np.isfinite(ds.train_loss), dtype=bool)


# -- direction claims ---------------------------------------------------------------------------------------------
def direction_row(quantity: str, key: Mapping[str, Any], expected: Expected, mean: float,
                  ci: tuple[float, float] | None, p: float | None, labels: tuple[str, str], *, n: int,
                  note: str, unconverged: int = 0, family: str | None = None) -> Row:
    """A published direction (one of ``labels``) against a measured effect, judged by the verdict rule's
    :func:`~lossatlas.studies.verdict.direction` estimate: ``labels[0]`` when the 95% interval of the effect lies
    above 0, ``labels[1]`` when below; otherwise *inconclusive* (never *differs*); a direction against the
    published one keeps the test's ``p`` for Holm's correction across its family. This adds the note only."""
    interval = f" (95% CI [{ci[0]:.3g}, {ci[1]:.3g}])" if ci else ""
    text = f"{note}: {mean:.3g}{interval} over {n} runs"
    measured = direction(mean, labels, ci=ci, p=p, n=n)
    if measured.value is None:
        text += "; the interval contains 0 (or too few runs): no direction"
    return Row.compare(quantity, key, expected, measured, note=text, family=family, unconverged=unconverged)


def paired_row(quantity: str, exp: Expected, diffs: np.ndarray, labels: tuple[str, str], note: str,
               key: Mapping[str, Any], *, pair: np.ndarray) -> Row:
    """:func:`direction_row` of the paired SB/LB differences of the seeds whose two runs both converged (``pair``);
    ``not comparable (unconverged)`` when too few did."""
    gone = int((~pair).sum())
    if not comparable(pair):
        return Row.unconverged_row(quantity, key, exp, runs=pair.size, unconverged=gone,
                                   criterion=f"{CRITERION}, both SB and LB of a seed")
    kept = np.asarray(diffs, dtype=np.float64)[pair]
    mean, ci, p = paired_test(kept)
    return direction_row(quantity, key, exp, mean, ci, p, labels, n=int(np.isfinite(kept).sum()), note=note,
                         unconverged=gone)


def comparable(mask: np.ndarray) -> bool:
    """The gate of a cell: enough runs converged (:func:`~lossatlas.studies.framework.converged_runs`), or every
    run did (a cell of one run is compared, and is inconclusive wherever an interval is needed)."""
    mask = np.asarray(mask, dtype=bool)
    return converged_runs(mask)[1] or bool(mask.size and mask.all())


# -- the rows -----------------------------------------------------------------------------------------------------
def claim_rows(params: BatchSizeParams, ds: xr.Dataset) -> list[Row]:
    """Every claim of Li et al.'s Sec. 5 (and Keskar et al.'s ε-sharpness) as rows; minima compared only where
    both runs of a seed passed the convergence gate."""
    rows: list[Row] = []
    ms = measures(params, ds)
    ok = solved(ds)  # (weight_decay, batch, seed)
    seeds = ds.sizes["seed"]
    for i, wd in enumerate(ds.weight_decay.values):
        w = float(wd)
        at = ds.sel(weight_decay=wd)
        err = 100 * at.test_error.values  # (batch, seed)
        for b, name in enumerate(ds.batch.values):
            key = {"weight_decay": w, "batch": str(name)}
            mask, exp = ok[i, b], expected("test_error_pct", w)
            if not comparable(mask):
                rows.append(Row.unconverged_row("test_error_pct", key, exp, runs=seeds,
                                                unconverged=int((~mask).sum()), criterion=CRITERION))
                continue
            rows.append(Row.compare("test_error_pct", key, exp, sample(err[b][mask]),
                                    unconverged=int((~mask).sum()),
                                    note=f"batch size {int(ds.batch_size.values[b])}; Li et al.'s CIFAR-10 errors "
                                         "are not comparable"))
        pair = ok[i, 0] & ok[i, 1]  # both runs of a seed are minima
        direction = functools.partial(paired_row, pair=pair)
        rows.append(direction("small_batch_lower_test_error", expected("small_batch_lower_test_error", w),
                              err[1] - err[0], ("yes", "no"), "LB − SB test error (points), paired by seed",
                              {"weight_decay": w}))
        x = ds.x.values
        ends = np.array([[curve_width(x, c, params.width_height, centre=e).width for e in (0.0, 1.0)]
                         for c in at.line_train_loss.values])  # (seed, end)
        rows.append(direction("interpolation_flatter_end", expected("interpolation_flatter_end", w),
                              ends[:, 0] - ends[:, 1], ("SB", "LB"),
                              f"width of the SB→LB line at {params.width_height:g} nats, around SB − around LB "
                              f"(α units; around SB {ends[:, 0].mean():.3g}, around LB {ends[:, 1].mean():.3g})",
                              {"weight_decay": w}))
        norms = at.param_norm.values  # (batch, seed, epoch)
        mid = norms.shape[-1] // 2
        for b, name in enumerate(ds.batch.values):
            n0, nm, ne = (float(norms[b, :, j].mean()) for j in (0, mid, -1))
            rows.append(Row.compare("weight_norm_grows", {"weight_decay": w, "batch": str(name)},
                                    expected("weight_norm_grows", w), exact("yes" if n0 < nm < ne else "no"),
                                    note=f"mean ‖θ‖₂ over seeds at epochs 0, {mid}, {norms.shape[-1] - 1}: {n0:.4g}, "
                                         f"{nm:.4g}, {ne:.4g} (a property of training, not of the minimum: no gate)"))
        for claim, q, above in (("more_large_weights", params.large_quantile, True),
                                ("more_small_weights", params.small_quantile, False)):
            diff = []
            for s in range(seeds):
                a = [np.abs(at.weights.values[b, s]) for b in (0, 1)]
                cut = np.quantile(np.concatenate(a), q)
                frac = [float((v > cut).mean() if above else (v < cut).mean()) for v in a]
                diff.append(frac[0] - frac[1])
            rows.append(direction(claim, expected(claim, w), 100 * np.array(diff), ("SB", "LB"),
                                  f"SB − LB share of weights {'above' if above else 'below'} the pooled "
                                  f"{100 * q:g}th percentile of |w| (points)", {"weight_decay": w}))
        for m in MEASURES:
            v = ms[m].sel(weight_decay=wd).values  # (batch, seed)
            sharper = v[1] - v[0] if SHARPER_WHEN_LARGER[m] else v[0] - v[1]  # > 0: LB sharper
            rows.append(direction("sharper_batch", expected("sharper_batch", w, m), sharper, ("LB", "SB"),
                                  f"{m}: SB {v[0].mean():.3g}, LB {v[1].mean():.3g} (mean over seeds; "
                                  f"{'larger' if SHARPER_WHEN_LARGER[m] else 'smaller'} is sharper); LB − SB "
                                  "sharpness", {"weight_decay": w, "measure": m}))
    rows += _ordering_rows(ms, ds, ok)
    return rows


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of the rows of ``x`` and ``y`` (``(..., n)``; average ranks for ties); NaN for a constant row."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((rx * ry).sum(-1) / np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1)))


BOOTSTRAP = 1000
"""Resamples of the runs for Spearman's ρ (seed 0)."""


def bootstrap_spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """``(ρ, finite bootstrap replicates of ρ)`` over :data:`BOOTSTRAP` resamples of the runs (seed 0)."""
    draws = np.random.default_rng(0).integers(0, x.size, size=(BOOTSTRAP, x.size))
    boot = spearman(x[draws], y[draws])
    return float(spearman(x, y)), boot[np.isfinite(boot)]


def _ordering_rows(ms: xr.Dataset, ds: xr.Dataset, ok: np.ndarray) -> list[Row]:
    """Spearman ρ of each sharpness measure with test error over the converged runs; percentile bootstrap 95%
    interval; the ordering claim holds when that interval lies above 0."""
    rows = []
    mask = ok.reshape(-1)
    err = ds.test_error.values.reshape(-1)[mask]
    gone = int((~mask).sum())
    for m in MEASURES:
        key = {"measure": m}
        claim = expected("sharpness_orders_test_error", None, m)
        if not comparable(mask) or mask.sum() < 3:
            for quantity, exp in (("spearman_sharpness_test_error", expected("spearman_sharpness_test_error")),
                               ("sharpness_orders_test_error", claim)):
                rows.append(Row.unconverged_row(quantity, key, exp, runs=mask.size, unconverged=gone,
                                                criterion=f"{CRITERION}; Spearman's ρ needs 3 converged runs"))
            continue
        sharp = ms[m].values.reshape(-1)[mask] * (1 if SHARPER_WHEN_LARGER[m] else -1)
        rho, boot = bootstrap_spearman(sharp, err)
        ok_rho = bool(np.isfinite(rho)) and boot.size > 10
        se = float(boot.std(ddof=1)) if ok_rho else 0.0
        rows.append(Row.compare("spearman_sharpness_test_error", key,
                                expected("spearman_sharpness_test_error"),
                                normal(rho, se) if ok_rho else exact(rho if np.isfinite(rho) else None),
                                note=f"over {mask.size - gone} converged runs; bootstrap standard error over runs",
                                unconverged=gone))
        ci = (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))) if ok_rho else None
        p = float(min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean()))) if ok_rho else None
        rows.append(direction_row("sharpness_orders_test_error", key, claim, rho, ci, p, ("yes", "no"),
                                  n=int(mask.sum()), unconverged=gone,
                                  note="Spearman ρ of sharpness with test error (percentile bootstrap over runs)"))
    return rows


def batch_size_figures(params: BatchSizeParams, ds: xr.Dataset, folder: Path) -> list[Path]:
    """Li et al.'s Figs. 2-3 at our scale, and sharpness against test error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wds = [float(w) for w in ds.weight_decay.values]
    cols = len(wds)
    err = 100 * ds.test_error.mean("seed")
    fig, axes = plt.subplots(5, cols, figsize=(5 * cols, 18), squeeze=False)
    for j, wd in enumerate(wds):
        at = ds.sel(weight_decay=wd)
        title = f"WD={wd:g}: test error SB {float(err.sel(weight_decay=wd)[0]):.2f}%, LB " \
                f"{float(err.sel(weight_decay=wd)[1]):.2f}%"
        ax = axes[0, j]
        ax.plot(ds.x, at.line_train_loss.mean("seed"), "C0-", label="train loss")
        ax.plot(ds.x, at.line_test_loss.mean("seed"), "C0--", label="test loss")
        twin = ax.twinx()
        twin.plot(ds.x, 100 * at.line_train_accuracy.mean("seed"), "C3-", label="train acc")
        twin.plot(ds.x, 100 * at.line_test_accuracy.mean("seed"), "C3--", label="test acc")
        ax.set(title=f"SB (0) → LB (1), {title}", xlabel="α", ylabel="loss")
        twin.set_ylabel("accuracy (%)")
        ax.legend(fontsize=7, loc="upper left")
        ax = axes[1, j]
        for b, name in enumerate(ds.batch.values):
            ax.plot(ds.epoch, at.param_norm.isel(batch=b).mean("seed"), f"C{b}", label=str(name))
        ax.set(title=f"‖θ‖₂ during training, WD={wd:g}", xlabel="epoch", ylabel="‖θ‖₂")
        ax.legend(fontsize=7)
        ax = axes[2, j]
        top = float(np.abs(at.weights.values).max())
        for b, name in enumerate(ds.batch.values):
            ax.hist(at.weights.values[b].reshape(-1), bins=100, range=(-top, top), histtype="step", log=True,
                    label=str(name), color=f"C{b}")
        ax.set(title=f"weight histogram, WD={wd:g}", xlabel="w", ylabel="count")
        ax.legend(fontsize=7)
        for row, kind, label in ((3, "fn", "filter-normalised direction (α)"),
                                 (4, "unit", "unit direction (distance in parameter space)")):
            ax = axes[row, j]
            for b, name in enumerate(ds.batch.values):
                scale = float(at.unit_scale.isel(batch=b).mean()) if kind == "unit" else 1.0
                ax.plot(ds.alpha * scale, at[f"{kind}_train_loss"].isel(batch=b).mean("seed"), f"C{b}-",
                        label=f"{name} train")
                ax.plot(ds.alpha * scale, at[f"{kind}_test_loss"].isel(batch=b).mean("seed"), f"C{b}--",
                        label=f"{name} test")
            ax.set(title=title, xlabel=label, ylabel="loss", yscale="log")
            ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [folder / "li_figures_2_3.png"]
    fig.savefig(paths[0], dpi=80)
    plt.close(fig)
    ms = measures(params, ds)
    fig, axes = plt.subplots(1, len(ms.data_vars), figsize=(4 * len(ms.data_vars), 3.6), squeeze=False)
    for ax, m in zip(axes[0], ms.data_vars, strict=True):
        for j, wd in enumerate(wds):
            for b, name in enumerate(ds.batch.values):
                ax.scatter(ms[m].sel(weight_decay=wd).isel(batch=b), 100 * ds.test_error.sel(weight_decay=wd)
                           .isel(batch=b), marker="os"[b], color=f"C{j}", label=f"WD={wd:g} {name}")
        ax.set(xlabel=str(m), ylabel="test error (%)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(folder / "sharpness_vs_test_error.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


__all__ = ["CLAIMS", "MEASURES", "SHARPER_WHEN_LARGER", "SOLVED_TRAIN_ERROR", "BatchSizeParams", "batch_size_figures",
           "claim_rows", "direction_row", "expected", "measures", "paired_test", "solved", "spearman"]
