"""Built-in and user datasets as tensors, with deterministic splits.

``load_data(spec, seed=...)`` turns a spec string into a :class:`Dataset`. Spec grammar:

* ``NAME[:key=value,...]``  a built-in (e.g. ``teacher:n=1000,d=10``): ``mnist1d`` (n, seed), ``digits``,
  ``teacher`` (n, d, k, noise, n_test), ``xor`` (n, noise), ``jellyfish`` (n, noise), ``spirals`` (n, noise,
  turns); defaults and sources in each builder's docstring;
* ``path/file.npz``         arrays ``x``, ``y`` (or ``x_train``, ``y_train``) and optionally ``x_test``, ``y_test``;
  named inputs as ``x_<name>`` (and ``x_test_<name>``) arrays, several positional inputs as ``x_0, x_1, ...``;
* ``path/file.py:function`` or ``package.module:function``  a user function (called with ``seed=``
  when it accepts it) returning a :class:`Dataset`, a dict, a tuple ``(x, y[, x_test, y_test])`` (``x`` may be
  a tensor, a tuple or a dict of tensors) or a map-style ``torch.utils.data.Dataset`` of ``(inputs, target)``
  items (or a pair of them: train, test), which is read batch by batch and never held whole;
* ``modadd:p=97,frac=0.3``  Power et al. 2022's modular addition as tokens ``a b =``;
* ``text:FILE.txt[,block=128,tokenizer=DIR]``  a text file cut into token blocks for a causal language model.

Inputs follow the batch contract (:mod:`lossatlas.batch`): integer arrays stay int64 (token ids), booleans
bool, floats become float32 (1-D float inputs ``(N, 1)``). Integer labels mean classification
(``num_classes = max + 1``): ``(N,)`` one per sample, ``(N, T, ...)`` one per token with -100 ignored. Float
targets mean regression, with 1-D targets reshaped to ``(N, 1)``. Every random choice comes from
``numpy.random.default_rng`` streams spawned from ``seed``; the global numpy, ``random`` and torch RNG states are
never changed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import tempfile
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from lossatlas.batch import (
    IGNORE_INDEX,
    Stream,
    StreamColumn,
    check_inputs,
    describe,
    is_stream,
    leaves,
    num_rows,
    per_token,
    take,
)
from lossatlas.errors import UserInputError
from lossatlas.specs import Spec, call_with_accepted, load_user_function, parse_spec

__all__ = ["Dataset", "load_data", "dataset_names"]

TASKS = ("classification", "regression")


def _fail(message: str) -> UserInputError:
    """A :class:`UserInputError` whose message is squeezed onto one line."""
    return UserInputError(" ".join(message.split()))


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train (and optional test) splits plus what the task is.

    ``x_*`` are inputs of the batch contract (:mod:`lossatlas.batch`): a tensor ``(N, *input_shape)`` (float32,
    or int64 token ids), a tuple or a dict of such tensors, or a :class:`~lossatlas.batch.StreamColumn` read
    batch by batch. ``y_*`` are int64 class labels ``(N,)`` or per-token labels ``(N, T, ...)`` (-100 ignored)
    for classification, or float32 ``(N, output_dim, ...)`` targets for regression. ``name`` is the canonical
    spec.
    """

    name: str
    x_train: Any
    y_train: Any
    x_test: Any | None
    y_test: Any | None
    task: str
    num_classes: int | None

    def __post_init__(self) -> None:
        classification = self.task == "classification"
        has_test = self.x_test is not None or self.y_test is not None
        if self.task not in TASKS or has_test and (self.x_test is None or self.y_test is None):
            raise _fail(f"dataset {self.name!r}: need task in {TASKS}; x_test and y_test together")
        for x, y in [(self.x_train, self.y_train)] + ([(self.x_test, self.y_test)] if has_test else []):
            if is_stream(x) and is_stream(y):
                continue
            check_inputs(x, f"dataset {self.name!r}")
            ok = isinstance(y, torch.Tensor) and y.ndim >= 1
            if classification:
                ok = ok and y.dtype == torch.int64
            else:
                ok = ok and y.ndim >= 2 and y.is_floating_point()
            if not ok or num_rows(x) != len(y):
                raise _fail(
                    f"dataset {self.name!r}: need inputs x with N rows and targets y (N,) or (N, T) int64 for "
                    f"classification or (N, k) float for regression; got x {describe(x)}, y "
                    f"{describe(y) if isinstance(y, torch.Tensor) else type(y).__name__}"
                )
        if classification and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise _fail(f"dataset {self.name!r}: classification needs num_classes >= 1")

    def __repr__(self) -> str:
        test = f", test={num_rows(self.x_test)}" if self.x_test is not None else ", no test split"
        kind = f"{self.num_classes} classes" if self.task == "classification" else f"{self.output_dim} targets"
        tokens = ", per-token labels" if self.per_token else ""
        return (f"Dataset({self.name!r}: {self.task}, {kind}{tokens}, input {self.input_shape}, "
                f"train={num_rows(self.x_train)}{test})")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, ``x_train.shape[1:]`` (of the first input when there are several)."""
        first = take(self.x_train, slice(0, 1)) if is_stream(self.x_train) else self.x_train
        return tuple(leaves(first)[0].shape[1:])

    @property
    def per_token(self) -> bool:
        """Whether the labels are per token, ``(N, T, ...)`` int64."""
        return self.task == "classification" and per_token(self.y_train)

    @property
    def streamed(self) -> bool:
        """Whether the splits are read batch by batch from a map-style Dataset."""
        return is_stream(self.x_train)

    @property
    def output_dim(self) -> int:
        """Number of model outputs: ``num_classes``, or the regression target width."""
        if self.task == "classification":
            assert self.num_classes is not None
            return self.num_classes
        y = take(self.y_train, slice(0, 1)) if is_stream(self.y_train) else self.y_train
        return int(y.shape[-1])

    def split(self, which: str) -> tuple[Any, Any]:
        """``(x, y)`` of the ``"train"`` or ``"test"`` split."""
        if which == "train":
            return self.x_train, self.y_train
        if which == "test":
            if self.x_test is None or self.y_test is None:
                raise _fail(f"dataset {self.name!r} has no test split; use 'train' or add x_test/y_test")
            return self.x_test, self.y_test
        raise _fail(f"unknown split {which!r}; use 'train' or 'test'")

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the train and test tensors (names, dtype, shape and bytes), for provenance; a
        streamed split contributes its length and first and last items (:meth:`lossatlas.batch.Stream.fingerprint`).
        """
        digest = hashlib.sha256()
        for label in ("x_train", "y_train", "x_test", "y_test"):
            value = getattr(self, label)
            digest.update(label.encode())
            if isinstance(value, StreamColumn):
                digest.update(f"stream{value.part}{value.stream.fingerprint()}".encode())
                continue
            named = [("", None)] if value is None else (
                list(value.items()) if isinstance(value, dict) else
                [(f"[{i}]", t) for i, t in enumerate(value)] if isinstance(value, tuple) else [("", value)])
            for key, tensor in named:
                array = np.zeros(0) if tensor is None else tensor.detach().cpu().contiguous().numpy()
                digest.update(f"{key}{tensor is None}{array.dtype.str}{array.shape}".encode() + array.tobytes())
        return digest.hexdigest()


