"""The batch contract: what a split's inputs may be, how a model is called on them, what comes back.

Every feature reaches the data through these functions, so one contract holds everywhere (the engine, Hessian
products, training, paths, the Dask executor, subsets):

* **inputs** ``x`` of a split: a tensor ``(N, ...)``, a tuple of tensors, or a dict of named tensors, every
  leaf with the same leading ``N``; the model is called as ``model(x)``, ``model(*x)`` or ``model(**x)``.
  dtypes are kept: integer token ids stay int64, booleans stay bool; only float leaves are cast (to the
  model's float dtype). A :class:`StreamColumn` is the lazy form: a map-style ``torch.utils.data.Dataset``
  read batch by batch, never held whole (memory is bounded by the batch).
* **targets** ``y``: int64 class labels ``(N,)``, int64 per-token labels ``(N, T, ...)`` where
  :data:`IGNORE_INDEX` (-100, the PyTorch / Hugging Face convention) marks positions without a loss, or
  float targets ``(N, k, ...)``.
* **outputs**: a tensor, a tuple / list (its first element), or an object or dict with ``logits``
  (Hugging Face's ``ModelOutput``); :func:`logits_of` picks the tensor.

Losses over per-token labels are means over all unmasked tokens of the split (what
``F.cross_entropy(logits.flatten(0, -2), y.flatten(), ignore_index=-100)`` gives on the whole split), exactly,
at every batch size: the engine sums per-row token sums and divides by the split's token count once
(:mod:`lossatlas.engine.losses`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor, nn

from lossatlas.errors import UserInputError

IGNORE_INDEX = -100
"""Label of a position that has no loss (PyTorch's ``ignore_index`` default, Hugging Face's label padding)."""

Inputs = Union[Tensor, tuple[Tensor, ...], dict[str, Tensor], "StreamColumn"]
"""A split's (or a batch's) inputs: a tensor, a tuple or a dict of tensors (or a lazy stream column)."""


def _fail(message: str) -> UserInputError:
    return UserInputError(" ".join(message.split()))


# ----------------------------------------------------------------------------- structure


def leaves(x: Any) -> list[Tensor]:
    """The tensors of ``x`` in call order (tuple order, dict insertion order)."""
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, dict):
        return list(x.values())
    if isinstance(x, tuple | list):
        return list(x)
    raise TypeError(f"not inputs: {type(x).__name__}")


def describe(x: Any) -> str:
    """Short text of a structure for messages: ``tensor (N, 8) int64``, ``tuple of 2``, ``dict(a, b)``."""
    if isinstance(x, StreamColumn):
        return f"a streamed dataset of {len(x)} rows"
    if isinstance(x, Tensor):
        return f"tensor {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
    if isinstance(x, dict):
        return f"dict({', '.join(x)})"
    return f"tuple of {len(x)}"


def num_rows(x: Inputs) -> int:
    """``N``, the leading size shared by every leaf."""
    if isinstance(x, StreamColumn):
        return len(x)
    return int(leaves(x)[0].shape[0])


def map_leaves(fn: Callable[[Tensor], Tensor], x: Any) -> Any:
    """``x`` with ``fn`` applied to every tensor, the structure kept."""
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    return tuple(fn(v) for v in x)


def take(x: Inputs, index: slice | Tensor | Sequence[int]) -> Any:
    """The rows ``index`` of ``x`` as tensors (a stream reads them now)."""
    if isinstance(x, StreamColumn):
        return x.read(index)
    if not isinstance(index, slice) and not isinstance(index, Tensor):
        index = torch.as_tensor(np.asarray(index, dtype=np.int64))
    return map_leaves(lambda t: t[index.to(t.device) if isinstance(index, Tensor) else index], x)


def select(x: Inputs, index: slice | Tensor | np.ndarray) -> Inputs:
    """The rows ``index`` of ``x`` kept as a split (a stream stays lazy: only the index is stored; a slice of a
    tensor is a view)."""
    if isinstance(x, StreamColumn):
        rows = np.arange(len(x))[index] if isinstance(index, slice) else np.asarray(index, dtype=np.int64)
        return x.select(rows)
    if isinstance(index, slice):
        return take(x, index)  # type: ignore[no-any-return]
    return take(x, torch.as_tensor(np.asarray(index, dtype=np.int64)))  # type: ignore[no-any-return]


def to_device(x: Inputs, device: str | torch.device | None = None, float_dtype: torch.dtype | None = None) -> Any:
    """``x`` on ``device`` with float leaves cast to ``float_dtype`` (integer and bool leaves keep their dtype)."""
    if isinstance(x, StreamColumn):
        return x.configure(device=device, float_dtype=float_dtype)

    def move(t: Tensor) -> Tensor:
        dtype = float_dtype if float_dtype is not None and t.is_floating_point() else None
        return t.to(device=device, dtype=dtype)

    return map_leaves(move, x)


def float_dtype_of(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 for a model without one)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def model_args(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` to call a model on ``x``: ``(x,)``, ``x`` (a tuple) or ``**x`` (a dict)."""
    if isinstance(x, dict):
        return (), dict(x)
    if isinstance(x, tuple | list):
        return tuple(x), {}
    return (x,), {}


