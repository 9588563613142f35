"""Checks and figures of the ``batch-size-weight-decay`` study (Li et al. 2018, Sec. 5): the claims as rows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from lossatlas.curvature.sharpness import curve_width
from lossatlas.studies.framework import Row, mean_interval

if TYPE_CHECKING:
    from lossatlas.studies.batch_size_weight_decay import BatchSizeWeightDecay

MEASURES = ("fn_width", "unit_width", "lambda_max", "eps_sharpness")
"""Sharpness measures: filter-normalised curve width, Euclidean curve width, top Hessian eigenvalue, Keskar's ε."""
SHARPER_WHEN_LARGER = {"fn_width": False, "unit_width": False, "lambda_max": True, "eps_sharpness": True}

#: (claim, weight decay) → the published direction (Li et al. 2018 Figs. 2-3; Keskar et al. 2017 for ε).
PUBLISHED: dict[tuple[str, float | None], str] = {
    ("small_batch_lower_test_error", 0.0): "yes", ("small_batch_lower_test_error", 5e-4): "yes",
    ("interpolation_flatter_end", 0.0): "SB", ("interpolation_flatter_end", 5e-4): "LB",
    ("weight_norm_grows", 0.0): "yes", ("more_large_weights", 0.0): "SB", ("more_small_weights", 5e-4): "SB",
    ("sharper_batch:fn_width", 0.0): "LB", ("sharper_batch:fn_width", 5e-4): "LB",
    ("sharper_batch:eps_sharpness", 0.0): "LB", ("sharpness_orders_test_error:fn_width", None): "yes"}


def _published(claim: str, wd: float | None) -> str | None:
    for (name, w), value in PUBLISHED.items():
        if name == claim and (w is None or wd is None or np.isclose(w, wd)):
            return value
    return None


def measures(params: BatchSizeWeightDecay, ds: xr.Dataset) -> xr.Dataset:
    """Per run: ``fn_width`` (α units), ``unit_width`` (parameter-space distance), ``lambda_max``,
    ``eps_sharpness`` (percent), with dims (weight_decay, batch, seed)."""
    alpha = ds.alpha.values

    def width(curves: xr.DataArray) -> xr.DataArray:
        return xr.apply_ufunc(lambda c: curve_width(alpha, c, params.width_height).width, curves,
                              input_core_dims=[["alpha"]], vectorize=True)

    return xr.Dataset({"fn_width": width(ds.fn_train_loss), "unit_width": width(ds.unit_train_loss) * ds.unit_scale,
                       "lambda_max": ds.lambda_max, "eps_sharpness": ds.eps_sharpness})


def _paired(diff: np.ndarray) -> str:
    mean, ci = mean_interval(diff)
    return f"{mean:.3g}" + (f" (95% CI [{ci[0]:.3g}, {ci[1]:.3g}])" if ci else "")


