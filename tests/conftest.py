"""Shared small problems: seeded, tiny, fast. Numerical tests compare against independent references."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossatlas.data import Dataset

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSSATLAS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def make_classification(n: int = 103, n_test: int = 37, d: int = 6, classes: int = 3, seed: int = 0,
                        image: bool = False) -> Dataset:
    """Gaussian blobs; N deliberately not a multiple of common batch sizes (uneven last batch)."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, 4, 4) if image else (d,)
    centres = torch.randn(classes, *shape, generator=g) * 2

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (m,), generator=g)
        return centres[y] + torch.randn(m, *shape, generator=g), y

    x, y = draw(n)
    xt, yt = draw(n_test)
    return Dataset(name="blobs", x_train=x, y_train=y, x_test=xt, y_test=yt, task="classification",
                   num_classes=classes)


def mlp(d: int = 6, hidden: int = 8, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes)).eval()


def bn_cnn(classes: int = 3, seed: int = 0) -> nn.Module:
    """A conv net with BatchNorm whose running statistics are not the defaults."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(64, classes))
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 1, 4, 4) * 2 + 0.5)
    return net.eval()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test (tiny problems run several times slower on two threads of a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def blobs() -> Dataset:
    return make_classification()


@pytest.fixture
def image_blobs() -> Dataset:
    return make_classification(image=True)


def plain_metrics(net: nn.Module, point: Mapping[str, torch.Tensor], data: Dataset,
                  splits: Sequence[str] = ("train", "test")) -> dict[str, float]:
    """The independent reference for the engine: ``point`` loaded into a copy of ``net`` (eval mode), one plain
    forward of each whole split, ``F.cross_entropy`` mean and accuracy in float64. Shares no code with the engine."""
    clone = copy.deepcopy(net)
    state = clone.state_dict()
    state.update({k: v.to(state[k].dtype) for k, v in point.items()})
    clone.load_state_dict(state)
    clone.eval()
    out: dict[str, float] = {}
    with torch.no_grad():
        for split in splits:
            x, y = data.split(split)
            logits = clone(x)
            out[f"{split}_loss"] = float(F.cross_entropy(logits.double(), y))
            out[f"{split}_accuracy"] = float((logits.argmax(-1) == y).double().mean())
    return out