# ----------------------------------------------------------------------------- arrays -> Dataset


def _as_array(value: Any, what: str, name: str) -> np.ndarray:
    """Numeric numpy array from a tensor / array / nested list, refusing object and string arrays."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise _fail(f"{name}: {what} is not array-like ({err})") from None
    if array.dtype.kind not in "biuf" or array.ndim == 0:
        raise _fail(f"{name}: {what} must be a numeric array, got dtype {array.dtype} shape {array.shape}")
    return array


def _input_leaf(value: Any, what: str, name: str) -> torch.Tensor:
    """One input array as a tensor of the contract: floats float32 (1-D -> ``(N, 1)``), integers int64, bool."""
    array = _as_array(value, what, name)
    if array.dtype.kind == "f":
        array = array.reshape(len(array), 1) if array.ndim == 1 else array
        return torch.from_numpy(np.array(array, dtype=np.float32))
    if array.dtype.kind == "b":
        return torch.from_numpy(np.array(array, dtype=bool))
    return torch.from_numpy(np.array(array, dtype=np.int64))


def _inputs(value: Any, what: str, name: str) -> Any:
    """Inputs of one split: an array/tensor, a tuple/list of them, or a dict of them (names must be str)."""
    if isinstance(value, dict):
        if not value or not all(isinstance(k, str) and k.isidentifier() for k in value):
            raise _fail(f"{name}: named inputs {what} need identifier names (the model's keyword arguments), "
                        f"got {sorted(map(str, value)) or 'none'}")
        out: Any = {k: _input_leaf(v, f"{what}[{k!r}]", name) for k, v in value.items()}
    elif isinstance(value, tuple | list) and value and all(
            isinstance(v, torch.Tensor | np.ndarray) for v in value):
        out = tuple(_input_leaf(v, f"{what}[{i}]", name) for i, v in enumerate(value))
    else:
        out = _input_leaf(value, what, name)
    return check_inputs(out, name, what)


def _from_arrays(name: str, *arrays: Any, num_classes: int | None = None) -> Dataset:
    """``x, y[, x_test, y_test]`` -> :class:`Dataset`: integer ``y`` is classification (labels ``(N,)`` or per
    token ``(N, T, ...)`` with -100 ignored; ``num_classes`` defaults to ``max + 1``), float ``y`` regression
    (1-D ``y`` -> ``(N, 1)``). Inputs may be arrays, tuples or dicts of arrays (:func:`_inputs`)."""
    x, y, x_test, y_test = (*arrays, None, None)[:4]
    if (x_test is None) != (y_test is None):
        raise _fail(f"{name}: x_test and y_test go together; provide both or neither")
    pairs = [(x, y, "")] + ([] if x_test is None else [(x_test, y_test, "_test")])
    ys = [_as_array(b, "y" + suffix, name) for _, b, suffix in pairs]
    classification = ys[0].dtype.kind != "f"
    if any((ya.dtype.kind != "f") != classification for ya in ys):
        raise _fail(f"{name}: y and y_test mix integer and float types; use one type for both")
    tensors: list[Any] = []
    for (xs, _, suffix), ya in zip(pairs, ys, strict=True):
        xa = _inputs(xs, "x" + suffix, name)
        rows = num_rows(xa)
        if rows != ya.shape[0]:
            raise _fail(f"{name}: x{suffix} ({describe(xa)}) and y{suffix} {ya.shape} need the same N rows")
        if classification:
            real = ya[ya != IGNORE_INDEX]
            if real.size == 0 or real.min() < 0 or ya.ndim == 0:
                raise _fail(f"{name}: integer labels y{suffix} must be >= 0 (or {IGNORE_INDEX} for an ignored "
                            f"token) with shape (N,) or (N, T), and not all ignored; got shape {ya.shape}, "
                            f"smallest {int(ya.min()) if ya.size else 'none'}")
        ya = ya.astype(np.int64) if classification else (
            ya.reshape(len(ya), -1) if ya.ndim == 1 else ya).astype(np.float32)
        tensors += [xa, torch.from_numpy(np.ascontiguousarray(ya))]
    if classification and num_classes is None:
        num_classes = max(int(ya[ya != IGNORE_INDEX].max()) for ya in ys) + 1
    x_train, y_train, *test = tensors
    x_test, y_test = test if test else (None, None)
    task = "classification" if classification else "regression"
    return Dataset(name, x_train, y_train, x_test, y_test, task, num_classes if classification else None)


# ----------------------------------------------------------------------------- built-ins

Arrays = dict[str, np.ndarray]
_ARRAYS = ("x", "y", "x_test", "y_test")
_GLOBAL_RNG_LOCK = threading.Lock()


def _write_cache(path: Path, arrays: Arrays) -> None:
    """Write atomically (temp file + ``os.replace``) so concurrent writers never leave a torn file."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache is fine to share read-only
        os.replace(tmp, path)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)  # an unwritable cache only costs regeneration time


