"""A tiny study for framework tests: each cell sleeps a little and returns seeded numbers (importable by a
subprocess for the kill-and-resume test; registered under the name ``test-cells``)."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from lossatlas.studies import Context, Row, Study, study
from lossatlas.studies.registry import _REGISTRY


def _cell(params: CellStudy, cell: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    if params.fail_at == cell["i"]:
        raise KeyboardInterrupt  # what Ctrl-C looks like inside a cell
    log = os.environ.get("LOSSATLAS_TEST_CELL_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{cell['i']}\n")
    time.sleep(params.sleep)
    return {"value": np.random.default_rng(seed).standard_normal(params.runs)}


@dataclass(frozen=True)
class CellStudy(Study):
    """Cells of seeded normal numbers; the check compares their mean with 0."""

    cells: int = 4
    runs: int = 50
    sleep: float = 0.0
    fail_at: int = -1
    scale: float = 1.0
    flag: bool = False
    names: tuple[str, ...] = ("a", "b")

    def run(self, ctx: Context) -> xr.Dataset:
        out = ctx.map(functools.partial(_cell, self), [{"i": i} for i in range(self.cells)])
        return xr.Dataset({"value": (("cell", "run"), np.stack([o["value"] for o in out]))})

    def check(self, ds: xr.Dataset) -> list[Row]:
        from lossatlas.studies.verdict import derived, exact, protocol, sample

        return [Row.compare("mean", {"cells": self.cells}, derived(0.0, "numpy.random.Generator.standard_normal",
                                                                    0.5), sample(ds.value.values.ravel())),
                Row.compare("unpublished", {}, protocol(None, "no expected value"), exact(1.0),
                            note="no published value")]


def register() -> None:
    study("test-cells", paper="none", claim="none")(CellStudy)


def unregister() -> None:
    _REGISTRY.pop("test-cells", None)
