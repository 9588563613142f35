"""Deep linear networks: Kawaguchi's saddles, Baldi & Hornik's global minima, the plateau, Hardt & Ma."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from lossatlas.curvature import FunctionHessian, Tolerances, critical_point
from lossatlas.errors import UserInputError
from lossatlas.studies.critical_points import sphere_probe
from lossatlas.studies.framework import Context, Row, converged_runs, save_figure
from lossatlas.studies.linear_nets import (
    chain_hessian_eigenvalues,
    chain_loss,
    hardt_ma_construction,
    hardt_ma_descent,
    linear_runs,
    plateau_flow_steps,
    plateau_steps,
    residual_product,
    residual_target,
)
from lossatlas.studies.registry import Published, Study, study
from lossatlas.studies.verdict import MARGIN_RATE, Expected, derived, exact, protocol, published, rate, sanity

POINTS = ((1, "0"), (2, "0"), (3, "0"), (3, "(0,0,k)"))
KINDS = {(1, "0"): ("not_critical", ""), (2, "0"): ("saddle", "saddle"), (3, "0"): ("degenerate", "saddle"),
         (3, "(0,0,k)"): ("saddle", "saddle")}
"""(depth, point) → (what the library's classification says, what the loss does there): for H = 1 the point 0 is
not critical (∇L = −2); H = 3 at 0 is Kawaguchi's saddle with no negative eigenvalue."""


NOTES_REF = "Hung-yi Lee 2018, lecture notes 'Optimization'"
NATURE_LINES = {(2, "0"): (450, "the saddle of one hidden layer"),
                (3, "0"): (503, "more than two hidden layers can produce a saddle point without negative eigenvalues"),
                (3, "(0,0,k)"): (484, "'Saddle point' at w1 = w2 = 0, w3 = k")}
"""(depth, point) → (seed 004 line, what the notes say there) for the points the notes call saddles."""


def _eigenvalue_source(depth: int, point: str, value: float) -> Expected:
    """H = 3 at 0: the notes print the Hessian (all zeros); the other spectra come from the notes' second
    derivatives, evaluated in closed form (margin 1e-12: float64 eigensolver rounding)."""
    if (depth, point) == (3, "0"):
        return published(value, f"{NOTES_REF}, 'Deep Linear Network', H at w1 = w2 = w3 = 0; seed 004:469", 1e-12)
    return derived(value, "lossatlas.studies.linear_nets.chain_hessian_eigenvalues: the notes' second derivatives "
                   "(seed 004, 'Deep Linear Network') in closed form", 1e-12)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(p) for p in text.split("-"))
    except ValueError:
        sizes = ()
    if len(sizes) < 2 or min(sizes) < 1:
        raise UserInputError(f"deep-linear: architecture '{text}' must be widths d_in-hidden...-d_out, e.g. 4-6-6-3")
    return sizes