def _mnist1d(p: dict[str, Any], seed: int) -> Arrays:
    """MNIST-1D (Greydanus 2020, "Scaling down deep learning"), generated offline.

    ``mnist1d.data.make_dataset`` with the default ``get_dataset_args()`` (5000 samples, 80/20 split,
    40 features, 10 classes), only ``num_samples`` (key ``n``; mnist1d makes ``n // 10`` per class) and
    ``seed`` overridden. The data seed is the key
    ``seed`` (default 42, the published one), not ``load_data``'s seed, so runs share the benchmark.
    Values are kept as mnist1d returns them (already standardised to mean 0, std 1 overall). mnist1d seeds
    the global numpy/``random`` RNGs; their states are saved and restored around generation. Arrays are
    cached in ``$LOSSATLAS_CACHE`` (default ``~/.cache/lossatlas``), keyed by the generator settings.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = p["n"], p["seed"]
    settings = {k: v for k, v in vars(args).items() if k != "url"}
    settings["mnist1d_version"] = importlib.metadata.version("mnist1d")
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = (
        Path(os.environ.get("LOSSATLAS_CACHE") or Path.home() / ".cache" / "lossatlas") / f"mnist1d-{key}.npz"
    )
    try:
        with np.load(path, allow_pickle=False) as cached:
            return {k: cached[k] for k in _ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # missing or corrupt: regenerate
    with _GLOBAL_RNG_LOCK:  # mnist1d seeds and draws from the global numpy / random RNGs
        np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
        try:
            raw = make_dataset(args)
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)
    arrays = {k: np.asarray(raw[k]) for k in _ARRAYS}
    _write_cache(path, arrays)
    return arrays


def _stratified_split(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled index arrays ``(train, test)``; each class puts ``round(0.8 * count)`` in train."""
    members = [rng.permutation(np.flatnonzero(y == label)) for label in np.unique(y)]
    train = np.concatenate([m[: round(0.8 * len(m))] for m in members])
    test = np.concatenate([m[round(0.8 * len(m)) :] for m in members])
    return rng.permutation(train), rng.permutation(test)


