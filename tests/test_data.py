"""Tests for lossatlas.data: built-ins, determinism, npz and Python-function loaders, errors.

References are computed independently here (sklearn's digits, mnist1d's own generator, the teacher
formula with an explicit weight matrix) rather than by calling back into the code under test.
"""

from __future__ import annotations

import dataclasses
import os
import random
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from lossatlas.data import Dataset, _stratified_split, dataset_names, load_data
from lossatlas.errors import UserInputError


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lossatlas-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch ~/.cache during tests."""
    monkeypatch.setenv("LOSSATLAS_CACHE", str(cache_root))


@pytest.fixture(scope="session")
def mnist1d_default(cache_root: Path) -> Dataset:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOSSATLAS_CACHE", str(cache_root))
        return load_data("mnist1d")


def assert_one_line_error(spec: str, match: str | None = None, **kwargs: object) -> str:
    with pytest.raises(UserInputError, match=match) as info:
        load_data(spec, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    return message


def assert_same(a: Dataset, b: Dataset) -> None:
    for field in ("x_train", "y_train", "x_test", "y_test"):
        ta, tb = getattr(a, field), getattr(b, field)
        assert (ta is None) == (tb is None), field
        if ta is not None:
            assert ta.dtype == tb.dtype and torch.equal(ta, tb), field


# ----------------------------------------------------------------------------- built-ins

BUILTIN_CASES = [
    # spec, canonical name, n_train, n_test, input_shape, task, num_classes, output_dim
    ("mnist1d:n=100", "mnist1d:n=100", 80, 20, (40,), "classification", 10, 10),
    ("digits", "digits", 1438, 359, (1, 8, 8), "classification", 10, 10),
    ("teacher", "teacher", 1000, 1000, (10,), "regression", None, 1),
    ("teacher:n_test=7, k=2,d=3,n=50", "teacher:n=50,d=3,k=2,n_test=7", 50, 7, (3,), "regression", None, 1),
    ("xor", "xor", 4, 4, (2,), "classification", 2, 2),
    ("xor:n=3,noise=0.1", "xor:n=3,noise=0.1", 12, 12, (2,), "classification", 2, 2),
    ("jellyfish", "jellyfish", 400, 400, (2,), "classification", 2, 2),
    ("spirals:n=101,turns=2", "spirals:n=101,turns=2.0", 101, 101, (2,), "classification", 2, 2),
]


@pytest.mark.parametrize(
    "spec, name, n_train, n_test, input_shape, task, num_classes, output_dim", BUILTIN_CASES
)
def test_builtin_shapes_dtypes_task(
    spec: str,
    name: str,
    n_train: int,
    n_test: int,
    input_shape: tuple[int, ...],
    task: str,
    num_classes: int | None,
    output_dim: int,
) -> None:
    data = load_data(spec)
    assert data.name == name
    assert (data.task, data.num_classes, data.output_dim, data.input_shape) == (
        task, num_classes, output_dim, input_shape,
    )  # fmt: skip
    assert data.x_test is not None and data.y_test is not None
    assert data.x_train.shape == (n_train, *input_shape) and data.x_test.shape == (n_test, *input_shape)
    assert data.x_train.dtype == data.x_test.dtype == torch.float32
    if task == "classification":
        assert data.y_train.shape == (n_train,) and data.y_test.shape == (n_test,)
        assert data.y_train.dtype == data.y_test.dtype == torch.int64
        assert set(data.y_train.tolist()) == set(range(num_classes))  # every class present, none beyond
    else:
        assert data.y_train.shape == (n_train, 1) and data.y_test.shape == (n_test, 1)
        assert data.y_train.dtype == torch.float32
    assert torch.isfinite(data.x_train).all()
    x, y = data.split("test")
    assert x is data.x_test and y is data.y_test


def test_dataset_names_lists_every_builtin() -> None:
    assert dataset_names() == ["digits", "jellyfish", "mnist1d", "modadd", "spirals", "teacher", "xor"]


def test_mnist1d_default_sizes(mnist1d_default: Dataset) -> None:
    data = mnist1d_default
    assert data.x_train.shape == (4000, 40) and data.x_test is not None and data.x_test.shape == (1000, 40)
    assert data.num_classes == 10 and data.task == "classification"
    assert torch.bincount(data.y_train, minlength=10).min() > 300
    # raw mnist1d values, not re-standardised by us: O(1) and not exactly unit variance on the train split
    assert 0.5 < float(data.x_train.std()) < 2.0 and float(data.x_train.abs().max()) < 20


def test_mnist1d_equals_the_reference_generator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    monkeypatch.setenv("LOSSATLAS_CACHE", str(tmp_path))
    ours = load_data("mnist1d:n=100,seed=7")
    args = get_dataset_args()
    args.num_samples, args.seed = 100, 7
    state = np.random.get_state()  # noqa: NPY002  (the reference call below reseeds the global RNG)
    reference = make_dataset(args)
    np.random.set_state(state)  # noqa: NPY002
    torch.testing.assert_close(ours.x_train, torch.from_numpy(reference["x"]).float(), rtol=0, atol=0)
    torch.testing.assert_close(ours.x_test, torch.from_numpy(reference["x_test"]).float(), rtol=0, atol=0)
    assert torch.equal(ours.y_train, torch.from_numpy(reference["y"]).long())


def test_mnist1d_cache_is_written_atomically_and_survives_corruption(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LOSSATLAS_CACHE", str(tmp_path))
    first = load_data("mnist1d:n=100")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("mnist1d-") and files[0].endswith(".npz"), files
    assert_same(first, load_data("mnist1d:n=100"))  # read back from the cache
    (tmp_path / files[0]).write_bytes(b"torn write")
    assert_same(first, load_data("mnist1d:n=100"))  # corrupt cache: regenerated, identical
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # rewritten, no temp files left
    with np.load(tmp_path / files[0], allow_pickle=False) as archive:
        assert sorted(archive.files) == ["x", "x_test", "y", "y_test"]


def test_mnist1d_concurrent_generation_is_deterministic(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """mnist1d draws from the global numpy RNG; parallel loads into one empty cache must not interleave."""
    monkeypatch.setenv("LOSSATLAS_CACHE", str(tmp_path / "serial"))
    reference = load_data("mnist1d:n=300")
    monkeypatch.setenv("LOSSATLAS_CACHE", str(tmp_path / "parallel"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: load_data("mnist1d:n=300"), range(4)))
    for result in results:
        assert_same(reference, result)
    assert [p.suffix for p in (tmp_path / "parallel").iterdir()] == [".npz"]


def test_mnist1d_unwritable_cache_still_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("LOSSATLAS_CACHE", str(blocker / "cache"))
    assert load_data("mnist1d:n=20").x_train.shape == (16, 40)


# ----------------------------------------------------------------------------- determinism

RANDOM_SPECS = ["digits", "teacher:n=50", "xor:n=5,noise=0.1", "jellyfish:n=60", "spirals:n=60"]


@pytest.mark.parametrize("spec", RANDOM_SPECS)
def test_same_seed_identical_different_seed_different(spec: str) -> None:
    assert_same(load_data(spec, seed=3), load_data(spec, seed=3))
    assert not torch.equal(load_data(spec, seed=3).x_train, load_data(spec, seed=4).x_train)


def test_mnist1d_seed_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOSSATLAS_CACHE", str(tmp_path / "a"))
    a = load_data("mnist1d:n=100,seed=1")
    monkeypatch.setenv("LOSSATLAS_CACHE", str(tmp_path / "b"))  # regenerate, not read from the cache
    assert_same(a, load_data("mnist1d:n=100,seed=1"))
    assert not torch.equal(a.x_train, load_data("mnist1d:n=100,seed=2").x_train)
    # the data seed is the spec's `seed` key (default 42), so the benchmark is shared across run seeds
    assert_same(load_data("mnist1d:n=100", seed=0), load_data("mnist1d:n=100,seed=42", seed=9))


@pytest.mark.parametrize("spec", ["teacher:n=50,n_test=50", "jellyfish:n=60", "spirals:n=60"])
def test_synthetic_test_split_is_a_different_draw(spec: str) -> None:
    data = load_data(spec)
    assert data.x_test is not None and data.x_test.shape == data.x_train.shape
    assert not torch.equal(data.x_train, data.x_test)


@pytest.mark.parametrize("spec", ["mnist1d:n=30,seed=5", *RANDOM_SPECS])
def test_global_rng_states_untouched(spec: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOSSATLAS_CACHE", str(tmp_path))  # empty cache: mnist1d really generates
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    before = (torch.get_rng_state(), np.random.get_state(), random.getstate())  # noqa: NPY002
    load_data(spec, seed=11)
    after = (torch.get_rng_state(), np.random.get_state(), random.getstate())  # noqa: NPY002
    assert torch.equal(before[0], after[0])
    assert before[1][0] == after[1][0] and np.array_equal(before[1][1], after[1][1])
    assert before[1][2:] == after[1][2:]
    assert before[2] == after[2]


# ----------------------------------------------------------------------------- individual built-ins


def test_digits_matches_sklearn_and_split_is_stratified() -> None:
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    data = load_data("digits", seed=5)
    assert data.x_test is not None and data.y_test is not None
    assert len(data.x_train) + len(data.x_test) == len(labels) == 1797
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    ours = torch.cat([data.x_train, data.x_test]).reshape(-1, 64).double().numpy() * 16
    ours_labels = torch.cat([data.y_train, data.y_test]).numpy()
    # same multiset of (image, label) rows as sklearn's
    key = np.column_stack([ours, ours_labels])
    ref = np.column_stack([images, labels])
    np.testing.assert_array_equal(key[np.lexsort(key.T[::-1])], ref[np.lexsort(ref.T[::-1])])
    train_counts = np.bincount(data.y_train.numpy(), minlength=10)
    total_counts = np.bincount(labels, minlength=10)
    assert np.all(np.abs(train_counts - 0.8 * total_counts) <= 1), (train_counts, total_counts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratified_split_indices_are_a_disjoint_partition(seed: int) -> None:
    labels = np.repeat(np.arange(7), [3, 10, 11, 1, 50, 2, 9])
    train, test = _stratified_split(labels, np.random.default_rng(seed))
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(len(labels)))
    for label in range(7):
        assert abs((labels[train] == label).sum() - 0.8 * (labels == label).sum()) <= 1


def test_teacher_targets_follow_the_teacher_formula() -> None:
    d, k = 6, 3
    data = load_data(f"teacher:n=200,d={d},k={k},n_test=50", seed=2)
    weights = torch.zeros(k, d)
    weights[torch.arange(k), torch.arange(k)] = 1.0  # orthonormal teacher w_j = e_j
    for x, y in (data.split("train"), data.split("test")):
        reference = torch.relu(x.double() @ weights.double().T).sum(dim=1, keepdim=True)
        torch.testing.assert_close(y.double(), reference, rtol=1e-6, atol=1e-6)
    assert abs(float(data.x_train.std()) - 1.0) < 0.1  # x ~ N(0, I)


def test_teacher_noise_has_the_requested_scale() -> None:
    data = load_data("teacher:n=4000,noise=0.5")
    clean = torch.relu(data.x_train[:, :4]).sum(dim=1, keepdim=True)
    assert abs(float((data.y_train - clean).std()) - 0.5) < 0.03


def test_xor_points_and_labels() -> None:
    data = load_data("xor:n=2")
    pairs = {(tuple(x), int(y)) for x, y in zip(data.x_train.tolist(), data.y_train.tolist(), strict=True)}
    assert pairs == {((-1.0, -1.0), 0), ((-1.0, 1.0), 1), ((1.0, -1.0), 1), ((1.0, 1.0), 0)}
    assert data.x_test is not None and torch.equal(data.x_test, data.x_train)


# ----------------------------------------------------------------------------- npz files


def test_npz_round_trip_classification_with_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, x_test = rng.normal(size=(20, 3, 4)), rng.normal(size=(5, 3, 4))
    y, y_test = rng.integers(0, 3, 20), np.array([0, 1, 4, 2, 1])
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test, notes=np.arange(3))
    data = load_data(str(path))
    assert data.task == "classification" and data.num_classes == 5  # max over train and test, + 1
    assert data.name == str(path) and data.input_shape == (3, 4)
    torch.testing.assert_close(data.x_train, torch.from_numpy(x).float())
    assert data.x_test is not None and data.y_test is not None
    torch.testing.assert_close(data.x_test, torch.from_numpy(x_test).float())
    assert data.y_train.dtype == torch.int64 and data.y_train.tolist() == y.tolist()
    assert data.y_test.tolist() == y_test.tolist()


def test_npz_with_keras_names_x_train_y_train(tmp_path: Path) -> None:
    """The layout of Keras' mnist.npz (x_train, y_train, x_test, y_test) loads like x, y, x_test, y_test."""
    rng = np.random.default_rng(1)
    x, y, x_test, y_test = rng.normal(size=(8, 5)), rng.integers(0, 3, 8), rng.normal(size=(4, 5)), np.arange(4) % 3
    np.savez(tmp_path / "keras.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    np.savez(tmp_path / "plain.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    keras, plain = load_data(str(tmp_path / "keras.npz")), load_data(str(tmp_path / "plain.npz"))
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(keras, name), getattr(plain, name)), name


