"""Li, Xu, Taylor, Studer & Goldstein 2018, Sec. 5 ('wide models vs thin models'): wider residual nets have flatter,
less chaotic loss surfaces with wide regions of apparent convexity, and lower test error."""

from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from lossatlas.curvature.maps import ConvexitySpec
from lossatlas.directions import DirectionSpec
from lossatlas.engine import EvalSpec
from lossatlas.errors import UserInputError
from lossatlas.landscape import surface
from lossatlas.models import build_model
from lossatlas.studies.framework import Context, Row, save_figure
from lossatlas.studies.registry import Published, Study, study
from lossatlas.studies.runs import derived_seeds, study_data
from lossatlas.studies.verdict import Expected, exact, published, sample
from lossatlas.training import TrainSpec, train

LI = "Li, Xu, Taylor, Studer & Goldstein 2018 (NeurIPS)"
WIDTH_REF = (f"{LI}, Sec. 5 'Wide models vs thin models' and Fig. 6 (ResNet-56 with k = 1, 2, 4, 8 times the "
             "filters): wider nets give flatter minima, less chaotic surfaces and wide regions of apparent convexity; "
             "lecture notes seed 000:62 (Fig. 6 caption), seed 002:72 ('Residual connections <-> network width'), "
             "qualitative, no number")
CONVEXITY_REF = (f"{LI}, Sec. 6 and Fig. 7 (|λmin/λmax| maps: small where the surface looks convex) applied to the "
                 "Sec. 5 width claim; seed 002:78")
ERROR_REF = (f"{LI}, Fig. 6: the test errors printed below each panel fall as k grows; seed 000:62 ('Test error is "
             "reported below each figure')")
CLAIMS = (("basin_rise_falls_with_width", "yes", WIDTH_REF), ("apparent_convexity_grows_with_width", "yes", WIDTH_REF),
          ("convexity_ratio_falls_with_width", "yes", CONVEXITY_REF),
          ("test_error_falls_with_width", "yes", ERROR_REF))
"""The published orderings (all qualitative): (row, published, ref)."""
PER_WIDTH = ("test_error_pct", "final_train_loss", "basin_rise", "apparent_convex_pct", "convexity_ratio",
             "lambda_max")


def model_spec(k: int, depth: int = 10) -> str:
    """The zoo spec of WRN-depth-k (Zagoruyko & Komodakis 2016)."""
    return f"zoo:wrn:depth={depth},k={k}"


def milestones(epochs: int) -> tuple[int, ...]:
    """Li et al.'s step schedule scaled to ``epochs``: ×0.1 after 50%, 75% and 92% of the epochs (150, 225 and 275
    of their 300); a milestone at 0 or at the last epoch is dropped."""
    return tuple(sorted({round(epochs * f) for f in (150 / 300, 225 / 300, 275 / 300)} - {0, epochs}))


def apparent_convex_fraction(z: np.ndarray, spacing: float, tol: float = 1e-6) -> float:
    """Share of the interior points of a 2-D surface z[i, j] (grid step ``spacing`` on both axes) where its
    finite-difference Hessian [[f_xx, f_xy], [f_xy, f_yy]] is positive semi-definite (up to ``−tol``): the
    'regions of apparent convexity' of a contour plot. NaN for a grid without interior points."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or min(z.shape) < 3:
        return float("nan")
    h2 = spacing * spacing
    fxx = (z[2:, 1:-1] - 2 * z[1:-1, 1:-1] + z[:-2, 1:-1]) / h2
    fyy = (z[1:-1, 2:] - 2 * z[1:-1, 1:-1] + z[1:-1, :-2]) / h2
    fxy = (z[2:, 2:] - z[2:, :-2] - z[:-2, 2:] + z[:-2, :-2]) / (4 * h2)
    psd = (fxx >= -tol) & (fyy >= -tol) & (fxx * fyy - fxy * fxy >= -tol)
    return float(psd.mean())


def ordering(values: np.ndarray, sign: int) -> str | None:
    """'yes' when ``values`` rise (``sign`` = +1) or fall (−1) strictly from each entry to the next, 'no' when not;
    None when one is missing (NaN) or all are equal (a measure at its bound for every width shows no ordering)."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all() or bool((v == v[0]).all()):
        return None
    return "yes" if bool((sign * np.diff(v) > 0).all()) else "no"