def _digits(p: dict[str, Any], seed: int) -> Arrays:
    """scikit-learn's bundled 8x8 digits (1797 images, UCI), pixels / 16 in [0, 1], shape (N, 1, 8, 8),
    with a seeded stratified 80/20 split."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = (images / 16.0).reshape(-1, 1, 8, 8)
    train, test = _stratified_split(labels, np.random.default_rng(seed))
    return {"x": x[train], "y": labels[train], "x_test": x[test], "y_test": labels[test]}


def _train_test(seed: int, sample: Callable[..., Any], n: int, n_test: int) -> Arrays:
    """Train from stream 0 and test from stream 1 of ``SeedSequence(seed)``; ``sample(rng, n) -> (x, y)``."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)]
    (x, y), (x_test, y_test) = (sample(rng, m) for rng, m in zip(streams, (n, n_test), strict=True))
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}


def _teacher(p: dict[str, Any], seed: int) -> Arrays:
    """Gaussian teacher-student regression (Safran & Shamir 2018, "Spurious local minima are common in
    two-layer ReLU networks"): ``x ~ N(0, I_d)``, ``y = sum_j relu(w_j . x) + noise * N(0, 1)`` with
    orthonormal teacher weights ``w_j = e_j`` (j < k), so ``w_j . x = x_j``; target shape (N, 1)."""
    if p["k"] > p["d"]:
        raise _fail(f"teacher: k={p['k']} orthonormal teacher units need k <= d={p['d']}; lower k or raise d")

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, p["d"])).astype(np.float32)
        y = np.maximum(x[:, : p["k"]], 0.0).sum(axis=1, keepdims=True)
        return x, (y + p["noise"] * rng.standard_normal((n, 1))).astype(np.float32)

    return _train_test(seed, sample, p["n"], p["n_test"])


