"""The phases of a Hessian job, each resumable through a :class:`lossatlas.curvature.resume.ResumeDir`.

A phase either finds its finished result in the folder, or continues from the state kept there, or starts;
it reports products to ``progress(label, done, total)`` (``total=None`` while a Lanczos run has no fixed end)
and records how many products it stands for in ``Phases.products`` (the same whether or not it was resumed, so
``hvp_count`` of a resumed job equals that of an uninterrupted one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lossatlas.curvature.density import SpectralDensity, spectral_density
from lossatlas.curvature.hvp import HessianOperator
from lossatlas.curvature.krylov import LanczosResult, LanczosState, Which
from lossatlas.curvature.resume import ResumeDir
from lossatlas.curvature.trace import TraceEstimate, TraceMethod, estimate_trace

Phase = Callable[[str, int, int | None], None]
"""``progress(label, done, total)``: products done in the named phase; ``total`` None when open-ended."""


def _result_dict(res: LanczosResult) -> dict[str, Any]:
    return {"eigenvalues": res.eigenvalues, "residuals": res.residuals, "converged": res.converged,
            "vectors": res.vectors.cpu(), "matvecs": res.matvecs, "restarts": res.restarts, "which": res.which.value,
            "tol": res.tol, "eps": res.eps}


def _result(d: dict[str, Any], op: HessianOperator) -> LanczosResult:
    vectors = d["vectors"].to(op.device)
    return LanczosResult(eigenvalues=d["eigenvalues"], residuals=d["residuals"], converged=d["converged"],
                         vectors=vectors, matvecs=int(d["matvecs"]), restarts=int(d["restarts"]),
                         which=Which(d["which"]), tol=float(d["tol"]), eps=float(d["eps"]),
                         eigenvectors=tuple(op.to_dict(v) for v in vectors))


class _Replay:
    """The operator, answering the first products from a list of saved outputs (a resumed trace estimate draws
    the same probes, so its first products are those of the interrupted run)."""

    def __init__(self, op: HessianOperator, saved: list[Tensor], keep: Callable[[list[Tensor]], None]) -> None:
        self.op, self.outputs, self.keep, self.calls = op, list(saved), keep, 0

    @property
    def n(self) -> int:
        return self.op.n

    @property
    def device(self) -> torch.device:
        return self.op.device

    def matvec(self, v: Tensor) -> Tensor:
        if self.calls < len(self.outputs):
            out = self.outputs[self.calls].to(self.op.device)
        else:
            out = self.op.matvec(v)
            self.outputs.append(out.cpu())
            self.keep(self.outputs)
        self.calls += 1
        return out


@dataclass
class Phases:
    """Resumable phases on one operator. ``products[name]``: products each finished phase stands for."""

    op: HessianOperator
    store: ResumeDir
    progress: Phase | None = None
    products: dict[str, int] = field(default_factory=dict)

    def _report(self, label: str, done: int, total: int | None) -> None:
        if self.progress:
            self.progress(label, done, total)

    def lanczos(self, name: str, k: int, which: Which, *, tol: float, max_matvecs: int, seed: int,
                label: str | None = None) -> LanczosResult:
        """Certified extreme eigenpairs (:meth:`HessianOperator.eigenpairs`), continued from a saved state."""
        label = label or f"{name} eigenpairs"
        if (done := self.store.get(name)) is not None:
            res = _result(done, self.op)
            self._report(f"{label}: products ({int(res.converged.sum())} of {k} certified)", res.matvecs, res.matvecs)
        else:
            saved = self.store.get(f"{name}.state")
            state = LanczosState.from_dict(saved) if saved is not None else None

            def show(matvecs: int, certified: int, finished: bool) -> None:
                self._report(f"{label}: products ({certified} of {k} certified)", matvecs,
                             matvecs if finished else None)

            with self.store.live(f"{name}.state", lambda s: s.as_dict()) as keep:
                res = self.op.eigenpairs(k, which, tol=tol, max_matvecs=max_matvecs, seed=seed, progress=show,
                                         state=state, checkpoint=keep)
            self.store.put(name, _result_dict(res))
            self.store.drop(f"{name}.state")
        self.products[name] = res.matvecs
        return res

    def dense(self) -> Tensor:
        """The dense Hessian, continued from its saved column blocks."""
        h = self.store.get("dense")
        if h is None:
            columns = self.store.get("dense.partial")
            with self.store.live("dense.partial", lambda rows: torch.cat(rows)) as keep:
                h = self.op.dense(progress=lambda done, total: self._report("dense Hessian: columns", done, total),
                                  columns=columns, on_block=keep)
            self.store.put("dense", h.cpu())
            self.store.drop("dense.partial")
        else:
            self._report("dense Hessian: columns", self.op.n, self.op.n)
        self.products["dense"] = self.op.n
        return h.to(self.op.device)

    def trace(self, method: TraceMethod, matvecs: int, seed: int) -> TraceEstimate:
        """tr(H) by Hutchinson / Hutch++, continued from its saved products."""
        if (done := self.store.get("trace")) is not None:
            est = TraceEstimate(float(done["trace"]), float(done["stderr"]), int(done["matvecs"]),
                                TraceMethod(done["method"]), tuple(done["samples"]))
        else:
            saved = self.store.get("trace.partial") or []
            with self.store.live("trace.partial", list) as keep:
                replay = _Replay(self.op, saved, keep)
                est = estimate_trace(replay, method, matvecs, seed,
                                     progress=lambda done, total: self._report("trace", done, total))
            self.store.put("trace", {"trace": est.trace, "stderr": est.stderr, "matvecs": est.matvecs,
                                     "method": est.method.value, "samples": list(est.samples)})
            self.store.drop("trace.partial")
        self.products["trace"] = est.matvecs
        return est

    def density(self, name: str, *, probes: int, steps: int, bins: int, seed: int) -> SpectralDensity:
        """The SLQ density, continued from its finished probes (all finished: no products, same numbers)."""
        finished = self.store.get(f"{name}.probes") or []
        dens = spectral_density(self.op, probes=probes, steps=steps, bins=bins, seed=seed, finished=finished,
                                on_probe=lambda kept: self.store.put(f"{name}.probes", kept),
                                progress=lambda done, total: self._report(name, done, total))
        self.products[name] = dens.matvecs
        return dens

    def products_of(self, vectors: Tensor, name: str) -> Tensor:
        """H applied to the rows of ``vectors`` (cheap: recomputed on a resume, never saved)."""
        out = self.op.matmat(vectors)
        self.products[name] = self.products.get(name, 0) + int(vectors.shape[0])
        return out

    @property
    def hvp_count(self) -> int:
        return sum(self.products.values())


__all__ = ["Phase", "Phases"]
