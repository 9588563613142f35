"""Resuming a long Hessian job: finished phases and in-progress states kept in a folder beside the result.

``lossatlas hessian ... --out h.zarr`` keeps ``h.zarr.partial/`` while it runs: ``config.json`` (the
configuration hash of the job, so a different job is never continued from it) and one ``<phase>.pt`` per
phase, written atomically (a temporary file renamed into place, so a second Ctrl-C never leaves a torn file):

* a finished phase's result (top/bottom eigenpairs, the dense Hessian, the trace, the density, the verdict);
* the latest consistent state of the phase in progress: the Lanczos state
  (:class:`lossatlas.curvature.krylov.LanczosState`), the dense Hessian's finished column blocks, the density's
  finished probes, the trace's finished products. It is written every ``every`` seconds (so even a killed
  job keeps most of its work) and when the phase is interrupted (Ctrl-C).

Rerunning the same command continues from there and ends with the numbers of an uninterrupted run; the
folder is removed once the result is written. Everything is stored as plain tensors, numbers and strings
(``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lossatlas.errors import UserInputError


class ResumeDir:
    """Phases of one job (identified by ``config_hash``) in the folder ``path``; ``path=None`` keeps nothing.

    A folder written by another configuration is refused with a one-line error (unless ``overwrite``, which
    discards it).
    """

    def __init__(self, path: str | Path | None, config_hash: str, *, overwrite: bool = False,
                 every: float | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.every = every if every is not None else float(os.environ.get("LOSSATLAS_CHECKPOINT_EVERY", "30"))
        self.resumed: list[str] = []
        if self.path is None:
            return
        config = self.path / "config.json"
        if self.path.exists() and overwrite:
            shutil.rmtree(self.path)
        if self.path.exists() and not config.exists() and not any(self.path.glob("*.pt")):
            shutil.rmtree(self.path)  # created, but stopped before anything was kept
        if self.path.exists():
            try:
                old = json.loads(config.read_text())["config_hash"]
            except (OSError, ValueError, KeyError):
                old = None
            if old != config_hash:
                raise UserInputError(f"'{self.path}' holds the progress of a different hessian job; rerun that "
                                     "command, or pass --overwrite to discard it")
            self.resumed = sorted(p.stem for p in self.path.glob("*.pt"))
        else:
            self.path.mkdir(parents=True)
            config.write_text(json.dumps({"config_hash": config_hash}))

    def get(self, name: str) -> Any:
        """The stored value of ``name``, or None."""
        if self.path is None or not (self.path / f"{name}.pt").exists():
            return None
        return torch.load(self.path / f"{name}.pt", weights_only=True)

    def put(self, name: str, value: Any) -> None:
        """Store ``value`` as ``name`` (atomically)."""
        if self.path is None:
            return
        tmp = self.path / f".{name}.pt.tmp"
        torch.save(value, tmp)
        os.replace(tmp, self.path / f"{name}.pt")

    def drop(self, name: str) -> None:
        if self.path is not None:
            (self.path / f"{name}.pt").unlink(missing_ok=True)

    @contextmanager
    def live(self, name: str, serialise: Callable[[Any], Any] = lambda x: x) -> Iterator[Callable[[Any], None]]:
        """Yields ``keep(state)``: remember the latest state of the phase in progress. It is stored (after
        ``serialise``) every ``every`` seconds and, whatever ended the phase early (Ctrl-C, an error), once more."""
        latest: list[Any] = []
        last = [time.monotonic()]

        def keep(state: Any) -> None:
            latest[:] = [state]
            if self.path is not None and time.monotonic() - last[0] >= self.every:
                self.put(name, serialise(state))
                last[0] = time.monotonic()

        try:
            yield keep
        except BaseException:
            if latest and self.path is not None:
                self.put(name, serialise(latest[0]))
            raise

    def finish(self) -> None:
        """Remove the folder (the result is written)."""
        if self.path is not None and self.path.exists():
            shutil.rmtree(self.path)


def discard(path: str | Path) -> None:
    """Remove a job's progress folder (after its result is written)."""
    if Path(path).exists():
        shutil.rmtree(path)


__all__ = ["ResumeDir", "discard"]
