"""Models of the batch-contract tests (loaded by file path from the CLI too): token ids, two inputs, named inputs,
a per-token language model. Plain PyTorch, no lossatlas import."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

VOCAB, T = 11, 8


class EmbeddingClassifier(nn.Module):
    """int64 token ids (B, T) -> class logits (B, C): embedding, mean over tokens, linear."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 6)
        self.head = nn.Linear(6, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(ids)).mean(dim=1))


class TwoInputs(nn.Module):
    """``forward(a, b)``: two float tensors (B, 4) and (B, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(3, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.a(a) + self.b(b)))


class NamedInputs(nn.Module):
    """``forward(input_ids=..., features=...)`` returning a dict with ``logits``, as Hugging Face models do."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 5)
        self.features = nn.Linear(2, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, input_ids: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.embed(input_ids).mean(dim=1) + self.features(features))
        return {"logits": self.head(h), "hidden": h}


class TinyLM(nn.Module):
    """A causal one-layer language model: (B, T) ids -> (B, T, V) logits, returned as a tuple (logits, extra)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.pos = nn.Parameter(0.1 * torch.randn(T, 8))
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = ids.shape[1]
        h = self.embed(ids) + self.pos[:t]
        mask = torch.ones(t, t, dtype=torch.bool, device=ids.device).triu(1)
        a, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
        return self.head(torch.tanh(h + a)), h


def embedding_classifier() -> nn.Module:
    return EmbeddingClassifier()


def two_inputs() -> nn.Module:
    return TwoInputs()


def named_inputs() -> nn.Module:
    return NamedInputs()


def tiny_lm() -> nn.Module:
    return TinyLM()


def token_arrays(n: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays of every layout: ids (N, T) int64, labels (N,), per-token labels (N, T) with -100 at masked prompt
    positions (a random-length prompt per row) and the last position, two float inputs."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(n, T))
    tokens = np.concatenate([ids[:, 1:], np.full((n, 1), -100)], axis=1)
    prompt = rng.integers(0, T // 2, size=n)
    tokens[np.arange(T)[None, :] < prompt[:, None]] = -100
    return {"ids": ids.astype(np.int64), "labels": rng.integers(0, 3, size=n).astype(np.int64),
            "tokens": tokens.astype(np.int64), "a": rng.standard_normal((n, 4)).astype(np.float32),
            "b": rng.standard_normal((n, 3)).astype(np.float32), "f": rng.standard_normal((n, 2)).astype(np.float32),
            "pair": rng.integers(0, 2, size=n).astype(np.int64)}


class TokenStream(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """The LM's data as a map-style Dataset: item i is (ids (T,), per-token labels (T,)); counts its reads."""

    def __init__(self, n: int = 60) -> None:
        arrays = token_arrays(n)
        self.ids, self.tokens = arrays["ids"], arrays["tokens"]
        self.reads = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        self.reads += 1
        return self.ids[i], self.tokens[i]


def lm_stream() -> TokenStream:
    return TokenStream()