def test_npz_round_trip_regression_without_test(tmp_path: Path) -> None:
    path = tmp_path / "reg.npz"
    x, y = np.arange(12, dtype=np.int32).reshape(6, 2), np.linspace(0, 1, 6)
    np.savez(path, x=x, y=y)
    data = load_data(str(path))
    assert data.task == "regression" and data.num_classes is None and data.output_dim == 1
    # integer inputs are kept as integers (token ids, the batch contract); only float inputs become float32
    assert data.x_train.dtype == torch.int64 and data.y_train.shape == (6, 1)
    assert torch.equal(data.x_train, torch.from_numpy(x).long())
    torch.testing.assert_close(data.y_train[:, 0], torch.from_numpy(y).float())
    assert data.x_test is None and data.y_test is None
    with pytest.raises(UserInputError, match="no test split"):
        data.split("test")
    with pytest.raises(UserInputError, match="unknown split"):
        data.split("validation")


_X, _Y = np.zeros((2, 2)), np.zeros(2, dtype=np.int64)
NPZ_ARRAY_ERRORS = {  # case -> (arrays saved with np.savez, expected part of the message)
    "missing x": ({"inputs": _X, "y": _Y}, "found inputs, y"),
    "x and x_train": ({"x": _X, "x_train": _X, "y_train": _Y}, "found x, x_train, y_train"),
    "missing y": ({"x": _X, "labels": np.zeros(2)}, "found x, labels"),
    "length mismatch": ({"x": np.zeros((3, 2)), "y": _Y}, "same N"),
    "test length mismatch": ({"x": _X, "y": _Y, "x_test": np.zeros((3, 2)), "y_test": _Y[:1]}, "same N"),
    "x_test without y_test": ({"x": _X, "y": _Y, "x_test": _X}, "both or neither"),
    "y_test without x_test": ({"x": _X, "y": _Y, "y_test": _Y}, "both or neither"),
    "string x": ({"x": np.array(["a", "b"]), "y": _Y}, "numeric"),
    "negative label": ({"x": _X, "y": np.array([0, -1])}, ">= 0"),
    "negative per-token label": ({"x": _X, "y": np.array([[0, -100], [1, -3]])}, ">= 0"),
    "every label ignored": ({"x": _X, "y": np.full((2, 2), -100)}, "all ignored"),
    "mixed y types": ({"x": _X, "y": _Y, "x_test": _X, "y_test": np.zeros(2)}, "mix integer and float"),
}