def map_axis(extent: float, points: int) -> str:
    """The convexity map's axis: ``points`` equally spaced in [−extent, extent]; one point is θ itself (0)."""
    return "0:0:1" if points == 1 else f"-{extent}:{extent}:{points}"


def _cell(params: WidthEffect, cell: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Train one WRN-10-k, then its filter-normalised 2-D surface and convexity map."""
    data = study_data(params.data)
    init, order, plane = derived_seeds(seed, 3)
    model = build_model(model_spec(int(cell["k"]), params.depth), input_shape=data.input_shape,
                        output_dim=data.output_dim, seed=init)
    spec = TrainSpec(epochs=params.epochs, batch_size=params.batch_size, lr=params.lr, momentum=0.9,
                     weight_decay=params.weight_decay, seed=order, save_every=params.epochs,
                     milestones=milestones(params.epochs), lr_decay=0.1)
    directions = DirectionSpec(seed=plane)  # filter-normalised, biases and BN parameters ignored (Li et al.)
    grid = f"-{params.extent}:{params.extent}:{params.grid}"
    cgrid = map_axis(params.extent, params.cmap_grid)
    with tempfile.TemporaryDirectory() as tmp:
        net = train(model, data, spec, Path(tmp) / "run", device=params.device).cpu().eval()
        metrics = np.genfromtxt(Path(tmp) / "run" / "metrics.csv", delimiter=",", names=True)
        surf = surface(net, data, x=grid, y=grid, directions=directions, out=Path(tmp) / "surface.zarr",
                       eval_spec=EvalSpec(splits=("train",)), device=params.device)
        cmap = surface(net, data, x=cgrid, y=cgrid, directions=directions, out=Path(tmp) / "cmap.zarr",
                       eval_spec=EvalSpec(splits=("train",), subset=params.cmap_subset), device=params.device,
                       hessian=ConvexitySpec(tol=params.cmap_tol, max_matvecs=params.max_matvecs, dtype="float32"))
        return {"train_loss_curve": np.atleast_1d(metrics["train_loss"]),
                "test_accuracy_curve": np.atleast_1d(metrics["test_accuracy"]),
                "surface_train_loss": np.asarray(surf.train_loss.values, dtype=np.float64),
                "lambda_max": np.asarray(cmap.lambda_max.values), "lambda_min": np.asarray(cmap.lambda_min.values),
                "convexity_ratio": np.asarray(cmap.convexity_ratio.values),
                "hessian_converged": np.asarray(cmap.hessian_converged.values),
                "parameters": np.asarray(sum(p.numel() for p in net.parameters()))}


@study("width-effect",
       paper="Li, Xu, Taylor, Studer & Goldstein 2018, Visualizing the Loss Landscape of Neural Nets (NeurIPS), "
             "Sec. 5 'Wide models vs thin models', Fig. 6",
       claim="multiplying the filters of a residual net by k = 2, 4 gives flatter minima, wider regions of apparent "
             "convexity on the filter-normalised surface (smaller |λmin/λmax|) and lower test error")
@dataclass(frozen=True)
class WidthEffect(Study):
    """Wide ResNets WRN-10-k, k = 1, 2, 4, on digits: filter-normalised surfaces, convexity maps, test error.

    Method (Li et al. Sec. 5-6 at laptop scale). For each width k in ``widths`` and each of ``seeds`` seeds, a
    WRN-``depth``-k (Zagoruyko & Komodakis 2016; ``zoo:wrn``) is trained on ``data`` by SGD (momentum 0.9, weight
    decay ``weight_decay``, batch ``batch_size``, ``lr`` decayed ×0.1 after 50%, 75% and 92% of ``epochs``: Li et
    al.'s schedule). Around each solution θ: the train loss on a ``grid`` × ``grid`` plane θ + αδ + βη, α, β ∈
    [−extent, extent], filter-normalised random directions (biases and BN parameters ignored; BN statistics fixed);
    on a ``cmap_grid`` × ``cmap_grid`` plane in the same directions the extreme Hessian eigenvalues (certified
    Lanczos) of the loss on a fixed stratified subset of ``cmap_subset`` training samples. Per net: basin_rise =
    mean over the plane of L − L(θ) (nats; lower = flatter), apparent_convex_pct = share of interior plane points
    whose finite-difference Hessian is PSD (:func:`apparent_convex_fraction`), convexity_ratio = mean |λmin/λmax|
    over converged map points (θ itself when ``cmap_grid`` = 1), λmax at θ, test error.
    """

    widths: tuple[int, ...] = (1, 2, 4)
    depth: int = 10
    seeds: int = 1
    data: str = "digits"
    epochs: int = 4
    lr: float = 0.1
    batch_size: int = 128
    weight_decay: float = 5e-4
    extent: float = 1.0
    grid: int = 5
    cmap_grid: int = 1
    cmap_subset: int = 16
    cmap_tol: float = 1e-2
    max_matvecs: int = 30
    loss_gate: float = 0.05
    device: str = "cpu"

    PUBLISHED = Published(
        source=f"{LI}, Sec. 5 ('Wide models vs thin models') and Fig. 6 (Wide-ResNet-56, k = 1, 2, 4, 8, with and "
               "without shortcuts, CIFAR-10), as reproduced in the lecture notes (seed 000:57-62; seed 002:72). The "
               "notes quote no number; the claims are orderings read from the figure and its text.",
        columns=("claim", "published"), rows=tuple((c, v) for c, v, _ in CLAIMS),
        note="Each ordering is 'yes' when the mean over seeds falls (or grows) strictly from each k to the next.")
    NOTES = """Scale and choices (fixed before any run). Li et al. widen ResNet-56 on CIFAR-10 (300 epochs); we widen
    the smallest Wide ResNet the zoo builds, WRN-10-k (one pre-activation block per stage: depth 6n + 4, n = 1), on
    8×8 digits; a set-up check showed it trains there (train loss 0.14-0.22 after two epochs at every k). Training:
    Li et al.'s recipe (SGD, lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, lr ×0.1 after 50/75/92% of the
    epochs) over 4 (quick) / 20 (full) epochs. Surfaces: Li et al.'s filter-normalised random plane on [−1, 1]²
    over the whole training split (5×5 quick, 9×9 full). Curvature: |λmin/λmax| (Li et al. Fig. 7) at θ itself, on
    a fixed subset of 16 / 64 training samples, float32 Lanczos to 1e-2 relative residual within 30 / 40 products.
    A whole map (Li et al. map the plane) was costed at ~0.9 s per product for k = 4 and left out of the full
    preset's 10-minute budget; cmap_grid = 3, 5, ... maps the plane when time allows (the mean over its converged
    points is then the row).

    Convergence gate (stated before the run): a net counts when its final train loss is at most loss_gate = 0.05
    nats; a width is comparable when at least half of its nets (and at least one) passed; an ordering row is
    'not comparable (unconverged)' when any width is not. Lanczos runs that did not converge are left out of
    convexity_ratio (counted in its note); with none left the ordering is 'not comparable'.

    Rows and margins. Li et al. print no number for these quantities (Fig. 6 shows surfaces; its test errors are
    CIFAR-10's), and the lecture notes quote none (seed 002 names the comparison, line 72; seed 000 reproduces the
    Fig. 6 caption, line 62), so every published row is an ordering, text 'yes'/'no', judged exactly (margin 0):
    'yes' when the mean over seeds changes strictly monotonically in the stated direction from each width to the
    next (:func:`ordering`; a partial tie is 'no'; equal values at every width, e.g. 100% apparent convexity
    everywhere, show no ordering and are 'not comparable': a rule added after the first quick run met exactly that
    ceiling, which a strict 'no' would have reported as a contradiction of the paper). basin_rise = mean of
    L − L(θ) over the plane (lower = flatter: Li et al.'s 'flat minima'); apparent_convex_pct = share of interior
    plane points with a PSD finite-difference Hessian (their 'wide regions of apparent convexity');
    convexity_ratio (Fig. 7's measure of how non-convex a point is); test error (Fig. 6's printed errors fall
    with k). The per-width numbers (mean and Student-t interval over
    seeds) are listed beside them without an expected value (not comparable). A strict ordering of means ignores
    their intervals: read it with the per-width rows; with one seed (quick) it is one draw per width. λmax depends
    on the parameterisation (it is not filter-normalised), so it is reported, not judged."""

    def __post_init__(self) -> None:
        if len(self.widths) < 2 or min(self.widths) < 1 or list(self.widths) != sorted(set(self.widths)):
            raise UserInputError("width-effect: widths must be >= 2 increasing positive multipliers (1,2,4)")
        if self.depth < 10 or (self.depth - 4) % 6:
            raise UserInputError("width-effect: depth must be 6n + 4 (10, 16, 22, ...)")
        if self.seeds < 1 or self.epochs < 1 or self.grid < 3 or self.grid % 2 == 0 or self.cmap_grid % 2 == 0:
            raise UserInputError("width-effect: seeds, epochs >= 1; grid odd and >= 3, cmap_grid odd (θ at their "
                                 "centres)")
        if self.cmap_subset < 1 or self.extent <= 0 or self.loss_gate <= 0:
            raise UserInputError("width-effect: cmap_subset >= 1, extent > 0, loss_gate > 0")

    @classmethod
    def full(cls) -> WidthEffect:
        return cls(seeds=2, epochs=20, grid=9, cmap_subset=64, max_matvecs=40)

    def cells(self) -> list[dict[str, Any]]:
        return [{"k": k, "seed": s} for k in self.widths for s in range(self.seeds)]

    def run(self, ctx: Context) -> xr.Dataset:
        cells = self.cells()
        out = ctx.map(functools.partial(_cell, self), cells)
        axis = np.linspace(-self.extent, self.extent, self.grid)
        caxis = np.linspace(-self.extent, self.extent, self.cmap_grid) if self.cmap_grid > 1 else np.zeros(1)
        dims = {"train_loss_curve": ("epoch",), "test_accuracy_curve": ("epoch",), "surface_train_loss": ("x", "y"),
                "lambda_max": ("cx", "cy"), "lambda_min": ("cx", "cy"), "convexity_ratio": ("cx", "cy"),
                "hessian_converged": ("cx", "cy"), "parameters": ()}
        shape = (len(self.widths), self.seeds)
        return xr.Dataset(
            {k: (("k", "seed", *v), np.stack([np.asarray(o[k]) for o in out]).reshape(*shape, *np.shape(out[0][k])))
             for k, v in dims.items()},
            coords={"k": list(self.widths), "seed": np.arange(self.seeds), "x": axis, "y": axis, "cx": caxis,
                    "cy": caxis, "epoch": np.arange(self.epochs + 1)})

    def measures(self, ds: xr.Dataset) -> dict[str, np.ndarray]:
        """Every per-net quantity of :data:`PER_WIDTH`, shape (k, seed); and ``map_unconverged``."""
        z = ds.surface_train_loss.values
        c = self.grid // 2
        spacing = 2 * self.extent / (self.grid - 1)
        ratio, ok = ds.convexity_ratio.values, (ds.hessian_converged.values > 0) & np.isfinite(ds.convexity_ratio)
        cc = self.cmap_grid // 2
        shape = z.shape[:2]
        out = {"test_error_pct": 100 * (1 - ds.test_accuracy_curve.values[..., -1]),
               "final_train_loss": ds.train_loss_curve.values[..., -1],
               "basin_rise": (z - z[..., c:c + 1, c:c + 1]).mean(axis=(-2, -1)),
               "apparent_convex_pct": 100 * np.array([[apparent_convex_fraction(z[i, j], spacing)
                                                       for j in range(shape[1])] for i in range(shape[0])]),
               "convexity_ratio": np.full(shape, np.nan),
               "lambda_max": ds.lambda_max.values[..., cc, cc],
               "map_unconverged": (~ok).sum(axis=(-2, -1))}
        for i in range(shape[0]):
            for j in range(shape[1]):
                if ok[i, j].any():
                    out["convexity_ratio"][i, j] = ratio[i, j][ok[i, j]].mean()
        return out

    def check(self, ds: xr.Dataset) -> list[Row]:
        m = self.measures(ds)
        converged = m["final_train_loss"] <= self.loss_gate
        widths = [int(k) for k in ds.k.values]
        enough = [bool(converged[i].sum() >= max(1, math.ceil(0.5 * converged[i].size))) for i in range(len(widths))]
        criterion = f"final train loss <= {self.loss_gate:g}"
        context = published(None, WIDTH_REF, 0.0)
        rows: list[Row] = []
        means: dict[str, list[float]] = {q: [] for q in PER_WIDTH}
        for i, k in enumerate(widths):
            mask, dropped = converged[i], int((~converged[i]).sum())
            for q in PER_WIDTH:
                if not enough[i]:
                    means[q].append(float("nan"))
                    rows.append(Row.unconverged_row(q, {"k": k}, context, runs=mask.size, unconverged=dropped,
                                                    criterion=criterion))
                    continue
                est = sample(m[q][i][mask])
                means[q].append(float("nan") if est.value is None else float(est.value))  # type: ignore[arg-type]
                left_out = int(m["map_unconverged"][i].sum())
                note = {"convexity_ratio": f"mean |λmin/λmax| over converged map points ({left_out} unconverged "
                                           "left out)",
                        "lambda_max": f"λmax at θ on {self.cmap_subset} training samples (not filter-normalised)",
                        "basin_rise": "mean of L − L(θ) over the filter-normalised plane (nats)",
                        "apparent_convex_pct": "% of interior plane points with a PSD finite-difference Hessian",
                        }.get(q, "")
                rows.append(Row.compare(q, {"k": k}, context, est, note=note, unconverged=dropped))
        directions = {"basin_rise_falls_with_width": ("basin_rise", -1),
                      "apparent_convexity_grows_with_width": ("apparent_convex_pct", +1),
                      "convexity_ratio_falls_with_width": ("convexity_ratio", -1),
                      "test_error_falls_with_width": ("test_error_pct", -1)}
        key = {"depth": self.depth, "widths": "-".join(str(k) for k in widths)}
        for claim, value, ref in CLAIMS:
            expected: Expected = published(value, ref, 0.0)
            q, sign = directions[claim]
            if not all(enough):
                bad = [k for k, e in zip(widths, enough, strict=True) if not e]
                rows.append(Row.unconverged_row(claim, key, expected, runs=int(converged.size),
                                                unconverged=int((~converged).sum()), criterion=criterion,
                                                note=f"widths without enough converged nets: {bad}"))
                continue
            v = np.asarray(means[q])
            text = ", ".join(f"k={k}: {x:.4g}" for k, x in zip(widths, v, strict=True))
            verdict = ordering(v, sign)
            rows.append(Row.compare(claim, key, expected, exact(verdict), unconverged=int((~converged).sum()),
                                    note=f"{q} means over seeds: {text}" + ("" if verdict else
                                                                            " (a width has no value, or all are "
                                                                            "equal: no ordering to read)")))
        return rows

    def figures(self, ds: xr.Dataset, folder: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        widths = [int(k) for k in ds.k.values]
        fig, axes = plt.subplots(1, len(widths), figsize=(3.8 * len(widths), 3.6), squeeze=False)
        m = self.measures(ds)
        for i, (ax, k) in enumerate(zip(axes[0], widths, strict=True)):
            z = np.log10(np.maximum(ds.surface_train_loss.values[i, 0], 1e-12))
            cs = ax.contour(ds.x, ds.y, z.T, levels=15, cmap="viridis")
            ax.clabel(cs, fontsize=6)
            ax.set(title=f"WRN-{self.depth}-{k}, seed 0\ntest error {m['test_error_pct'][i, 0]:.1f}%",
                   xlabel="α", ylabel="β")
        fig.suptitle("log10 train loss on a filter-normalised plane")
        return [save_figure(fig, folder / "width_effect.png")]


__all__ = ["CLAIMS", "WidthEffect", "apparent_convex_fraction", "map_axis", "milestones", "model_spec", "ordering"]