def _xor(p: dict[str, Any], seed: int) -> Arrays:
    """XOR: the four points (+-1, +-1), label 1 where the signs differ, repeated ``n`` times with optional
    Gaussian input noise of std ``noise``; the test split is the same points as train."""
    x = np.tile([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], (p["n"], 1))
    x = x + p["noise"] * np.random.default_rng(seed).standard_normal(x.shape)
    y = np.tile([0, 1, 1, 0], p["n"])
    return {"x": x, "y": y, "x_test": x, "y_test": y}


def _jellyfish(p: dict[str, Any], seed: int) -> Arrays:
    """ "Jellyfish" 2-D toy set of the XOR/Jellyfish experiments (Swirszcz, Czarnecki & Pascanu 2016,
    "Local minima in training of neural networks"; Hung-yi Lee's lecture notes). Its points are not
    published; this is our reconstruction. Class 0, the bell: a half-ring of radius 0.6-1 in the upper
    half-plane. Class 1: four wavy tentacles from inside the bell (y = 0.3) down to y = -1.2, so the bell
    wraps around their tops and no line separates the classes. ``n`` points per split, half per class,
    plus Gaussian jitter of std ``noise``."""

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        n_bell, n_tentacles = n // 2, n - n // 2
        angle, radius = rng.uniform(0.0, np.pi, n_bell), rng.uniform(0.6, 1.0, n_bell)
        strand, height = rng.integers(0, 4, n_tentacles), rng.uniform(-1.2, 0.3, n_tentacles)
        wiggle = np.array([-0.45, -0.15, 0.15, 0.45])[strand] + 0.08 * np.sin(4 * np.pi * height + strand)
        x = np.concatenate([np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1),
                            np.stack([wiggle, height], 1)])  # fmt: skip
        order = rng.permutation(n)
        return (x + p["noise"] * rng.standard_normal((n, 2)))[order], (np.arange(n) >= n_bell)[order]

    return _train_test(seed, sample, p["n"], p["n"])