@pytest.mark.parametrize("case", sorted(NPZ_ARRAY_ERRORS))
def test_npz_array_errors_are_one_line(case: str, tmp_path: Path) -> None:
    arrays, match = NPZ_ARRAY_ERRORS[case]
    np.savez(tmp_path / "data.npz", **arrays)
    assert_one_line_error(str(tmp_path / "data.npz"), match=match)


def test_npz_file_errors_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(str(tmp_path / "absent.npz"), match="not found")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip archive")
    assert_one_line_error(str(garbage), match="not a valid")
    truncated = tmp_path / "truncated.npz"
    np.savez(truncated, x=np.zeros((50, 4)), y=np.zeros(50, dtype=np.int64))
    truncated.write_bytes(truncated.read_bytes()[:200])
    assert_one_line_error(str(truncated), match="not a valid")
    single = tmp_path / "single.npz"
    with open(single, "wb") as handle:  # a bare .npy array under an .npz name
        np.save(handle, np.zeros(3))
    assert_one_line_error(str(single), match="one array")


class _Tripwire:
    """Unpickling this creates a directory: evidence that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_npz_object_arrays_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.npz"
    x = np.empty(1, dtype=object)
    x[0] = _Tripwire(marker)
    np.savez(path, x=x, y=np.array([0]))
    message = assert_one_line_error(str(path), match="refused")
    assert "never unpickled" in message
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as archive:  # the tripwire is live: unpickling would trip it
        archive["x"]
    assert marker.exists()


# ----------------------------------------------------------------------------- Python functions

USER_MODULE = """
import numpy as np
import torch
from lossatlas.data import Dataset


