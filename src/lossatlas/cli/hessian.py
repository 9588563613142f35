"""``lossatlas hessian``: certified eigenvalues, trace, density and the critical-point type at θ."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli.common import (
    BatchOpt,
    BNOpt,
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
)
from lossatlas.engine.bn import BNPolicy
from lossatlas.errors import UserInputError


@app.command()
@user_errors
def hessian(model: ModelOpt, data: DataOpt,
            out: Annotated[Path, typer.Option("--out", help="Result: a .zarr store, or a .json file.")],
            checkpoint: CheckpointOpt = None,
            top: Annotated[int, typer.Option(help="Largest eigenpairs to certify (0: none).")] = 5,
            bottom: Annotated[int, typer.Option(help="Smallest (most negative) eigenpairs.")] = 0,
            trace: Annotated[bool, typer.Option("--trace", help="tr(H) by Hutch++ with its standard error.")] = False,
            density: Annotated[bool, typer.Option("--density", help="Spectral density (SLQ) with a band.")] = False,
            critical: Annotated[bool, typer.Option("--critical", help="Minimum/maximum/saddle/degenerate + index.")
                                ] = False,
            tol: Annotated[float | None, typer.Option(help="Residual tolerance ‖Hv − λv‖ ≤ tol·max(|λ|, ε); "
                                                           "default 1e-6 (float64), 1e-3 (float32).")] = None,
            dtype: Annotated[Precision, typer.Option(help="Arithmetic of the products.")] = Precision.float64,
            params: Annotated[str | None, typer.Option(help="Regex selecting parameter names.")] = None,
            split: Annotated[Split, typer.Option(help="The split whose loss is differentiated.")] = Split.train,
            max_hvps: Annotated[int, typer.Option(help="Product budget of each Lanczos run.")] = 1000,
            probes: Annotated[int, typer.Option(help="Density probes.")] = 5,
            bins: Annotated[int, typer.Option(help="Density grid points.")] = 100,
            bn: BNOpt = BNPolicy.eval, loss: LossOpt = "cross_entropy", batch_size: BatchOpt = 1000,
            seed: SeedOpt = 0, overwrite: OverwriteOpt = False, device: DeviceOpt = "cpu") -> None:
    """Certified Hessian eigenvalues, trace, spectral density and critical-point type at the model's weights."""
    from lossatlas.curvature.analysis import HessianSpec, hessian_analysis, save_hessian
    from lossatlas.engine import EvalSpec
    from lossatlas.viz.plot import plot_spectrum

    spec = HessianSpec(top=top, bottom=bottom, trace=trace, density=density, critical=critical, tol=tol,
                       dtype=dtype.value, params=params, split=split.value, max_hvps=max_hvps, probes=probes,
                       bins=bins, seed=seed)
    espec = EvalSpec(loss=loss, batch_size=batch_size, bn=bn, splits=(split.value,))
    if out.exists() and not overwrite:
        raise UserInputError(f"'{out}' already exists; choose another --out or pass --overwrite")
    dataset, net, provenance = load_problem(model, data, checkpoint)
    with progress_bar("hessian") as update:
        ds, vectors = hessian_analysis(net, dataset, spec, espec, device=check_device(device), provenance=provenance,
                                       progress=lambda phase, done, total: update(done, total, phase))
    save_hessian(ds, out, vectors, overwrite=overwrite)
    png = plot_spectrum(ds, out.with_name(out.name.removesuffix(".json").removesuffix(".zarr") + "_spectrum.png"))
    a = ds.attrs
    for end in ("top", "bottom"):
        if f"{end}_eigenvalues" in ds:
            pairs = ", ".join(f"{v:.6g} (res {r:.1e})" for v, r in zip(ds[f"{end}_eigenvalues"].values,
                                                                       ds[f"{end}_residuals"].values, strict=True))
            out_console.print(f"{end} eigenvalues: {pairs}", highlight=False, soft_wrap=True)
            if not bool(ds[f"{end}_converged"].values.all()):
                console.print(f"[yellow]warning:[/yellow] some {end} eigenpairs missed the tolerance within "
                              f"--max-hvps {max_hvps}; raise it or loosen --tol", highlight=False, soft_wrap=True)
    if "trace" in a:
        out_console.print(f"trace: {a['trace']:.6g} ± {a['trace_stderr']:.2g} ({a['trace_method']}, "
                          f"{a['trace_hvps']} HVPs)", highlight=False, soft_wrap=True)
    if "negative_mass" in a:
        out_console.print(f"density: {bins} bins, negative-eigenvalue mass {a['negative_mass']:.4g}",
                          highlight=False, soft_wrap=True)
    if "critical_kind" in a:
        out_console.print(f"critical point: {a['critical_kind']} (‖g‖ = {a['grad_norm']:.3g}, index "
                          f"{a['index']:.4g} {a['index_method']})", highlight=False, soft_wrap=True)
    out_console.print(f"wrote {out} ({a['n_params']} parameters, {a['hvp_count']} HVPs); spectrum: {png}",
                      highlight=False, soft_wrap=True)