def _spirals(p: dict[str, Any], seed: int) -> Arrays:
    """Two interleaved spirals (Lang & Witbrock 1988): ``n`` points per split, half per class; radius
    ``2 t``, angle ``2 pi turns t + pi c`` with ``t = sqrt(U(0, 1))``; Gaussian noise of std ``noise``."""
    if p["turns"] <= 0:
        raise _fail(f"spirals: turns must be > 0, got {p['turns']}")

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        y, t = np.arange(n) % 2, np.sqrt(rng.uniform(0.0, 1.0, n))  # sqrt: even density along the arms
        angle = 2 * np.pi * p["turns"] * t + np.pi * y
        x = 2 * t[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        return x + p["noise"] * rng.standard_normal(x.shape), y

    return _train_test(seed, sample, p["n"], p["n"])


def _modadd(p: dict[str, Any], seed: int) -> Arrays:
    """Power et al. 2022's modular addition (:func:`lossatlas.tokens.modadd_arrays`): tokens ``a b =``, the answer
    ``(a + b) mod p`` scored at the last position; the split comes from the key ``seed`` (default 0), not from
    ``load_data``'s seed, so models trained from different seeds share the data."""
    from lossatlas.tokens import modadd_arrays

    return modadd_arrays(p=p["p"], frac=p["frac"], seed=p["seed"])


@dataclass(frozen=True)
class _Builtin:
    build: Callable[[dict[str, Any], int], Arrays]
    keys: dict[str, tuple[int | float, int | float]]  # key -> (default, minimum)
    num_classes: int | None


_BUILTINS: dict[str, _Builtin] = {
    "mnist1d": _Builtin(_mnist1d, {"n": (5000, 10), "seed": (42, 0)}, 10),
    "digits": _Builtin(_digits, {}, 10),
    "teacher": _Builtin(
        _teacher, {"n": (1000, 1), "d": (10, 1), "k": (4, 1), "noise": (0.0, 0.0), "n_test": (1000, 1)}, None
    ),
    "xor": _Builtin(_xor, {"n": (1, 1), "noise": (0.0, 0.0)}, 2),
    "jellyfish": _Builtin(_jellyfish, {"n": (400, 2), "noise": (0.02, 0.0)}, 2),
    "spirals": _Builtin(_spirals, {"n": (400, 2), "noise": (0.1, 0.0), "turns": (1.5, 0.0)}, 2),
    "modadd": _Builtin(_modadd, {"p": (97, 2), "frac": (0.3, 0.0), "seed": (0, 0)}, None),
}


def dataset_names() -> list[str]:
    """Names of the built-in datasets, sorted."""
    return sorted(_BUILTINS)


def _typed_options(name: str, pairs: Sequence[tuple[str, str]],
                   keys: dict[str, tuple[int | float, int | float]]) -> dict[str, Any]:
    """Built-in options typed by their defaults and checked against their minimums (one-line errors)."""
    given: dict[str, Any] = {}
    valid = ", ".join(keys) or "none"
    for key, raw in pairs:
        if key not in keys:
            raise _fail(f"{name}: unknown key {key!r}; valid keys: {valid}")
        default, minimum = keys[key]
        kind = "an integer" if isinstance(default, int) else "a number"
        try:
            value = int(raw) if isinstance(default, int) else float(raw)
        except ValueError:
            raise _fail(f"{name}: {key} must be {kind}, got {raw!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise _fail(f"{name}: {key} must be {kind} >= {minimum}, got {raw!r}")
        given[key] = value
    return given


def _load_builtin(name: str, pairs: Sequence[tuple[str, str]], seed: int) -> Dataset:
    builtin = _BUILTINS[name]
    given = _typed_options(name, pairs, builtin.keys)
    params = {key: default for key, (default, _) in builtin.keys.items()} | given
    canonical = ",".join(f"{key}={given[key]}" for key in builtin.keys if key in given)
    spec = f"{name}:{canonical}" if canonical else name
    arrays = builtin.build(params, seed)
    num_classes = builtin.num_classes if "num_classes" not in arrays else int(arrays["num_classes"])
    return _from_arrays(spec, *(arrays.get(k) for k in _ARRAYS), num_classes=num_classes)


def _load_text(spec: str) -> Dataset:
    """``text:FILE[,block=128][,tokenizer=DIR][,test_frac=0.1]``: a text file as token blocks for a causal
    language model (:func:`lossatlas.tokens.text_arrays`)."""
    from lossatlas.tokens import text_arrays

    path, *items = spec.removeprefix("text:").split(",")
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in ("block", "tokenizer", "test_frac"):
            raise _fail(f"{spec}: unknown option {item!r}; write text:FILE.txt[,block=128][,tokenizer=DIR]"
                        "[,test_frac=0.1]")
        try:
            options[key] = value if key == "tokenizer" else (int(value) if key == "block" else float(value))
        except ValueError:
            raise _fail(f"{spec}: {key} must be {'an integer' if key == 'block' else 'a number'}, got {value!r}") \
                from None
    if not path.strip():
        raise _fail(f"{spec}: name the text file, e.g. text:corpus.txt,block=128")
    arrays = text_arrays(path.strip(), **options)
    return _from_arrays(spec, *(arrays.get(k) for k in _ARRAYS), num_classes=int(arrays["num_classes"]))


# ----------------------------------------------------------------------------- user data


def _named_inputs(found: list[str], prefix: str, spec: str) -> list[str]:
    """Names ``<name>`` of the arrays ``<prefix><name>`` (``x_`` / ``x_test_``), sorted (digits numerically)."""
    skip = {"x_train", "x_test", "y_train", "y_test"} if prefix == "x_" else set()
    names = [f.removeprefix(prefix) for f in found if f.startswith(prefix) and f not in skip
             and not (prefix == "x_" and f.startswith("x_test_"))]
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=int)
    return names


def _npz_inputs(archive: Any, found: list[str], plain: str, prefix: str, spec: str) -> Any:
    """The inputs of one split: the array ``plain``, or the named arrays ``<prefix><name>`` (a dict; a tuple when
    the names are 0, 1, ...)."""
    names = _named_inputs(found, prefix, spec)
    if plain in found and names:
        raise _fail(f"{spec}: holds both {plain} and {prefix}<name> arrays; keep one layout for the inputs")
    if plain in found or not names:
        return archive[plain] if plain in found else None
    if all(n.isdigit() for n in names):
        if [int(n) for n in names] != list(range(len(names))):
            raise _fail(f"{spec}: positional inputs must be {prefix}0, {prefix}1, ... without gaps; found "
                        f"{', '.join(prefix + n for n in names)}")
        return tuple(archive[prefix + n] for n in names)
    return {n: archive[prefix + n] for n in names}


def _load_npz(spec: str) -> Dataset:
    """Arrays ``x``, ``y`` (or ``x_train``, ``y_train``) [, ``x_test``, ``y_test``] from an ``.npz``; never
    unpickles. Several inputs: ``x_<name>`` (a dict of named inputs, ``model(**x)``) or ``x_0, x_1, ...`` (a tuple,
    ``model(*x)``), with ``x_test_<name>`` for the test split."""
    if not Path(spec).expanduser().is_file():
        raise _fail(f"data file not found: {spec}; check the path")
    try:
        archive = np.load(Path(spec).expanduser(), allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise _fail(f"{spec}: holds one array, not an .npz archive; use np.savez(path, x=..., y=...)")
        with archive:
            found = list(archive.files)
            names = dict(zip(_ARRAYS, _ARRAYS, strict=True))
            if {"x_train", "y_train"} <= set(found) and not {"x", "y"} & set(found):  # Keras' layout
                names.update(x="x_train", y="y_train")
            x = _npz_inputs(archive, found, names["x"], "x_", spec)
            if x is None or names["y"] not in found:
                raise _fail(f"{spec}: needs arrays x (or x_<name> per named input) and y (or x_train and y_train) "
                            f"[, x_test, y_test], found {', '.join(found) or 'none'}; write it with "
                            "np.savez(path, x=..., y=...)")
            x_test = _npz_inputs(archive, found, "x_test", "x_test_", spec)
            arrays = [x, archive[names["y"]], x_test, archive["y_test"] if "y_test" in found else None]
    except UserInputError:
        raise
    except ValueError as err:  # numpy refuses object arrays / pickles when allow_pickle=False
        if "Object arrays" in str(err):
            raise _fail(f"{spec}: object arrays are refused (never unpickled); save numeric arrays") from None
        raise _fail(
            f"{spec}: not a valid .npz file (pickled data is never loaded); write it with np.savez"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise _fail(f"{spec}: not a valid .npz file ({err}); write it with np.savez") from None
    return _from_arrays(spec, *arrays)


def _load_function(spec: Spec, seed: int) -> Dataset:
    """Call the user's function (with ``seed=`` if it takes it, and the spec's options) and convert the result."""
    fn = load_user_function(spec, "data", reserved=("seed",))
    function = spec.name
    spec_text = spec.text
    takes_seed = bool(call_with_accepted(fn, {"seed": seed}))
    result = fn(seed=seed) if takes_seed else fn()
    if isinstance(result, Dataset):
        return result
    if isinstance(result, dict):
        if "x" not in result or "y" not in result or set(result) - set(_ARRAYS):
            raise _fail(f"{spec_text}: a returned dict needs keys x, y [, x_test, y_test]; got {sorted(result)}")
        return _from_arrays(spec_text, *(result.get(k) for k in _ARRAYS))
    if isinstance(result, tuple) and len(result) == 2 and all(_map_style(r) for r in result):
        return _from_streams(spec_text, *result)
    if _map_style(result):
        return _from_streams(spec_text, result, None)
    if isinstance(result, tuple) and len(result) in (2, 4):
        return _from_arrays(spec_text, *result)
    raise _fail(
        f"{spec_text}: {function}() returned {type(result).__name__}; return a lossatlas Dataset, a dict "
        "{x, y[, x_test, y_test]}, a tuple (x, y[, x_test, y_test]) or a map-style torch Dataset of (x, y) "
        "items (or a pair of them: train, test)"
    )


def _map_style(value: Any) -> bool:
    return isinstance(value, torch.utils.data.Dataset) and not isinstance(value, IterableDataset)


def _from_streams(name: str, train: Any, test: Any | None) -> Dataset:
    """A :class:`Dataset` whose splits are read from map-style torch Datasets batch by batch (never materialised).

    The task comes from the first item's target (integer: classification, float: regression). ``num_classes`` is
    the Dataset's ``num_classes`` attribute when it has one, else 1 + the largest label, found by one pass over
    the items (memory bounded by one item).
    """
    columns: list[Any] = []
    largest = -1
    classification = None
    for split, source in (("train", train), ("test", test)):
        if source is None:
            columns += [None, None]
            continue
        try:
            size = len(source)
        except TypeError:
            raise _fail(f"{name}: the {split} Dataset has no len(); give it __len__ (map-style)") from None
        if size < 1:
            raise _fail(f"{name}: the {split} Dataset is empty")
        stream = Stream(source, name=name)
        x0, y0 = stream.read([0])
        check_inputs(x0, name)
        is_class = not y0.is_floating_point()
        if classification is not None and is_class != classification:
            raise _fail(f"{name}: train and test targets mix integer and float types; use one type for both")
        classification = is_class
        if is_class and getattr(train, "num_classes", None) is None:
            for start in range(0, size, 256):  # labels only are kept: one pass, one batch at a time
                y = stream.read(slice(start, start + 256))[1]
                real = y[y != IGNORE_INDEX]
                if real.numel() and int(real.min()) < 0:
                    raise _fail(f"{name}: integer labels must be >= 0 (or {IGNORE_INDEX}), found {int(real.min())}")
                largest = max(largest, int(real.max()) if real.numel() else -1)
        columns += [StreamColumn(stream, 0), StreamColumn(stream, 1, per_token=is_class and y0.dim() >= 2)]
    num_classes = getattr(train, "num_classes", None) if classification else None
    if classification and num_classes is None:
        num_classes = largest + 1
    task = "classification" if classification else "regression"
    return Dataset(name, columns[0], columns[1], columns[2], columns[3], task,
                   int(num_classes) if num_classes is not None else None)


def load_data(spec: str, *, seed: int = 0) -> Dataset:
    """Load the dataset named by ``spec`` (see the module docstring for the grammar).

    ``seed`` drives every random choice of the built-ins (splits, sampling; mnist1d uses its own ``seed``
    key) and is passed to user functions that accept ``seed``. Same spec and seed give bit-identical
    tensors.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _fail(f"dataset spec must be a non-empty string, got {spec!r}; try one of {dataset_names()}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise _fail(f"seed must be a non-negative integer, got {seed!r}")
    if spec.strip().startswith("text:"):
        return _load_text(spec.strip())
    parsed = parse_spec(spec, "data", builtins=_BUILTINS)
    if parsed.kind == "npz":
        return _load_npz(parsed.target)
    if parsed.builtin:
        return _load_builtin(parsed.name, parsed.options, int(seed))
    return _load_function(parsed, int(seed))