def as_dataset():
    return Dataset("mine", torch.zeros(3, 2), torch.tensor([0, 1, 1]), None, None, "classification", 2)


def as_dict(seed):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(6, 3)), "y": np.arange(6) % 3,
            "x_test": rng.normal(size=(2, 3)), "y_test": np.array([2, 0])}


def as_pair():
    return torch.arange(10.0).reshape(5, 2), torch.linspace(0, 1, 5)


def as_quad(**kwargs):
    x = np.full((4, 2), float(kwargs["seed"]))
    return x, np.array([0, 1, 0, 1]), x[:2], np.array([1, 1])


class Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return torch.full((2, 3), float(i)), i % 2


def as_torch_dataset():
    return Pairs()


def wrong_type():
    return 42


def wrong_tuple():
    return (1, 2, 3)


not_callable = 3
"""


@pytest.fixture()
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_data.py"
    path.write_text(textwrap.dedent(USER_MODULE))
    return path


def test_function_returning_dataset(user_file: Path) -> None:
    data = load_data(f"{user_file}:as_dataset")
    assert data.name == "mine" and data.num_classes == 2


def test_function_returning_dict_gets_seed(user_file: Path) -> None:
    data = load_data(f"{user_file}:as_dict", seed=1)
    assert data.task == "classification" and data.num_classes == 3
    assert data.x_train.shape == (6, 3) and data.x_test is not None and data.x_test.shape == (2, 3)
    expected = torch.from_numpy(np.random.default_rng(1).normal(size=(6, 3))).float()
    torch.testing.assert_close(data.x_train, expected)
    assert not torch.equal(data.x_train, load_data(f"{user_file}:as_dict", seed=2).x_train)


def test_function_returning_tuples(user_file: Path) -> None:
    pair = load_data(f"{user_file}:as_pair")
    assert pair.task == "regression" and pair.y_train.shape == (5, 1) and pair.x_test is None
    quad = load_data(f"{user_file}:as_quad", seed=7)  # **kwargs receives seed
    assert float(quad.x_train[0, 0]) == 7.0 and quad.y_test is not None and quad.y_test.tolist() == [1, 1]


def test_function_returning_torch_dataset(user_file: Path) -> None:
    from lossatlas.batch import num_rows, take

    data = load_data(f"{user_file}:as_torch_dataset")  # streamed: read batch by batch, never held whole
    assert data.streamed and num_rows(data.x_train) == 5 and data.input_shape == (2, 3)
    assert take(data.y_train, slice(0, 5)).tolist() == [0, 1, 0, 1, 0]
    assert data.x_test is None and data.num_classes == 2
    torch.testing.assert_close(take(data.x_train, [3])[0], torch.full((2, 3), 3.0))


def test_module_function_form(user_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(user_file.parent))
    data = load_data("my_data:as_pair")
    assert data.name == "my_data:as_pair" and data.x_train.shape == (5, 2)


@pytest.mark.parametrize(
    "suffix, match",
    [
        (":wrong_type", "returned int"),
        (":wrong_tuple", "returned tuple"),
        (":missing", "no function 'missing'"),
        (":not_callable", "not_callable' is a int, not a function"),
    ],
)
def test_function_errors(user_file: Path, suffix: str, match: str) -> None:
    assert_one_line_error(f"{user_file}{suffix}", match=match)


def test_function_import_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_real_module_xyz\n\ndef f():\n    return 1\n")
    assert_one_line_error(f"{broken}:f", match="ModuleNotFoundError")
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def f(:\n    pass\n")
    assert_one_line_error(f"{syntax}:f", match="SyntaxError")
    assert_one_line_error(f"{tmp_path / 'absent.py'}:f", match="not found")
    assert_one_line_error("not_a_real_pkg_xyz.sub:f", match="cannot import module .not_a_real_pkg_xyz.sub.")
    assert_one_line_error(str(broken), match="name the function")


# ----------------------------------------------------------------------------- specs, Dataset


@pytest.mark.parametrize(
    "spec, match",
    [
        ("imagenet", "unknown dataset"),
        ("teacher:width=3", "valid keys: n, d, k, noise, n_test"),
        ("digits:n=3", "valid keys: none"),
        ("teacher:n", "expected key=value"),
        ("teacher:n=1.5", "n must be an integer"),
        ("teacher:n=0", ">= 1"),
        ("teacher:noise=-1", ">= 0.0"),
        ("teacher:noise=nan", "noise must be a number"),
        ("teacher:k=11", "k <= d"),
        ("spirals:turns=0", "turns must be > 0"),
        ("xor:n=2,n=3", "given twice"),
        ("", "non-empty"),
    ],
)
def test_spec_errors_are_one_line(spec: str, match: str) -> None:
    assert_one_line_error(spec, match=match)


def test_unknown_name_lists_all_builtins() -> None:
    message = assert_one_line_error("cifar10")
    assert all(name in message for name in dataset_names())


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seed(seed: object) -> None:
    assert_one_line_error("xor", match="seed", seed=seed)


def test_fingerprint_changes_with_one_value() -> None:
    data = load_data("teacher:n=20,n_test=5")
    assert data.fingerprint() == load_data("teacher:n=20,n_test=5").fingerprint()
    assert len(data.fingerprint()) == 64
    x = data.x_train.clone()
    x[3, 2] += 1e-3
    assert dataclasses.replace(data, x_train=x).fingerprint() != data.fingerprint()
    y_test = data.y_test.clone() if data.y_test is not None else None
    assert y_test is not None
    y_test[-1, 0] = -y_test[-1, 0] - 1
    assert dataclasses.replace(data, y_test=y_test).fingerprint() != data.fingerprint()
    assert dataclasses.replace(data, x_test=None, y_test=None).fingerprint() != data.fingerprint()


def test_dataset_validates_its_fields() -> None:
    x = torch.zeros(3, 2)
    with pytest.raises(UserInputError):
        Dataset("d", x, torch.zeros(3, 1), None, None, "clustering", None)
    with pytest.raises(UserInputError):
        Dataset("d", x, torch.zeros(4, dtype=torch.int64), None, None, "classification", 2)
    with pytest.raises(UserInputError):
        Dataset("d", x, torch.zeros(3), None, None, "regression", None)  # regression y must be (N, k)
    with pytest.raises(UserInputError):
        Dataset("d", x, torch.zeros(3, dtype=torch.int64), x, None, "classification", 2)
    with pytest.raises(UserInputError, match="num_classes"):
        Dataset("d", x, torch.zeros(3, dtype=torch.int64), None, None, "classification", None)


def test_text_spec_gives_shifted_token_blocks(tmp_path: Path) -> None:
    text = "the quick brown fox jumps over the lazy dog. " * 20
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    data = load_data(f"text:{corpus},block=16")
    vocab = sorted(set(text))
    assert data.per_token and data.num_classes == len(vocab) and data.x_train.dtype == torch.int64
    x, y = data.x_train, data.y_train
    assert x.shape[1] == 16 and y.shape == x.shape and bool((y[:, -1] == -100).all())
    assert torch.equal(y[:, :-1], x[:, 1:])  # the next token is the label; the last position has none
    decoded = "".join(vocab[int(i)] for i in x[0])
    assert decoded == text[:16]
    blocks = len(text) // 16
    assert x.shape[0] + data.x_test.shape[0] == blocks
    with pytest.raises(UserInputError, match="unknown option") as info:
        load_data(f"text:{corpus},blocks=16")
    assert "\n" not in str(info.value)
    with pytest.raises(UserInputError, match="block must be an integer"):
        load_data(f"text:{corpus},block=sixteen")


def test_modadd_spec_is_the_power_et_al_task() -> None:
    data = load_data("modadd:p=7,frac=0.5")
    assert data.num_classes == 8 and data.per_token  # tokens 0..6 and '=' (7)
    x = torch.cat([data.x_train, data.x_test])
    y = torch.cat([data.y_train, data.y_test])
    assert x.shape == (49, 3) and bool((x[:, 2] == 7).all())
    assert torch.equal(y[:, 2], (x[:, 0] + x[:, 1]) % 7) and bool((y[:, :2] == -100).all())
    assert torch.equal(load_data("modadd:p=7,frac=0.5", seed=3).x_train, data.x_train)  # the run seed: same split
