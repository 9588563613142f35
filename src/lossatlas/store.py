"""Results on disk: xarray Datasets in zarr, provenance in attrs, region writes for resume.

Layout of a store ``S.zarr``:

* root: an xarray Dataset with coords ``x`` (and ``y``), one float64 variable per metric
  (``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``, ...) and a bool ``completed``
  mask; attrs hold provenance (``lossatlas_version``, ``seed``, ``norm``, ``ignore``, ``bn``,
  ``model``, ``checkpoint_sha256``, ``data``, ``created``, ...) and ``config_hash``.
* ``directions/<axis>/<parameter name>``: the normalised directions actually used, one zarr array per
  parameter (read back with :func:`load_directions`).

Points are written as they finish (``to_zarr(region=...)``), values first and the ``completed`` mask
after, so a run killed at any moment resumes from what is on disk.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import shutil
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr
import zarr

from lossatlas import __version__
from lossatlas.errors import UserInputError
from lossatlas.params import tensors_sha256
from lossatlas.specs import canonical_spec

if TYPE_CHECKING:
    from torch import nn

COMPLETED = "completed"
_DIRECTIONS = "directions"
VARIABLES = "variables"
"""Root attr: the data variables in the order they were created (zarr lists members in no fixed order)."""

warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")


def config_hash(config: Mapping[str, Any]) -> str:
    """A stable hash of a JSON-able configuration (what decides the numbers in a store)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _open_attrs(path: Path) -> dict[str, Any] | None:
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - anything unreadable is "not a lossatlas store"
        return None


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The root attrs of a store (provenance), without loading its arrays; a one-line error if unreadable."""
    attrs = _open_attrs(Path(path))
    if attrs is None:
        raise UserInputError(f"'{path}' is not a readable lossatlas store")
    return attrs


def prepare_store(path: str | Path, coords: Mapping[str, np.ndarray], metrics: Sequence[str],
                  attrs: Mapping[str, Any], chunks: Mapping[str, int], overwrite: bool = False) -> np.ndarray:
    """Create the store, or reopen it for resume; returns the ``completed`` mask.

    An existing store made by a different configuration (``attrs['config_hash']``) is refused with a
    one-line error unless ``overwrite``.
    """
    path = Path(path)
    dims = tuple(coords)
    shape = tuple(len(v) for v in coords.values())
    if path.exists():
        old = _open_attrs(path)
        if overwrite:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif old is None or "config_hash" not in old:
            raise UserInputError(
                f"'{path}' exists and is not a lossatlas store; choose another --out or pass --overwrite"
            )
        elif old["config_hash"] != attrs["config_hash"]:
            raise UserInputError(
                f"'{path}' holds a run with a different configuration; choose another --out or pass --overwrite"
            )
        else:
            with xr.open_zarr(path, consolidated=False) as ds:
                return ds[COMPLETED].values.copy()
    data_vars = {m: (dims, np.full(shape, np.nan)) for m in metrics}
    data_vars[COMPLETED] = (dims, np.zeros(shape, dtype=bool))
    ds = xr.Dataset(data_vars, coords={k: np.asarray(v, dtype=np.float64) for k, v in coords.items()},
                    attrs={**attrs, VARIABLES: list(data_vars)})
    chunk_shape = tuple(chunks[d] for d in dims)
    encoding = {v: {"chunks": chunk_shape} for v in data_vars}
    ds.to_zarr(path, mode="w", encoding=encoding, consolidated=False)
    return np.zeros(shape, dtype=bool)


def _region_writes(arrays: Mapping[str, Any], region: Mapping[str, slice],
                   values: Mapping[str, np.ndarray | None]) -> list[tuple[Any, tuple[slice, ...], np.ndarray]]:
    writes = []
    for name, v in values.items():
        array = arrays[name]
        dims = array.metadata.dimension_names or tuple(region)
        index = tuple(region[d] for d in dims)
        shape = tuple(s.stop - s.start for s in index)
        data = np.ones(shape, dtype=bool) if v is None else np.asarray(v, dtype=np.float64).reshape(shape)
        writes.append((array, index, data))
    return writes


def _write_phases(*phases: list[tuple[Any, tuple[slice, ...], np.ndarray]]) -> None:
    """Write zarr arrays phase after phase (a phase finishes before the next starts), each phase's arrays
    concurrently through zarr's async API when it has one (zarr 3): one round trip to zarr's event loop."""
    try:
        import asyncio

        from zarr.core.sync import sync

        async def all_writes() -> None:
            for writes in phases:
                await asyncio.gather(*(a._async_array.setitem(i, d) for a, i, d in writes))

        sync(all_writes())
    except (ImportError, AttributeError):
        for writes in phases:
            for array, index, data in writes:
                array[index] = data


class RegionWriter:
    """Writes finished points into one store, its arrays opened once (a grid writes a region per work unit).

    Each region gets its metric values first, then the ``completed`` flags of the same region (dims read from
    each array's ``dimension_names``), so a process killed between the two leaves the points marked unfinished
    and they are recomputed. With ``background=True`` a region is written by a writer thread while the caller
    computes the next one: at most one region is in flight, :meth:`write` first waits for the previous one, and
    :meth:`close` for the last (a write error is raised there). Use it as a context manager.
    """

    def __init__(self, path: str | Path, background: bool = False) -> None:
        self._arrays = dict(zarr.open_group(str(path), mode="r+").arrays())
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lossatlas-store") if background else None
        self._pending: Future[None] | None = None

    def _write_now(self, region: Mapping[str, slice], values: Mapping[str, np.ndarray]) -> None:
        _write_phases(_region_writes(self._arrays, region, values),
                      _region_writes(self._arrays, region, {COMPLETED: None}))

    def write(self, region: Mapping[str, slice], values: Mapping[str, np.ndarray]) -> None:
        """Write one region (values, then ``completed``); in the background when the writer was made so."""
        if self._pool is None:
            self._write_now(region, values)
            return
        self.wait()
        self._pending = self._pool.submit(self._write_now, region, dict(values))

    def wait(self) -> None:
        """Block until the region in flight is on disk (re-raises its error)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the last region and stop the writer thread."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def __enter__(self) -> RegionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_region(path: str | Path, region: Mapping[str, slice], values: Mapping[str, np.ndarray]) -> None:
    """Write finished points of one region (values, then ``completed``); see :class:`RegionWriter`."""
    RegionWriter(path).write(region, values)


def update_attrs(path: str | Path, **attrs: Any) -> None:
    """Set root attributes (e.g. ``status``, ``nonfinite_points``)."""
    zarr.open_group(str(path), mode="a").attrs.update(attrs)


def write_directions(path: str | Path, directions: Sequence[Mapping[str, torch.Tensor]],
                     axes: Sequence[str]) -> None:
    """Store the normalised directions under ``directions/<axis>/<name>`` (names kept in attrs).

    The arrays are created and filled concurrently through zarr's async API (zarr 3): one round trip to zarr's
    event loop instead of two per parameter.
    """
    root = zarr.open_group(str(path), mode="a")
    group = root.require_group(_DIRECTIONS)
    jobs = []
    for axis, d in zip(axes, directions, strict=True):
        sub = group.require_group(axis)
        sub.attrs["names"] = list(d)
        jobs += [(sub, name, t.detach().cpu().numpy()) for name, t in d.items()]
    try:
        import asyncio

        from zarr.core.sync import sync

        async def create_and_fill(sub: Any, name: str, arr: np.ndarray) -> None:
            z = await sub._async_group.create_array(name, shape=arr.shape, dtype=arr.dtype, overwrite=True)
            await z.setitem(Ellipsis, arr)

        async def all_arrays() -> None:
            await asyncio.gather(*(create_and_fill(*job) for job in jobs))

        sync(all_arrays())
    except (ImportError, AttributeError):
        for sub, name, arr in jobs:
            z = sub.create_array(name, shape=arr.shape, dtype=arr.dtype, overwrite=True)
            z[...] = arr
    group.attrs["axes"] = list(axes)


def load_directions(path: str | Path) -> list[dict[str, torch.Tensor]]:
    """The normalised directions a store was computed with: one ``{parameter name: tensor}`` per axis."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"store '{path}' does not exist")
    try:
        group: Any = zarr.open_group(str(path), mode="r")[_DIRECTIONS]
    except (KeyError, FileNotFoundError):
        raise UserInputError(f"store '{path}' holds no directions") from None
    out: list[dict[str, torch.Tensor]] = []
    for axis in group.attrs["axes"]:
        sub = group[axis]
        out.append({str(name): torch.from_numpy(np.asarray(sub[name][...])) for name in sub.attrs["names"]})
    return out


def variable_order(name: str) -> tuple[int, int, str]:
    """Canonical order of a store's variables (stores written before ``attrs["variables"]``): losses and
    accuracies train before test, then their ``_stderr``, then other maps, then ``completed``."""
    if name == COMPLETED:
        return (9, 0, name)
    base = name.removesuffix("_stderr")
    split = {"train": 0, "test": 2}.get(base.split("_", 1)[0], 4) + (base.endswith("_accuracy"))
    if base.endswith(("_loss", "_accuracy")):
        return (0 if base == name else 1, split, name)
    return (2 if base == name else 3, 0, name)


def in_order(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with its data variables in creation order (``attrs["variables"]``, else :func:`variable_order`)."""
    names = [str(v) for v in ds.data_vars]
    recorded = [str(v) for v in ds.attrs.get(VARIABLES, []) if v in ds.data_vars]
    rest = sorted((n for n in names if n not in recorded), key=variable_order)
    order = recorded + rest
    return ds if order == names else ds[order]


def open_surface(path: str | Path) -> xr.Dataset:
    """Open a lossatlas store as an (in-memory) xarray Dataset with coords ``x`` (and ``y``).

    Data variables come in the order they were created: metrics, their standard errors, other maps
    (``lambda_max``, ...), then ``completed``.
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"store '{path}' does not exist; pass the --out of a lossatlas run")
    try:
        with xr.open_zarr(path, consolidated=False, chunks=None) as ds:  # numpy, not dask: 3× faster to load
            return in_order(ds.load())
    except Exception as exc:  # noqa: BLE001
        raise UserInputError(f"'{path}' is not a readable lossatlas store ({type(exc).__name__})") from None


def describe_model(model: nn.Module) -> str:
    """What a model made in Python is called in provenance: ``"Sequential (1,234 parameters)"``."""
    n = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__} ({n:,} parameters)"


def provenance(kind: str, model: nn.Module, data: Any, spec: Any, extra: Mapping[str, Any],
                provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """Root attrs of a result: what made it (versions, model, data and checkpoint hashes, evaluation settings,
    ``extra``) and ``config_hash`` over everything that decides the numbers (not the versions or the date).

    ``provenance`` holds strings the caller knows better (the ``model`` / ``data`` specs, ``checkpoint_sha256``
    of the file); ``spec`` is the :class:`lossatlas.engine.EvalSpec` (or anything with ``loss``, ``batch_size``,
    ``bn``, ``subset`` and ``subset_seed``).
    """
    prov = dict(provenance or {})
    attrs: dict[str, Any] = {
        "kind": kind,
        "lossatlas_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "model": prov.pop("model", None) or describe_model(model),
        "data": prov.pop("data", getattr(data, "name", "?")),
        "data_sha256": data.fingerprint(),
        "checkpoint_sha256": prov.pop("checkpoint_sha256", None) or tensors_sha256(model.state_dict()),
        "loss": spec.loss,
        "batch_size": spec.batch_size,
        "bn": spec.bn.value,
        "batchnorm_layers": sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()),
        **({"subset": spec.subset, "subset_seed": spec.subset_seed} if spec.subset is not None else {}),
        **extra,
        **prov,
    }
    # what decides the numbers: contents (hashes), settings and specs, not versions, dates or how a path was typed
    # ("weights" is a note beside checkpoint_sha256; "directions_from" a path beside the directions' hash)
    ignore_for_hash = {"created", "python_version", "torch_version", "lossatlas_version", "checkpoint",
                       "checkpoint2", "weights", "directions_from", "batchnorm_layers"}
    hashed = {k: (canonical_spec(v) if k in ("model", "data") else v) for k, v in attrs.items()
              if k not in ignore_for_hash}
    attrs["config_hash"] = config_hash(hashed)
    attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return attrs

