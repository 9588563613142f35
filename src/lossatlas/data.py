"""Built-in and user datasets as tensors, with deterministic splits.

``load_data(spec, seed=...)`` turns a spec string into a :class:`Dataset`. Spec grammar:

* ``NAME[:key=value,...]``  a built-in (e.g. ``teacher:n=1000,d=10``): ``mnist1d`` (n, seed), ``digits``,
  ``teacher`` (n, d, k, noise, n_test), ``xor`` (n, noise), ``jellyfish`` (n, noise), ``spirals`` (n, noise,
  turns); defaults and sources in each builder's docstring;
* ``path/file.npz``         arrays ``x``, ``y`` (or ``x_train``, ``y_train``) and optionally ``x_test``, ``y_test``;
* ``path/file.py:function`` or ``package.module:function``  a user function (called with ``seed=``
  when it accepts it) returning a :class:`Dataset`, a dict, a tuple ``(x, y[, x_test, y_test])`` or a
  map-style ``torch.utils.data.Dataset`` (materialised as the train split).

Integer labels mean classification (``num_classes = max + 1``); float targets mean regression, with 1-D
targets reshaped to ``(N, 1)``. Every random choice comes from ``numpy.random.default_rng`` streams
spawned from ``seed``; the global numpy, ``random`` and torch RNG states are never changed.
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

from lossatlas.errors import UserInputError
from lossatlas.specs import Spec, call_with_accepted, load_user_function, parse_spec

__all__ = ["Dataset", "load_data", "dataset_names"]

TASKS = ("classification", "regression")


def _fail(message: str) -> UserInputError:
    """A :class:`UserInputError` whose message is squeezed onto one line."""
    return UserInputError(" ".join(message.split()))


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train (and optional test) tensors plus what the task is.

    ``x_*`` are float32 ``(N, *input_shape)``; ``y_*`` are int64 ``(N,)`` class labels for
    classification or float32 ``(N, output_dim)`` targets for regression. ``name`` is the canonical spec.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    task: str
    num_classes: int | None

    def __post_init__(self) -> None:
        classification = self.task == "classification"
        has_test = self.x_test is not None or self.y_test is not None
        for x, y in [(self.x_train, self.y_train)] + ([(self.x_test, self.y_test)] if has_test else []):
            ok = isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.ndim >= 1 and y.ndim >= 1
            if classification:
                ok = ok and y.ndim == 1 and y.dtype == torch.int64  # type: ignore[union-attr]
            else:
                ok = ok and y.ndim == 2 and y.is_floating_point()  # type: ignore[union-attr]
            if self.task not in TASKS or not ok or len(x) != len(y):  # type: ignore[arg-type]
                raise _fail(
                    f"dataset {self.name!r}: need task in {TASKS}, tensors x (N, ...) and y (N,) int64 for "
                    "classification or (N, k) float for regression; x_test and y_test together"
                )
        if classification and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise _fail(f"dataset {self.name!r}: classification needs num_classes >= 1")

    def __repr__(self) -> str:
        test = f", test={tuple(self.x_test.shape[:1])[0]}" if self.x_test is not None else ", no test split"
        kind = f"{self.num_classes} classes" if self.task == "classification" else f"{self.output_dim} targets"
        return (f"Dataset({self.name!r}: {self.task}, {kind}, input {self.input_shape}, "
                f"train={int(self.x_train.shape[0])}{test})")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, ``x_train.shape[1:]``."""
        return tuple(self.x_train.shape[1:])

    @property
    def output_dim(self) -> int:
        """Number of model outputs: ``num_classes``, or the regression target width."""
        if self.task == "classification":
            assert self.num_classes is not None
            return self.num_classes
        return int(self.y_train.shape[1])

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the ``"train"`` or ``"test"`` split."""
        if which == "train":
            return self.x_train, self.y_train
        if which == "test":
            if self.x_test is None or self.y_test is None:
                raise _fail(f"dataset {self.name!r} has no test split; use 'train' or add x_test/y_test")
            return self.x_test, self.y_test
        raise _fail(f"unknown split {which!r}; use 'train' or 'test'")

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the train and test tensors (dtype, shape and bytes), for provenance."""
        digest = hashlib.sha256()
        for label in ("x_train", "y_train", "x_test", "y_test"):
            tensor = getattr(self, label)
            digest.update(label.encode())
            array = np.zeros(0) if tensor is None else tensor.detach().cpu().contiguous().numpy()
            digest.update(f"{tensor is None}{array.dtype.str}{array.shape}".encode() + array.tobytes())
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


