"""Run a registered study: prepare (or resume) its folder, run its cells, judge its rows, write its outputs.

``run_study`` is the one entry point the CLI, ``make studies`` and Python share (``lossatlas.run_study``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lossatlas.errors import UserInputError
from lossatlas.execute import make_executor
from lossatlas.studies.framework import Context, StudyResult, resolve_device, settle
from lossatlas.studies.registry import Study, get_study, params_json, parse_overrides
from lossatlas.studies.tables import write_outputs

_CONFIG = "study.json"
_CACHE_VERSION = 1


def _prepare_folder(folder: Path, config: dict[str, Any], overwrite: bool) -> None:
    marker = folder / _CONFIG
    if folder.exists() and overwrite:
        shutil.rmtree(folder)
    elif marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != config:
            raise UserInputError(f"'{folder}' holds a run of '{config['study']}' with other parameters or seed; "
                                 "choose another --out or pass --overwrite")
    elif folder.exists() and any(folder.iterdir()):
        raise UserInputError(f"'{folder}' exists and is not a study folder; choose another --out or pass "
                             "--overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(config, indent=1))


def run_study(name: str, preset: str = "quick", overrides: Mapping[str, str] | Sequence[str] | None = None, *,
              seed: int = 0, out_dir: str | Path = "runs/studies", workers: int | None = None,
              progress: Callable[[int, int], None] | None = None, overwrite: bool = False) -> StudyResult:
    """Run study ``name`` with a preset and ``--set`` overrides; write ``out_dir/name/``.

    Resumes the cells of an interrupted run with the same parameters and seed; refuses a folder holding
    another configuration unless ``overwrite``. Returns the rows and where everything was written.
    """
    info = get_study(name)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserInputError(f"--seed must be a non-negative integer, got {seed!r}")
    params: Study = dataclasses.replace(info.preset(preset), **parse_overrides(info, overrides))  # type: ignore[type-var]
    device = getattr(params, "device", None)
    if isinstance(device, str):  # checked before any work; `auto` stored as resolved
        params = dataclasses.replace(params, device=resolve_device(device))  # type: ignore[type-var]
    values = params_json(params)
    folder = Path(out_dir) / name
    config = {"study": name, "seed": seed, "params": values, "cache_version": _CACHE_VERSION}
    _prepare_folder(folder, config, overwrite)
    start = time.perf_counter()
    with make_executor(workers) as executor:
        ctx = Context(seed=seed, folder=folder, executor=executor, progress=progress)
        ds = params.run(ctx)
    rows = settle(params.check(ds))  # Holm's correction within each family of rows
    elapsed = time.perf_counter() - start
    figures = params.figures(ds, folder)
    result = StudyResult(name=name, seed=seed, preset=preset, params=values, rows=rows, elapsed_s=elapsed,
                         folder=folder, computed=ctx.computed, reused=ctx.reused, figures=figures, dataset=ds)
    write_outputs(info, params, result)
    return result



__all__ = ["run_study"]
