"""Executors: where chunks of grid points are evaluated.

Every grid-shaped computation (surfaces, interpolations, convexity maps) is a list of
:class:`WorkUnit` s and one picklable task ``task(unit) -> {metric: values}``. An executor yields
``(unit, result)`` pairs as they finish; the driver writes each one to the store straight away, so
resume works the same way whichever executor ran the work.

* :class:`InProcessExecutor` (default): one unit after another in this process.
* :class:`DaskExecutor`: a Dask cluster. The task (model + data inside the evaluator) is scattered to
  every worker once; units are submitted as small tasks and come back in completion order. A unit
  whose worker dies is rerun elsewhere by the scheduler (or resubmitted by the driver when the
  scattered task itself was lost); each region is yielded exactly once.

:func:`make_executor` turns the CLI's ``--workers N`` / ``--scheduler ADDRESS`` into one of them. See
``docs/scale-out.md`` for Slurm/PBS (dask-jobqueue), Kubernetes and one GPU per worker.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import signal
import sys
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lossatlas.errors import UserInputError

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkUnit:
    """A chunk of grid points.

    Attributes:
        region: ``{dim: slice}`` of the store this chunk fills, e.g. ``{"x": slice(3, 4), "y": slice(0, 9)}``.
        coords: ``(P, m)`` coefficients of the m directions for the P points, in row-major order of region.
    """

    region: dict[str, slice]
    coords: np.ndarray


Task = Callable[[WorkUnit], dict[str, np.ndarray]]


def region_key(unit: WorkUnit) -> tuple[tuple[str, int, int], ...]:
    """A hashable identity of the store region a unit fills (used to write every region once)."""
    return tuple((dim, int(s.start), int(s.stop)) for dim, s in unit.region.items())


class Executor(Protocol):
    """Runs a task over work units, yielding results in completion order."""

    def run(self, task: Task, units: Sequence[WorkUnit]) -> Iterator[tuple[WorkUnit, dict[str, np.ndarray]]]:
        ...


class InProcessExecutor:
    """Evaluate units one after another in this process (the default)."""

    def run(self, task: Task, units: Sequence[WorkUnit]) -> Iterator[tuple[WorkUnit, dict[str, np.ndarray]]]:
        for unit in units:
            yield unit, task(unit)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> InProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- shipping tasks ---------------------------------------------------------------------------------
_USER_MODULES = ("lossatlas_user_",)  # models, data, losses imported from file.py (lossatlas.userfunc)


class ByValue:
    """Wraps an object so Dask ships it with cloudpickle, user code from ``file.py`` specs by value.

    Models and datasets given as ``file.py:function`` live in modules the workers cannot import; they are
    registered with ``cloudpickle.register_pickle_by_value`` so their classes travel with the task. A
    worker unpickles the wrapped object itself (not the wrapper).
    """

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        import cloudpickle

        for name, module in list(sys.modules.items()):
            if name.startswith(_USER_MODULES) and module is not None:
                cloudpickle.register_pickle_by_value(module)
        return cloudpickle.loads, (cloudpickle.dumps(self.obj),)


# -- worker side ------------------------------------------------------------------------------------
_PLACE_LOCK = threading.Lock()


def worker_device(requested: str, worker_name: object, device_count: int) -> str:
    """The device a worker evaluates on: ``cuda:{index % device_count}`` for a CUDA request, else as given.

    ``index`` is the worker's name when it is an integer (``LocalCluster`` names workers 0..N-1),
    otherwise a stable hash of the name (dask-jobqueue / Kubernetes names). With one visible GPU per
    worker (``CUDA_VISIBLE_DEVICES``, dask-cuda) this is always ``cuda:0``.
    """
    if not requested.startswith("cuda") or device_count < 1:
        return requested
    text = str(worker_name)
    index = int(text) if text.isdigit() else zlib.crc32(text.encode())
    return f"cuda:{index % device_count}"


def _task_device(task: Any) -> Any:
    """The torch device a task computes on: ``task.device`` or ``task.evaluator.device`` (None if neither)."""
    device = getattr(task, "device", None)
    return device if device is not None else getattr(getattr(task, "evaluator", None), "device", None)


def place_on_worker(task: Any) -> None:
    """Move a scattered CUDA task (one with ``.to(device)``) to this worker's own GPU, once.

    Scattered objects live in the worker's memory, so the move sticks for every later unit.
    """
    device = _task_device(task)
    if device is None or getattr(device, "type", None) != "cuda" or not hasattr(task, "to"):
        return
    import torch
    from distributed import get_worker

    target = worker_device("cuda", get_worker().name, torch.cuda.device_count())
    with _PLACE_LOCK:
        if str(_task_device(task)) != target:
            task.to(target)


def set_worker_threads(torch_threads: int | None) -> None:
    """``torch.set_num_threads`` in a worker process (None: leave it)."""
    if torch_threads:
        import torch

        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


def run_unit(task: Task, unit: WorkUnit, torch_threads: int | None = None) -> dict[str, np.ndarray]:
    """A Dask worker's job for one unit: set torch threads, move the task to the worker's device, evaluate.

    ``torch_threads``: intra-op threads of this worker process (two single-threaded workers on a 2-core
    machine must not each start 2 threads); None leaves the worker's setting.
    """
    set_worker_threads(torch_threads)
    place_on_worker(task)
    return task(unit)


@contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Ignore SIGINT while the local worker processes are spawned.

    A terminal's Ctrl-C reaches every process of its group, the local Dask workers included: each died with a
    ``KeyboardInterrupt`` traceback on the shared stderr (and the scheduler logged the scattered task as lost)
    while the driver stopped cleanly. An ignored signal stays ignored in a child after ``exec``, and Python then
    installs no ``KeyboardInterrupt`` handler, so the workers never see Ctrl-C; the driver alone handles it and
    closes its cluster. A Ctrl-C in the seconds the cluster takes to start is lost (the price of this idiom); a
    worker that a nanny restarts later is spawned with the driver's own handler.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# -- driver side ------------------------------------------------------------------------------------
class DaskExecutor:
    """Evaluate units on a Dask cluster, yielding results in completion order.

    Args:
        client: a connected ``distributed.Client``.
        cluster: a cluster this executor started and must close (``LocalCluster``), or None.
        retries: Dask retries of a unit that raised (a worker that *dies* is handled by the scheduler,
            which reruns its tasks elsewhere).
        resubmits: how often the driver resubmits a unit whose task was cancelled or whose workers
            kept dying (``KilledWorker``), re-scattering the task when its data was lost.
        torch_threads: intra-op threads per worker (None: leave each worker's default).
    """

    def __init__(self, client: Client, cluster: LocalCluster | None = None, *, retries: int = 2,
                 resubmits: int = 3, torch_threads: int | None = None) -> None:
        self.client = client
        self.cluster = cluster
        self.retries = retries
        self.resubmits = resubmits
        self.torch_threads = torch_threads
        self._muted: list[logging.Handler] = []

    @property
    def n_workers(self) -> int:
        """Workers currently connected to the scheduler."""
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def run(self, task: Task, units: Sequence[WorkUnit]) -> Iterator[tuple[WorkUnit, dict[str, np.ndarray]]]:
        """Scatter ``task`` to every worker once, submit one Dask task per unit, yield as they finish."""
        from distributed import KilledWorker, as_completed
        from distributed.client import FutureCancelledError

        if not units:
            return
        client = self.client
        shipped = client.scatter(ByValue(task), broadcast=True, hash=False)
        owner: dict[Any, WorkUnit] = {}  # Dask key -> unit
        attempts: dict[tuple[tuple[str, int, int], ...], int] = {}

        def submit(unit: WorkUnit) -> Any:
            future = client.submit(run_unit, shipped, unit, self.torch_threads, retries=self.retries,
                                   pure=False)
            owner[future.key] = unit
            return future

        pending = as_completed([submit(u) for u in units], loop=client.loop)
        written: set[tuple[tuple[str, int, int], ...]] = set()
        done = False
        try:
            for future in pending:
                unit = owner.pop(future.key)
                key = region_key(unit)
                if key in written:  # a duplicate of a resubmitted unit: never written twice
                    continue
                try:
                    result = future.result()
                except (KilledWorker, FutureCancelledError) as exc:
                    attempts[key] = attempts.get(key, 0) + 1
                    if attempts[key] > self.resubmits:
                        raise RuntimeError(f"chunk {key} failed {attempts[key]} times on the cluster: "
                                           f"{type(exc).__name__}: {exc}") from exc
                    if shipped.status != "finished":  # every copy of the task was lost with its workers
                        shipped = client.scatter(ByValue(task), broadcast=True, hash=False)
                    log.warning("resubmitting chunk %s after %s", key, type(exc).__name__)
                    pending.add(submit(unit))
                    continue
                written.add(key)
                yield unit, result
            done = True
        finally:  # also on Ctrl-C: completions keep arriving on another thread, so copy under its lock
            if not done:
                self._mute_cluster_logs()
            with pending.lock:
                leftover = list(pending.futures)
            try:
                if leftover:
                    client.cancel(leftover, force=True)
                client.cancel([shipped], force=True)
            except Exception:  # noqa: BLE001 - a cluster shutting down may refuse; nothing is left to save
                log.debug("cancelling leftover chunks failed", exc_info=True)

    def _mute_cluster_logs(self) -> None:
        """Silence Dask's log handlers until :meth:`close`, once a run is abandoned (Ctrl-C, an error).

        The scheduler and nannies of a local cluster run in this process and log to stderr what the driver's
        cancellations race with ("Couldn't gather keys ... forgotten", "lose scattered data"): noise after a
        clean stop, which must end in one line.
        """
        for handler in logging.getLogger("distributed").handlers:
            if handler not in self._muted:
                handler.addFilter(_drop_record)
                self._muted.append(handler)

    def close(self) -> None:
        """Close the client, and the cluster if this executor started it."""
        try:
            self.client.close()
            if self.cluster is not None:
                self.cluster.close()
        finally:
            for handler in self._muted:
                handler.removeFilter(_drop_record)
            self._muted.clear()

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:
            self._mute_cluster_logs()
        self.close()


def _drop_record(record: logging.LogRecord) -> bool:
    return False


_ADDRESS = re.compile(r"^([a-z]+://)?[^\s:/]+(:\d+)?$|^[a-z]+://\S+$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_memory(text: str | int) -> int:
    """``"2GB"`` → 2·10⁹ bytes, ``"512MiB"`` → 2²⁹, ``"1e9"``/``1000000`` → bytes; one-line error otherwise.

    The budget for one vmapped forward pass (:attr:`lossatlas.engine.EvalSpec.memory_bytes`): it decides
    how many grid points share a pass over each batch.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    raw = str(text).strip()
    match = _SIZE.match(raw)
    try:
        if match:
            unit = match.group(2).lower().removesuffix("b")
            size = int(float(match.group(1)) * _UNITS[unit])
        else:
            value = float(raw)
            size = int(value) if value.is_integer() else 0
        if size > 0:
            return size
    except (KeyError, ValueError, OverflowError):
        pass
    raise UserInputError(f"--memory must be a size like 2GB, 512MiB or 1000000 (bytes), got '{text}'")


def check_device(device: str, flag: str = "--device ") -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, checked before any work: one line (``flag`` + value, e.g. ``--device cuda`` or
    ``--set device=cuda``) when CUDA is asked for and absent, or the name is not a device."""
    import torch

    if not (device == "cpu" or re.fullmatch(r"cuda(:\d+)?", device)):
        raise UserInputError(f"{flag.strip().rstrip('=')} must be cpu, cuda or cuda:N, got '{device}'")
    if device != "cpu" and not torch.cuda.is_available():
        raise UserInputError(f"{flag}{device} asked for, but no CUDA device is available; use {flag}cpu")
    return device


def make_executor(workers: int | None = None, scheduler: str | None = None, *, threads_per_worker: int = 1,
                  torch_threads: int | None = None, timeout: float = 4.0,
                  retries: int = 2) -> InProcessExecutor | DaskExecutor:
    """The executor for ``--workers N`` / ``--scheduler ADDRESS`` (neither: in-process).

    Args:
        workers: start a Dask ``LocalCluster`` of this many worker processes (``threads_per_worker``
            threads each); closed again with the executor.
        scheduler: address of a running Dask scheduler (``tcp://host:8786``), e.g. one started by
            dask-jobqueue on Slurm/PBS or dask-kubernetes; the cluster is left running on close.
        torch_threads: intra-op threads per worker; default for ``workers``: cores // workers (so two
            workers on two cores run one thread each), for ``scheduler``: the workers' own setting.
        timeout: seconds to wait for the scheduler before a one-line error.

    Use as a context manager so local worker processes are always shut down.
    """
    if workers is not None and scheduler is not None:
        raise UserInputError("give either --workers (a local cluster) or --scheduler (a running one), "
                             "not both")
    if workers is None and scheduler is None:
        return InProcessExecutor()
    if threads_per_worker < 1:
        raise UserInputError(f"threads per worker must be a positive integer, got {threads_per_worker}")
    from distributed import Client, LocalCluster

    if scheduler is not None:
        address = scheduler.strip()
        if not _ADDRESS.match(address):
            raise UserInputError(f"--scheduler must be an address like tcp://HOST:8786, got '{scheduler}'")
        try:
            client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            if isinstance(exc, TimeoutError) or "timed out" in reason.lower():
                reason = f"nothing answered within {timeout:g} s"
            raise UserInputError(f"cannot reach a Dask scheduler at {address} ({reason}); start one "
                                 "(dask scheduler) or fix --scheduler") from None
        return DaskExecutor(client, retries=retries, torch_threads=torch_threads)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserInputError(f"--workers must be a positive integer, got {workers!r}")
    threads = torch_threads or max(1, (os.cpu_count() or 1) // (workers * threads_per_worker))
    import dask.config

    # Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 in workers, which fixes glibc's mmap threshold: every
    # large tensor is then mmapped and freed again, costing ~50% more CPU per chunk (measured, see
    # benchmarks/README.md). Workers get the allocator defaults of an ordinary process instead.
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), _workers_ignore_ctrl_c():
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
    try:
        client = Client(cluster, set_as_default=False)
        client.run(importlib.import_module, "lossatlas.landscape")  # torch & co. load while the cluster starts
        return DaskExecutor(client, cluster, retries=retries, torch_threads=threads)
    except BaseException:
        cluster.close()
        raise


__all__ = ["ByValue", "DaskExecutor", "Executor", "InProcessExecutor", "Task", "WorkUnit", "check_device",
           "make_executor",
           "parse_memory", "place_on_worker", "region_key", "run_unit", "set_worker_threads", "worker_device"]