def _cell(p: DeepLinear, cell: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    part = cell["part"]
    if part == "hessian":
        out: dict[str, np.ndarray] = {}
        for depth, point in POINTS:
            w = torch.zeros(depth, dtype=torch.float64)
            if point != "0":
                w[2] = p.k
            op = FunctionHessian(lambda th: chain_loss(th["w"]), {"w": w})
            verdict = critical_point(op, tolerances=Tolerances(grad_tol=1e-12))
            tag = f"{depth}{point}"
            out[f"eig{tag}"] = torch.linalg.eigvalsh(op.dense()).numpy()
            out[f"kind{tag}"] = np.array(verdict.kind.value)
            out[f"nature{tag}"] = np.array(sphere_probe(chain_loss, w, p.probe_radius, seed=seed))
        return out
    if part == "global":
        r = linear_runs(_sizes(cell["sizes"]), p.runs, samples=p.samples, noise=p.noise, lr=p.lr,
                        max_steps=p.max_steps, grad_tol=p.grad_tol, seed=seed)
        return {"product_error": r.product_error, "loss_gap": r.loss_gap, "grad_norm": r.grad_norm, "steps": r.steps}
    if part == "plateau":
        depths = tuple(h + 1 for h in p.plateau_hidden)
        return {"steps": plateau_steps(depths, p.plateau_init, p.plateau_lr, p.plateau_max_steps),
                "flow": np.array([plateau_flow_steps(d, p.plateau_init, p.plateau_lr) for d in depths])}
    # Hardt & Ma
    a, target = residual_target(p.hm_dim, p.hm_scale, seed)
    construction = [hardt_ma_construction(a, h) for h in p.hm_depths]
    targets = torch.stack([torch.from_numpy(residual_target(p.hm_dim, p.hm_scale, seed + 1 + i)[1])
                           for i in range(p.hm_runs)])
    path_max, error, steps = hardt_ma_descent(targets, p.hm_gd_depth, p.lr, p.max_steps, p.grad_tol)
    return {"log_norm": np.array(np.linalg.norm(a, 2)),
            "product_error": np.array([np.abs(residual_product(w) - target).max() for w in construction]),
            "depth_max_norm": np.array([h * max(np.linalg.norm(x, 2) for x in w)
                                        for h, w in zip(p.hm_depths, construction, strict=True)]),
            "gd_path_max_norm": path_max, "gd_product_error": error, "gd_steps": steps}


@study("deep-linear", paper="Kawaguchi 2016, Deep learning without poor local minima (NIPS); Baldi & Hornik 1989; "
       "Hardt & Ma 2016, Identity matters in deep learning (ICLR 2017)",
       claim="deep linear nets have no spurious local minima but degenerate saddles (H = 0 at 0 for depth >= 3); "
             "GD reaches the closed-form global minimum; linear ResNets have global minima of norm O(1/H)")
@dataclass(frozen=True)
class DeepLinear(Study):
    """Deep linear networks: exact Hessians, closed-form global minima, the plateau and linear ResNets.

    1. The notes' chain L = (1 − w₁⋯w_H)²: Hessians at 0 are {2}, {±2}, {0,0,0} for H = 1, 2, 3 and {±2k, 0}
       at (0, 0, k) (FunctionHessian, exact to 1e-12); H = 3 at 0 has no negative eigenvalue yet a probe on a
       small sphere shows a saddle (Kawaguchi's "bad saddle").
    2. GD on the zoo ``linear`` nets (``architectures``: widths input-hidden-output, default initialisation,
       ``runs`` seeds batched with vmap) on Gaussian regression data ends at the closed-form minimum: least
       squares, or reduced-rank regression through a bottleneck (Baldi & Hornik), to 1e-6 in every run that
       converges (‖∇L‖ ≤ grad_tol).
    3. The notes' demo: GD on the chain from w_i = 0.5 stalls on a plateau that grows with depth (hidden
       layers 0…10); the steps to halve the loss against the gradient-flow integral.
    4. Hardt & Ma: for R = exp(A), W_k = R^{1/H} − I is a global minimum of E‖y − Π(I + W_k)x‖² with
       H · max‖W_k‖ → ‖log R‖ (Theorem 2), and GD from W = 0 stays inside max‖W_k‖ < 1 (Theorem 1's region)
       and reaches it.
    """

    k: float = 1.5
    probe_radius: float = 1e-2
    architectures: tuple[str, ...] = ("4-6-6-3", "4-2-3")
    runs: int = 16
    samples: int = 64
    noise: float = 0.5
    lr: float = 0.02
    max_steps: int = 20_000
    grad_tol: float = 1e-10
    plateau_hidden: tuple[int, ...] = (0, 1, 2, 4, 6, 8, 10)
    plateau_init: float = 0.5
    plateau_lr: float = 0.01
    plateau_max_steps: int = 100_000
    plateau_rtol: float = 0.05
    hm_dim: int = 3
    hm_scale: float = 0.5
    hm_depths: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    hm_gd_depth: int = 4
    hm_runs: int = 8

    PUBLISHED = Published(
        source="Lecture notes seed 004 ('Deep Linear Network': the Hessians at 0 and at (0, 0, k)) and seed 003 "
               "(Kawaguchi 2016; Hardt & Ma 2016, Theorems 1 and 2); Baldi & Hornik 1989 for the closed form.",
        columns=("depth H", "point", "Hessian eigenvalues", "Hessian says", "the loss does"),
        rows=tuple((h, pt, ", ".join(f"{e:g}" for e in chain_hessian_eigenvalues(h, pt, 1.0)).replace("2", "2k")
                    if pt != "0" else ", ".join(f"{e:g}" for e in chain_hessian_eigenvalues(h, pt, 1.0)),
                    *KINDS[(h, pt)]) for h, pt in POINTS))
    NOTES = """Sources (fixed before any run). Published: the Hessian at 0 for H = 3 (the notes print it,
    all zeros), the notes' saddles (nature rows), and the theorems that every converged run ends at a global
    minimum: Baldi & Hornik 1989 / Kawaguchi 2016 (reached_global_pct) and Hardt & Ma 2016's Theorem 1 in
    the notes' numbering (hm_gd_reached_global_pct); these 100% are the theorems' consequences, not numbers
    the papers print. Derived: the other Hessian spectra and the kind labels (chain_hessian_eigenvalues, the
    notes' second derivatives in closed form), max_product_error (closed_form_minimum), plateau_steps and
    plateau_grows_with_depth (our own gradient-flow integral plateau_flow_steps, not a number of the notes,
    whose demo only shows the plateau growing). Protocol: hm_gd_inside_unit_ball_pct (the runs must stay in
    the region Theorem 1 covers). Sanity (cannot fail unless the code is wrong): hm_product_error (an
    identity) and hm_H_max_norm (H max_k ||W_k|| against ||log R||, within a proved remainder bound).

    Margins: exact closed forms to float64 rounding (eigenvalues 1e-12, the eigensolver's rounding;
    hm_product_error 1e-12; labels exactly); max_product_error 1e-6 on ||W_H...W_1 − M*||_max (the stated
    global-minimum tolerance; GD stops at ||grad L|| <= grad_tol); plateau_steps within plateau_rtol = 5% of
    the flow time (Euler's O(lr) error of GD against gradient flow); hm_H_max_norm within
    ||A||² e^(||A||/H) / 2H, the exact remainder of H(e^(A/H) − I) − A; rates over runs MARGIN_RATE (5 points).

    Convergence gates: a GD run counts only if ||grad L|| <= grad_tol within max_steps (global-minimum rows:
    the stored gradient norm; Hardt & Ma: fewer steps than max_steps); the others are counted in the note, and
    a cell where fewer than half converged is not comparable. A plateau depth whose loss never halved within
    plateau_max_steps is not comparable."""

    def __post_init__(self) -> None:
        for text in self.architectures:
            _sizes(text)
        if self.runs < 1 or self.hm_runs < 1 or not 0 < self.plateau_init < 1 or min(self.hm_depths, default=0) < 1:
            raise UserInputError("deep-linear: runs and hm_runs must be >= 1, plateau_init in (0, 1), hm_depths >= 1")

    @classmethod
    def full(cls) -> DeepLinear:
        return cls(architectures=("4-6-6-3", "4-2-3", "5-8-8-8-4", "6-2-2-5"), runs=64, hm_runs=64)

    def run(self, ctx: Context) -> xr.Dataset:
        cells = ([{"part": "hessian"}] + [{"part": "global", "sizes": s} for s in self.architectures]
                 + [{"part": "plateau"}, {"part": "hardt-ma"}])
        out = ctx.map(functools.partial(_cell, self), cells)
        hess, glob, plateau, hm = out[0], out[1:-2], out[-2], out[-1]
        tags = [f"{h}{pt}" for h, pt in POINTS]
        data: dict[str, Any] = {
            "eigenvalues": (("point", "i"), np.stack([np.pad(hess[f"eig{t}"], (0, 3 - len(hess[f"eig{t}"])),
                                                             constant_values=np.nan) for t in tags])),
            "kind": ("point", np.array([str(hess[f"kind{t}"]) for t in tags], dtype=object)),
            "nature": ("point", np.array([str(hess[f"nature{t}"]) for t in tags], dtype=object)),
            "plateau_steps": ("hidden_layers", plateau["steps"]),
            "plateau_flow_steps": ("hidden_layers", plateau["flow"]),
            "hm_product_error": ("hm_depth", hm["product_error"]),
            "hm_depth_max_norm": ("hm_depth", hm["depth_max_norm"]),
            "hm_log_norm": ((), float(hm["log_norm"])),
        }
        for name in ("product_error", "loss_gap", "grad_norm", "steps"):
            data[name] = (("architecture", "run"), np.stack([g[name] for g in glob]))
        for name in ("gd_path_max_norm", "gd_product_error", "gd_steps"):
            data[f"hm_{name}"] = ("hm_run", hm[name])
        coords = {"point": np.array([f"H={h} at {pt}" for h, pt in POINTS], dtype=object),
                  "architecture": np.array(list(self.architectures), dtype=object),
                  "hidden_layers": list(self.plateau_hidden), "hm_depth": list(self.hm_depths)}
        return xr.Dataset(data, coords=coords)

    def check(self, ds: xr.Dataset) -> list[Row]:
        rows: list[Row] = []
        for j, (depth, point) in enumerate(POINTS):
            key = {"H": depth, "point": point}
            for i, value in enumerate(chain_hessian_eigenvalues(depth, point, self.k)):
                rows.append(Row.compare("eigenvalue", {**key, "i": i}, _eigenvalue_source(depth, point, value),
                                        exact(float(ds.eigenvalues.values[j, i])), family="chain_eigenvalue"))
            kind, nature = KINDS[(depth, point)]
            kind_ref = ("lossatlas.studies.linear_nets.chain_loss: dL/dw = −2(1 − w) = −2 at w = 0 for H = 1"
                        if depth == 1 else "lossatlas.studies.linear_nets.chain_hessian_eigenvalues: "
                        + ("a negative eigenvalue: saddle" if kind == "saddle" else "all zero: degenerate"))
            rows.append(Row.compare("kind", key, derived(kind, kind_ref), exact(str(ds.kind.values[j])),
                                    note="not a critical point: the notes give only its Hessian" if not nature else ""))
            if nature:
                line, words = NATURE_LINES[(depth, point)]
                rows.append(Row.compare("nature", key, published(nature, f"{NOTES_REF}, 'Deep Linear Network': "
                                                                 f"{words}; seed 004:{line}", 0.0),
                                        exact(str(ds.nature.values[j])),
                                        note=f"sign of L on 8192 directions at radius {self.probe_radius:g}"))
        criterion = f"||grad L|| <= {self.grad_tol:g} within {self.max_steps} steps"
        for a, arch in enumerate(self.architectures):
            key = {"architecture": arch}
            reach = published(100.0, "Baldi & Hornik 1989; Kawaguchi 2016 (NIPS), Theorem 2.3: every local minimum "
                              "of a deep linear net is global (the notes: seed 004, line 482): every converged run "
                              "of gradient descent ends at the global minimum", MARGIN_RATE)
            error = derived(0.0, "lossatlas.studies.linear_nets.closed_form_minimum: a converged run's end-to-end "
                            "matrix is the closed-form minimiser (least squares, or reduced-rank regression "
                            "through a bottleneck); ||W_H...W_1 − M*||_max", 1e-6)
            converged, enough = converged_runs(ds.grad_norm.values[a] <= self.grad_tol)
            unconverged = int((~converged).sum())
            if not enough:
                for quantity, expected in (("reached_global_pct", reach), ("max_product_error", error)):
                    rows.append(Row.unconverged_row(quantity, key, expected, runs=converged.size,
                                                    unconverged=unconverged, criterion=criterion))
                continue
            errors = ds.product_error.values[a][converged]
            note = "" if converged.all() else f"{unconverged} runs did not converge ({criterion}) and are left out"
            rows.append(Row.compare("reached_global_pct", key, reach,
                                    rate(int((errors <= 1e-6).sum()), int(converged.sum())), note=note,
                                    unconverged=unconverged))
            rows.append(Row.compare("max_product_error", key, error, exact(float(errors.max())), note=note,
                                    unconverged=unconverged))
        flow, steps = ds.plateau_flow_steps.values, ds.plateau_steps.values
        plateau_criterion = f"the loss halved within plateau_max_steps = {self.plateau_max_steps}"
        for h, s, f in zip(self.plateau_hidden, steps, flow, strict=True):
            expected = derived(round(float(f), 1), "lossatlas.studies.linear_nets.plateau_flow_steps: the "
                               "gradient-flow time to halve the loss from a balanced start, in steps of plateau_lr",
                               self.plateau_rtol * float(f))
            if s < 0:
                rows.append(Row.unconverged_row("plateau_steps", {"hidden_layers": h}, expected, runs=1,
                                                unconverged=1, criterion=plateau_criterion))
            else:
                rows.append(Row.compare("plateau_steps", {"hidden_layers": h}, expected, exact(float(s))))
        grows = derived("yes" if (np.diff(flow) > 0).all() else "no", "lossatlas.studies.linear_nets."
                        "plateau_flow_steps: the gradient-flow time grows with depth (the notes' demo, seed 004 "
                        "'10 hidden layers')")
        if (steps < 0).any():
            rows.append(Row.unconverged_row("plateau_grows_with_depth", {}, grows, runs=steps.size,
                                            unconverged=int((steps < 0).sum()), criterion=plateau_criterion))
        else:
            rows.append(Row.compare("plateau_grows_with_depth", {}, grows,
                                    exact("yes" if (np.diff(steps) > 0).all() else "no")))
        log_norm = float(ds.hm_log_norm)
        for h, err, norm in zip(self.hm_depths, ds.hm_product_error.values, ds.hm_depth_max_norm.values, strict=True):
            rows.append(Row.compare("hm_product_error", {"H": h}, sanity(
                0.0, "(I + W)^H = exp(A/H)^H = R for Hardt & Ma's W = R^(1/H) − I (hardt_ma_construction): an "
                "identity, up to float64 rounding", 1e-12), exact(float(err))))
            bound = log_norm**2 * math.exp(log_norm / h) / (2 * h)
            rows.append(Row.compare("hm_H_max_norm", {"H": h}, sanity(
                round(log_norm, 12), "||log R||_2 of our random R, the H → ∞ limit of H max_k ||W_k|| (Hardt & Ma "
                "2016, the notes' Theorem 2); within the proved remainder bound ||A||² e^(||A||/H) / 2H at every H",
                bound),
                exact(float(norm))))
        self._hardt_ma_descent_rows(ds, rows)
        return rows

    def _hardt_ma_descent_rows(self, ds: xr.Dataset, rows: list[Row]) -> None:
        """GD from W = 0 on linear ResNets: it stays in Theorem 1's region and ends at a global minimum."""
        key = {"H": self.hm_gd_depth}
        inside = ds.hm_gd_path_max_norm.values < 1
        converged, enough = converged_runs(ds.hm_gd_steps.values < self.max_steps)
        unconverged = int((~converged).sum())
        criterion = f"||grad|| <= {self.grad_tol:g} within {self.max_steps} steps"
        ball = protocol(100.0, "a check of the set-up: Hardt & Ma 2016's Theorem 1 (the notes' numbering) covers "
                        "critical points with max_k ||W_k|| < 1, so the runs must stay inside that region",
                        MARGIN_RATE)
        rows.append(Row.compare("hm_gd_inside_unit_ball_pct", key, ball, rate(int(inside.sum()), inside.size)))
        reach = published(100.0, "Hardt & Ma 2016 (ICLR 2017), Theorem 1 as the notes number it: every critical "
                          "point with max_k ||W_k|| < 1 is a global minimum (the notes: seed 003, line 56): every "
                          "converged run inside that region ends at the global minimum", MARGIN_RATE)
        if not enough:
            rows.append(Row.unconverged_row("hm_gd_reached_global_pct", key, reach, runs=converged.size,
                                            unconverged=unconverged, criterion=criterion))
            return
        tested = converged & inside
        reached = ds.hm_gd_product_error.values[tested] <= 1e-6
        notes = [f"{unconverged} runs did not converge ({criterion}) and are left out"] if unconverged else []
        if (converged & ~inside).any():
            notes.append(f"{int((converged & ~inside).sum())} converged runs left the region max ||W_k|| < 1: "
                         "Theorem 1 does not cover them, they are left out")
        rows.append(Row.compare("hm_gd_reached_global_pct", key, reach, rate(int(reached.sum()), int(tested.sum())),
                                note="; ".join(notes), unconverged=unconverged))

    def figures(self, ds: xr.Dataset, folder: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        hidden = ds.hidden_layers.values
        ax1.semilogy(hidden, ds.plateau_steps.values, "o-", label="GD steps to halve the loss")
        ax1.semilogy(hidden, ds.plateau_flow_steps.values, "k--", label="gradient-flow prediction")
        ax1.set(xlabel="hidden layers", ylabel="steps", title=f"plateau of (1 − w1⋯wH)² from w = {self.plateau_init}")
        ax1.legend(fontsize=8)
        ax2.semilogx(ds.hm_depth.values, ds.hm_depth_max_norm.values, "o-", label="H · max ||W_k||")
        ax2.axhline(float(ds.hm_log_norm), color="k", ls="--", label="||log R|| (limit)")
        ax2.set(xlabel="depth H", title="Hardt & Ma: W_k = R^(1/H) − I")
        ax2.legend(fontsize=8)
        return [save_figure(fig, folder / "deep_linear.png", dpi=110)]


__all__ = ["DeepLinear"]