def logits_of(output: Any) -> Tensor:
    """The tensor of a model output: itself, a tuple's first element, ``output.logits`` or ``output["logits"]``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]  # type: ignore[no-any-return]
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise _fail(f"the model returned {type(output).__name__}; lossatlas needs a tensor, a tuple whose first "
                "element is the output tensor, or an object/dict with 'logits'")


def call_model(model: nn.Module, x: Any) -> Tensor:
    """``model(x)`` / ``model(*x)`` / ``model(**x)``, reduced to its output tensor (:func:`logits_of`)."""
    args, kwargs = model_args(x)
    return logits_of(model(*args, **kwargs))


# ----------------------------------------------------------------------------- checks


def probe_model(model: nn.Module, x: Any, name: str) -> Tensor:
    """The model's output tensor on a few samples ``x``; a failure is one line saying what the inputs were."""
    try:
        with torch.no_grad():
            return call_model(model, x)
    except UserInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the model's error, reported in one line with a hint
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "check that the data matches the model"
        if "indices" in text and any(t.is_floating_point() for t in leaves(x)):
            hint = "token ids must be integers: save them as int64 (float ids are never rounded silently)"
        elif "Long" in text and any(not t.is_floating_point() for t in leaves(x)):
            hint = ("integer inputs are kept as integers (token ids); save pixel or feature values as float32 "
                    "(np.float32) if the model computes with them")
        elif isinstance(exc, TypeError) and "argument" in text:
            hint = ("give several inputs as a tuple (.npz arrays x_0, x_1, ...) and named inputs as a dict "
                    "(.npz arrays x_<name>) so the model is called as model(*x) or model(**x)")
        raise _fail(f"{name}: the model failed on two samples ({describe(x)}): {type(exc).__name__}: "
                    f"{text[:300]}; {hint}") from None



def check_inputs(x: Any, name: str, what: str = "x") -> Any:
    """Validate a split's inputs (one-line errors): tensors only, one N for every leaf, N > 0."""
    if isinstance(x, StreamColumn):
        return x
    if isinstance(x, list):
        x = tuple(x)
    if not isinstance(x, Tensor | tuple | dict) or isinstance(x, tuple | dict) and not x:
        raise _fail(f"{name}: {what} must be a tensor, a tuple of tensors or a dict of tensors, got "
                    f"{type(x).__name__}")
    items = list(x.items()) if isinstance(x, dict) else list(enumerate(leaves(x)))
    sizes = {}
    for key, leaf in items:
        if not isinstance(leaf, Tensor) or leaf.ndim == 0:
            raise _fail(f"{name}: {what}[{key!r}] must be a tensor with a leading sample dimension, got "
                        f"{type(leaf).__name__}{'' if not isinstance(leaf, Tensor) else ' of shape ()'}")
        sizes[key] = int(leaf.shape[0])
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{k}: {n}" for k, n in sizes.items())
        raise _fail(f"{name}: every input of {what} needs the same number of rows N, got {shown}; "
                    "give every leaf one row per sample")
    if not next(iter(sizes.values())):
        raise _fail(f"{name}: {what} has no rows; a split needs at least one sample")
    return x


def per_token(y: Tensor | StreamColumn) -> bool:
    """Whether ``y`` are per-token labels: integer targets with more than one dimension."""
    if isinstance(y, StreamColumn):
        return y.per_token
    return not y.is_floating_point() and y.ndim >= 2


def check_labels(y: Tensor, num_classes: int, where: str) -> None:
    """One-line error unless integer labels lie in ``[0, num_classes)`` (or are :data:`IGNORE_INDEX`)."""
    if y.is_floating_point() or not y.numel():
        return
    real = y[y != IGNORE_INDEX]
    if not real.numel():
        raise _fail(f"{where}: every label is {IGNORE_INDEX} (ignored); the loss would be 0/0")
    lo, hi = int(real.min()), int(real.max())
    if lo < 0 or hi >= num_classes:
        raise _fail(f"{where}: labels must lie in [0, {num_classes}) for a model with {num_classes} outputs "
                    f"({IGNORE_INDEX} marks an ignored position), found {lo if lo < 0 else hi}; check the labels "
                    "or the model's output size")


# ----------------------------------------------------------------------------- streams