def _from_arrays(name: str, *arrays: Any, num_classes: int | None = None) -> Dataset:
    """``x, y[, x_test, y_test]`` -> :class:`Dataset`: integer ``y`` is classification (``num_classes``
    defaults to ``max + 1``), float ``y`` regression (1-D ``y`` -> ``(N, 1)``); 1-D ``x`` -> ``(N, 1)``."""
    x, y, x_test, y_test = (*arrays, None, None)[:4]
    if (x_test is None) != (y_test is None):
        raise _fail(f"{name}: x_test and y_test go together; provide both or neither")
    pairs = [(x, y, "")] + ([] if x_test is None else [(x_test, y_test, "_test")])
    ys = [_as_array(b, "y" + suffix, name) for _, b, suffix in pairs]
    classification = ys[0].dtype.kind != "f"
    if any((ya.dtype.kind != "f") != classification for ya in ys):
        raise _fail(f"{name}: y and y_test mix integer and float types; use one type for both")
    tensors: list[torch.Tensor] = []
    for (xs, _, suffix), ya in zip(pairs, ys, strict=True):
        xa = _as_array(xs, "x" + suffix, name)
        if xa.shape[0] != ya.shape[0] or xa.shape[0] == 0:
            raise _fail(f"{name}: x{suffix} {xa.shape} and y{suffix} {ya.shape} need the same N > 0 rows")
        if classification and (ya.ndim != 1 or ya.min() < 0):
            raise _fail(f"{name}: integer labels y{suffix} must be >= 0 with shape (N,), got {ya.shape}")
        if not classification and ya.ndim > 2:
            raise _fail(f"{name}: float targets y{suffix} must have shape (N,) or (N, k), got {ya.shape}")
        xa = xa.reshape(len(xa), 1) if xa.ndim == 1 else xa
        ya = ya.astype(np.int64) if classification else ya.reshape(len(ya), -1).astype(np.float32)
        tensors += [torch.from_numpy(np.array(xa, dtype=np.float32)), torch.from_numpy(ya)]
    if classification and num_classes is None:
        num_classes = max(int(ya.max()) for ya in ys) + 1
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
    return _from_arrays(spec, *(arrays.get(k) for k in _ARRAYS), num_classes=builtin.num_classes)


# ----------------------------------------------------------------------------- user data


def _load_npz(spec: str) -> Dataset:
    """Arrays ``x``, ``y`` (or ``x_train``, ``y_train``) [, ``x_test``, ``y_test``] from an ``.npz``; never
    unpickles."""
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
            if names["x"] not in found or names["y"] not in found:
                raise _fail(f"{spec}: needs arrays x and y (or x_train and y_train) [, x_test, y_test], found "
                            f"{', '.join(found) or 'none'}; write it with np.savez(path, x=..., y=...)")
            arrays = [archive[names[k]] if names[k] in found else None for k in _ARRAYS]
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
    if isinstance(result, tuple) and len(result) in (2, 4):
        return _from_arrays(spec_text, *result)
    if isinstance(result, torch.utils.data.Dataset) and not isinstance(result, IterableDataset):
        items = [result[i] for i in range(len(result))]  # type: ignore[arg-type]  # map-style: materialise
        if items and all(isinstance(item, tuple | list) and len(item) == 2 for item in items):
            return _from_arrays(
                spec_text, *(torch.stack([torch.as_tensor(item[i]) for item in items]) for i in (0, 1))
            )
    raise _fail(
        f"{spec_text}: {function}() returned {type(result).__name__}; return a lossatlas Dataset, a dict "
        "{x, y[, x_test, y_test]}, a tuple (x, y[, x_test, y_test]) or a map-style torch Dataset of (x, y)"
    )


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
    parsed = parse_spec(spec, "data", builtins=_BUILTINS)
    if parsed.kind == "npz":
        return _load_npz(parsed.target)
    if parsed.builtin:
        return _load_builtin(parsed.name, parsed.options, int(seed))
    return _load_function(parsed, int(seed))
