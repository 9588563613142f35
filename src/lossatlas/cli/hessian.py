"""``lossatlas hessian``: certified eigenvalues, trace, density and the critical-point type at θ."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from lossatlas.cli.common import (
    BatchOpt,
    CheckpointOpt,
    DataOpt,
    DeviceOpt,
    LossOpt,
    ModelOpt,
    OverwriteOpt,
    Precision,
    SeedOpt,
    Split,
    app,
    check_device,
    console,
    load_problem,
    out_console,
    progress_bar,
    user_errors,
    warning_line,
)
from lossatlas.engine.bn import BNPolicy
from lossatlas.errors import UserInputError

INTERRUPTED = ("the finished phases and the running state are kept in OUT.partial beside --out; run the same command "
               "again to continue (--overwrite discards them)")
"""What Ctrl-C prints: a long Hessian job keeps its progress (:mod:`lossatlas.curvature.resume`)."""

HessianBNOpt = Annotated[BNPolicy, typer.Option(
    "--bn", help="BatchNorm statistics while the Hessian is taken (always over the parameters only, statistics "
                 "held fixed): eval = the stored running statistics; states = θ's own statistics (at θ the stored "
                 "ones, so the same Hessian as eval); recompute = re-estimated on the whole training split at θ.")]


@app.command()
@user_errors(interrupted=INTERRUPTED)
def hessian(model: ModelOpt, data: DataOpt,
            out: Annotated[Path, typer.Option("--out", help="Result: a .zarr store, or a .json file.")],
            checkpoint: CheckpointOpt = None,
            top: Annotated[int, typer.Option(help="Largest eigenpairs to certify (0: none).")] = 5,
            bottom: Annotated[int, typer.Option(help="Smallest (most negative) eigenpairs.")] = 0,
            trace: Annotated[bool, typer.Option("--trace", help="tr(H) by Hutch++ with its standard error.")] = False,
            density: Annotated[bool, typer.Option("--density", help="Spectral density (SLQ) with a band.")] = False,
            critical: Annotated[bool, typer.Option(
                "--critical", help="Is θ critical (relative gradient test) and the Hessian's sign pattern: minimum, "
                                   "maximum, saddle, degenerate, with eigenvalue counts up to --dense-limit.")] = False,
            tol: Annotated[float | None, typer.Option(help="Residual tolerance ‖Hv − λv‖ ≤ tol·max(|λ|, ε); "
                                                           "default 1e-6 (float64), 1e-3 (float32).")] = None,
            grad_tol: Annotated[float | None, typer.Option(
                "--grad-tol", help="θ is critical when ‖∇L‖ ≤ grad-tol·‖H‖₂·‖θ‖ (no stationary point of the "
                                   "quadratic model closer than grad-tol·‖θ‖); default 1e-6 (float64), 1e-4 "
                                   "(float32).")] = None,
            dense_limit: Annotated[int, typer.Option(
                "--dense-limit", help="--critical builds the whole Hessian (n products) up to this many parameters "
                                      "and takes every eigenvalue; above it Lanczos + density.")] = 5000,
            dtype: Annotated[Precision, typer.Option(help="Arithmetic of the products.")] = Precision.float64,
            params: Annotated[str | None, typer.Option(help="Regex selecting parameter names.")] = None,
            split: Annotated[Split, typer.Option(help="The split whose loss is differentiated.")] = Split.train,
            max_hvps: Annotated[int, typer.Option(help="Product budget of each Lanczos run.")] = 1000,
            probes: Annotated[int, typer.Option(help="Density probes.")] = 5,
            bins: Annotated[int, typer.Option(help="Density grid points.")] = 100,
            bn: HessianBNOpt = BNPolicy.eval, loss: LossOpt = "cross_entropy", batch_size: BatchOpt = 1000,
            seed: SeedOpt = 0, overwrite: OverwriteOpt = False, device: DeviceOpt = "cpu") -> None:
    """Certified Hessian eigenvalues, trace, spectral density and critical-point type at the model's weights.

    Ctrl-C keeps the finished phases and the running Lanczos state in OUT.partial; the same command continues.
    """
    from lossatlas.curvature.analysis import HessianSpec, hessian_analysis, save_hessian
    from lossatlas.curvature.resume import discard
    from lossatlas.engine import EvalSpec
    from lossatlas.viz.plot import plot_spectrum

    spec = HessianSpec(top=top, bottom=bottom, trace=trace, density=density, critical=critical, tol=tol,
                       grad_tol=grad_tol, dtype=dtype.value, params=params, split=split.value, max_hvps=max_hvps,
                       probes=probes, bins=bins, dense_limit=dense_limit, seed=seed)
    espec = EvalSpec(loss=loss, batch_size=batch_size, bn=bn, splits=(split.value,))
    if out.exists() and not overwrite:
        raise UserInputError(f"'{out}' already exists; choose another --out or pass --overwrite")
    partial = out.with_name(out.name + ".partial")
    dataset, net, provenance = load_problem(model, data, checkpoint)
    with progress_bar("hessian") as update:
        ds, vectors = hessian_analysis(net, dataset, spec, espec, device=check_device(device), provenance=provenance,
                                       progress=lambda phase, done, total: update(done, total, phase),
                                       resume=partial, overwrite=overwrite, log=lambda line: console.print(
                                           Text(line), soft_wrap=True))
    save_hessian(ds, out, vectors, overwrite=overwrite)
    discard(partial)
    png = plot_spectrum(ds, out.with_name(out.name.removesuffix(".json").removesuffix(".zarr") + "_spectrum.png"))
    for line in summary_lines(ds, max_hvps):
        out_console.print(line, highlight=False, soft_wrap=True)
    for end in ("top", "bottom"):
        if f"{end}_converged" in ds and not bool(ds[f"{end}_converged"].values.all()):
            warning_line(f"some {end} eigenpairs missed the tolerance within --max-hvps {max_hvps}; raise it or "
                         "loosen --tol")
    if ds.attrs.get("critical_kind") == "undetermined":
        warning_line("λmin or λmax is not certified, so the Hessian cannot decide the kind of point; raise "
                     "--max-hvps or loosen --tol")
    out_console.print(f"wrote {out} ({ds.attrs['n_params']} parameters, {ds.attrs['hvp_count']} HVPs); "
                      f"spectrum: {png}", highlight=False, soft_wrap=True)


def summary_lines(ds: Any, max_hvps: int) -> list[str]:
    """The terminal summary of a Hessian result (one fact per line)."""
    a, lines = ds.attrs, []
    for end in ("top", "bottom"):
        if f"{end}_eigenvalues" in ds:
            pairs = ", ".join(f"{v:.6g} (res {r:.1e})" for v, r in zip(ds[f"{end}_eigenvalues"].values,
                                                                       ds[f"{end}_residuals"].values, strict=True))
            lines.append(f"{end} eigenvalues: {pairs}")
    if "trace" in a:
        if a["trace_method"] == "exact":
            lines.append(f"trace: {a['trace']:.6g} (exact, from the dense Hessian)")
        else:
            lines.append(f"trace: {a['trace']:.6g} ± {a['trace_stderr']:.2g} ({a['trace_method']}, "
                         f"{a['trace_hvps']} HVPs)")
    if "negative_mass" in a:
        lines.append(f"density: negative-eigenvalue mass {a['negative_mass']:.4g} (SLQ, smoothing width "
                     f"{a['density_sigma']:.3g}{_mass_caveat(ds)})")
    if "critical_kind" in a:
        lines += _critical_lines(a)
    if a.get("bn_statistics", "no BatchNorm layers") != "no BatchNorm layers":
        lines.append(f"BatchNorm (--bn {a['bn']}): {a['bn_statistics']}; the Hessian is over the parameters only")
    return lines


def _mass_caveat(ds: Any) -> str:
    """Why a negative mass is not an index when the density cannot resolve the negative eigenvalues."""
    a = ds.attrs
    lam_min = a.get("lambda_min", ds["bottom_eigenvalues"].values[0] if "bottom_eigenvalues" in ds else None)
    if lam_min is not None and float(lam_min) < 0 and float(a["density_sigma"]) >= abs(float(lam_min)):
        return f"; not the index: the width exceeds |λmin| = {abs(float(lam_min)):.3g}"
    return ""


def _critical_lines(a: Mapping[str, Any]) -> list[str]:
    verdict = {"yes": "≤", "no": ">", "undetermined": "vs"}[a["is_critical"]]
    lines = [f"critical point: {a['critical_kind']} (‖∇L‖ = {a['grad_norm']:.3g}; ‖∇L‖/(‖H‖·‖θ‖) = "
             f"{a['grad_relative']:.3g} {verdict} --grad-tol {a['grad_tol']:.3g})"]
    sign = str(a["hessian_sign"]).replace("_", " ")
    detail = f"λmin {a['lambda_min']:.6g} (res {a['lambda_min_residual']:.1e}), λmax {a['lambda_max']:.6g} " \
             f"(res {a['lambda_max_residual']:.1e})"
    if "negative_count" in a:
        n = a["negative_count"] + a["zero_count"] + a["positive_count"]
        lines.append(f"Hessian: {sign}; {a['negative_count']} negative, {a['zero_count']} zero (|λ| ≤ "
                     f"{a['zero_tol']:.2g}), {a['positive_count']} positive of {n}; index {a['index']:.4g} (exact); "
                     f"{detail}")
    elif "index" in a:
        lines.append(f"Hessian: {sign}; index {a['index']:.4g} ({a['index_method']}); {detail}")
    else:
        mass = a.get("critical_negative_mass")
        why = f"; SLQ negative mass {mass:.3g} is not the index: its width {a['critical_density_sigma']:.3g} " \
              f"exceeds |λmin|" if mass is not None and a["extremes_certified"] else ""
        lines.append(f"Hessian: {sign}; index unknown{why}; {detail}")
    return lines