def _as_tensor_leaf(value: Any) -> Tensor:
    t = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
    if t.is_floating_point():
        return t.to(torch.float32)
    if t.dtype == torch.bool:
        return t
    return t.to(torch.int64)


def _as_structure(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _as_tensor_leaf(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return tuple(_as_tensor_leaf(v) for v in value)
    return _as_tensor_leaf(value)


class Stream:
    """A map-style ``torch.utils.data.Dataset`` of ``(inputs, target)`` items, read in order batch by batch.

    Items are stacked with ``torch.utils.data.default_collate``; floats become float32, integers int64. The
    rows read are ``indices`` (all items, in order, by default), so a subset is an index array, never a copy.
    The last batch read is kept, so the inputs and the targets of one batch cost one read of its items.
    """

    def __init__(self, dataset: Any, indices: np.ndarray | None = None, name: str = "dataset") -> None:
        self.dataset = dataset
        self.name = name
        self.indices = np.arange(len(dataset), dtype=np.int64) if indices is None else indices
        self._last: tuple[bytes, tuple[Any, Any]] | None = None
        self._children: dict[bytes, Stream] = {}

    def __len__(self) -> int:
        return int(len(self.indices))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_last"] = None
        return state

    def rows(self, index: slice | Tensor | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(index, slice):
            return self.indices[index]
        return self.indices[np.asarray(index.cpu() if isinstance(index, Tensor) else index, dtype=np.int64)]

    def read(self, index: slice | Tensor | Sequence[int] | np.ndarray) -> tuple[Any, Any]:
        """``(inputs, targets)`` of the rows ``index`` (positions in this stream), as stacked tensors."""
        from torch.utils.data import default_collate

        rows = self.rows(index)
        key = rows.tobytes()
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        items = [self.dataset[int(i)] for i in rows]
        if not items or not all(isinstance(item, tuple | list) and len(item) == 2 for item in items):
            raise _fail(f"{self.name}: a streamed dataset's items must be pairs (inputs, target); item "
                        f"{int(rows[0]) if len(rows) else 0} is {type(items[0]).__name__ if items else 'missing'}")
        x, y = default_collate(items)
        y = _as_tensor_leaf(y)
        batch = (_as_structure(x), y.unsqueeze(1) if y.is_floating_point() and y.dim() == 1 else y)
        self._last = (key, batch)
        return batch

    def select(self, index: np.ndarray) -> Stream:
        """The sub-stream of positions ``index`` (the same object for the same index, so x and y share reads)."""
        key = np.asarray(index, dtype=np.int64).tobytes()
        if key not in self._children:
            self._children[key] = Stream(self.dataset, self.indices[np.asarray(index, dtype=np.int64)], self.name)
        return self._children[key]

    def fingerprint(self) -> str:
        """SHA-256 of the length, the index and the first and last items (reading every item would defeat
        streaming; provenance only)."""
        digest = hashlib.sha256(f"{type(self.dataset).__name__}{len(self)}".encode())
        digest.update(self.indices.tobytes())
        for position in sorted({0, len(self) - 1}):
            inputs, target = self.read([position])
            for leaf in [*leaves(inputs), target]:
                digest.update(leaf.numpy().tobytes())
        return digest.hexdigest()


class StreamColumn:
    """The inputs (``part=0``) or targets (``part=1``) of a :class:`Stream`, with the device and float dtype
    every batch is moved to when it is read."""

    def __init__(self, stream: Stream, part: int, device: torch.device | None = None,
                 float_dtype: torch.dtype | None = None, per_token: bool = False) -> None:
        self.stream = stream
        self.part = part
        self.device = device
        self.float_dtype = float_dtype
        self.per_token = per_token

    def __len__(self) -> int:
        return len(self.stream)

    def read(self, index: slice | Tensor | Sequence[int] | np.ndarray) -> Any:
        value = self.stream.read(index)[self.part]
        return to_device(value, self.device, self.float_dtype)

    def select(self, index: np.ndarray) -> StreamColumn:
        return StreamColumn(self.stream.select(index), self.part, self.device, self.float_dtype, self.per_token)

    def configure(self, device: str | torch.device | None = None,
                  float_dtype: torch.dtype | None = None) -> StreamColumn:
        return StreamColumn(self.stream, self.part, torch.device(device) if device is not None else self.device,
                            float_dtype or self.float_dtype, self.per_token)


def is_stream(x: Any) -> bool:
    """Whether ``x`` is read lazily (a :class:`StreamColumn`)."""
    return isinstance(x, StreamColumn)


__all__ = ["IGNORE_INDEX", "Inputs", "Stream", "StreamColumn", "call_model", "check_inputs", "check_labels",
           "describe", "float_dtype_of", "is_stream", "leaves", "logits_of", "map_leaves", "model_args",
           "num_rows", "per_token", "probe_model", "select", "take", "to_device"]