def claim_rows(params: BatchSizeWeightDecay, ds: xr.Dataset) -> list[Row]:
    rows: list[Row] = []
    ms = measures(params, ds)
    for wd in ds.weight_decay.values:
        w = float(wd)
        at = ds.sel(weight_decay=wd)
        err = 100 * at.test_error.values  # (batch, seed)
        for b, name in enumerate(ds.batch.values):
            mean, ci = mean_interval(err[b])
            rows.append(Row.compare("test_error_pct", {"weight_decay": w, "batch": str(name)}, None, mean, ci=ci,
                                    note=f"batch size {int(ds.batch_size.values[b])}; Li et al.'s CIFAR-10 errors "
                                         "are not comparable"))
        gap = err[1] - err[0]
        rows.append(Row.compare("small_batch_lower_test_error", {"weight_decay": w},
                                _published("small_batch_lower_test_error", w), "yes" if gap.mean() > 0 else "no",
                                note=f"LB − SB test error {_paired(gap)} percentage points"))
        line = at.line_train_loss.values  # (seed, x)
        x = ds.x.values
        ends = np.array([[curve_width(x, c, params.width_height, centre=e).width for e in (0.0, 1.0)] for c in line])
        rows.append(Row.compare("interpolation_flatter_end", {"weight_decay": w},
                                _published("interpolation_flatter_end", w),
                                "SB" if ends[:, 0].mean() > ends[:, 1].mean() else "LB",
                                note=f"width of the SB→LB line at {params.width_height:g} nats: around SB "
                                     f"{ends[:, 0].mean():.3g}, around LB {ends[:, 1].mean():.3g} (α units)"))
        norms = at.param_norm.values  # (batch, seed, epoch)
        mid = norms.shape[-1] // 2
        for b, name in enumerate(ds.batch.values):
            n0, nm, ne = (float(norms[b, :, i].mean()) for i in (0, mid, -1))
            rows.append(Row.compare("weight_norm_grows", {"weight_decay": w, "batch": str(name)},
                                    _published("weight_norm_grows", w), "yes" if n0 < nm < ne else "no",
                                    note=f"‖θ‖₂ at epochs 0, {mid}, {norms.shape[-1] - 1}: {n0:.3g}, {nm:.3g}, "
                                         f"{ne:.3g}"))
        for claim, q, above in (("more_large_weights", params.large_quantile, True),
                                ("more_small_weights", params.small_quantile, False)):
            diff = []
            for s in range(ds.sizes["seed"]):
                a = [np.abs(at.weights.values[b, s]) for b in (0, 1)]
                cut = np.quantile(np.concatenate(a), q)
                frac = [float((v > cut).mean() if above else (v < cut).mean()) for v in a]
                diff.append(frac[0] - frac[1])
            d = 100 * np.array(diff)
            rows.append(Row.compare(claim, {"weight_decay": w}, _published(claim, w), "SB" if d.mean() > 0 else "LB",
                                    note=f"SB − LB share of weights {'above' if above else 'below'} the pooled "
                                         f"{100 * q:g}th percentile of |w|: {_paired(d)} points"))
        for m in MEASURES:
            v = ms[m].sel(weight_decay=wd).values  # (batch, seed)
            sharper = "LB" if (v[1].mean() > v[0].mean()) == SHARPER_WHEN_LARGER[m] else "SB"
            rows.append(Row.compare("sharper_batch", {"weight_decay": w, "measure": m},
                                    _published(f"sharper_batch:{m}", w), sharper,
                                    note=f"SB {v[0].mean():.3g}, LB {v[1].mean():.3g} (mean over seeds; "
                                         f"{'larger' if SHARPER_WHEN_LARGER[m] else 'smaller'} is sharper)"))
    rows += _ordering_rows(ms, ds)
    return rows


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of the rows of ``x`` and ``y`` (``(..., n)``; average ranks for ties); NaN for a constant row."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((rx * ry).sum(-1) / np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1)))


def _ordering_rows(ms: xr.Dataset, ds: xr.Dataset) -> list[Row]:
    """Spearman ρ of each sharpness measure with test error over every run; bootstrap 95% interval (1000
    resamples of the runs, seed 0)."""
    rows = []
    err = ds.test_error.values.reshape(-1)
    draws = np.random.default_rng(0).integers(0, err.size, size=(1000, err.size))
    for m in MEASURES:
        sharp = ms[m].values.reshape(-1) * (1 if SHARPER_WHEN_LARGER[m] else -1)
        rho = float(spearman(sharp, err))
        boot = spearman(sharp[draws], err[draws])
        boot = boot[np.isfinite(boot)]
        ci = (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))) if boot.size > 10 else None
        rows.append(Row.compare("spearman_sharpness_test_error", {"measure": m}, None, rho, ci=ci,
                                note=f"over {err.size} runs; bootstrap over runs"))
        rows.append(Row.compare("sharpness_orders_test_error", {"measure": m},
                                _published(f"sharpness_orders_test_error:{m}", None),
                                "yes" if np.isfinite(rho) and rho > 0 else "no",
                                note="yes when sharper minima have higher test error (Spearman ρ > 0)"))
    return rows


def batch_size_figures(params: BatchSizeWeightDecay, ds: xr.Dataset, folder: Path) -> list[Path]:
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


__all__ = ["PUBLISHED", "batch_size_figures", "claim_rows", "measures"]
