"""Tiny Hugging Face models and token datasets on disk, for tests of ``--model hf:...`` (needs ``transformers``).

Import inside a test module that first calls ``pytest.importorskip("transformers")``. Every writer is seeded and
returns the path to pass after ``hf:`` (or as ``--data``), so end-to-end CLI tests can do::

    gpt2 = write_tiny_gpt2(tmp_path / "gpt2")                     # hf:{gpt2}
    data = write_lm_npz(tmp_path / "lm.npz")                      # x_input_ids, x_attention_mask, y (N, T)
    bert = write_tiny_bert(tmp_path / "bert", num_labels=3)       # hf:{bert}
    data = write_classification_npz(tmp_path / "cls.npz", num_labels=3)

:func:`causal_lm_targets` is the reference for a causal LM's per-token labels (what ``labels=input_ids`` means
inside ``GPT2LMHeadModel``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

VOCAB = 64
SEQ_LEN = 12
TINY_GPT2: dict[str, Any] = {"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": VOCAB, "n_positions": 32}
TINY_BERT: dict[str, Any] = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                              "intermediate_size": 64, "vocab_size": VOCAB, "max_position_embeddings": 32}


def _quiet_save(model: torch.nn.Module, directory: Path) -> Path:
    from transformers.utils import logging

    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        model.save_pretrained(directory)  # type: ignore[operator]
    finally:
        if bars:
            logging.enable_progress_bar()
    return directory


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """A 2-layer, width-32 GPT-2 LM (vocabulary 64, 32 positions), seeded, eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = GPT2Config(**TINY_GPT2, bos_token_id=0, eos_token_id=0)
        return GPT2LMHeadModel(config).eval()


def tiny_bert(seed: int = 0, num_labels: int | None = 3) -> BertForSequenceClassification | BertForMaskedLM:
    """A 2-layer, width-32 BERT: a sequence classifier with ``num_labels`` classes, or (``None``) a masked LM."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if num_labels is None:
            return BertForMaskedLM(BertConfig(**TINY_BERT)).eval()
        return BertForSequenceClassification(BertConfig(**{**TINY_BERT, "num_labels": num_labels})).eval()


def write_tiny_gpt2(directory: str | Path, seed: int = 0) -> Path:
    """``save_pretrained`` of :func:`tiny_gpt2` (config.json + model.safetensors)."""
    return _quiet_save(tiny_gpt2(seed), Path(directory))


def write_tiny_bert(directory: str | Path, seed: int = 0, num_labels: int | None = 3) -> Path:
    """``save_pretrained`` of :func:`tiny_bert`."""
    return _quiet_save(tiny_bert(seed, num_labels), Path(directory))


def write_config_only(model_dir: str | Path, directory: str | Path) -> Path:
    """Copy ``model_dir/config.json`` alone into ``directory``; returns the new config.json's path."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    out = target / "config.json"
    out.write_text((Path(model_dir) / "config.json").read_text())
    return out


def token_batch(n: int, seq_len: int = SEQ_LEN, seed: int = 0, pad_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, int64 ``(n, seq_len)``; the first ``pad_rows`` rows end in padding (mask 0,
    token id 0) of lengths 1, 2, ... (at most ``seq_len - 2``)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, seq_len), generator=g)
    mask = torch.ones(n, seq_len, dtype=torch.int64)
    for row in range(min(pad_rows, n)):
        pad = 1 + row % (seq_len - 2)
        mask[row, seq_len - pad:] = 0
        ids[row, seq_len - pad:] = 0
    return ids, mask


def causal_lm_targets(ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token labels of a causal LM: ``y[:, t] = ids[:, t + 1]``, ``y[:, -1] = -100``, and -100 where the
    next token is padding (``attention_mask == 0``)."""
    y = torch.full_like(ids, -100)
    y[:, :-1] = ids[:, 1:]
    if attention_mask is not None:
        y[:, :-1][attention_mask[:, 1:] == 0] = -100
    return y


def _savez(path: str | Path, arrays: dict[str, torch.Tensor]) -> None:
    numpy_arrays: dict[str, Any] = {k: v.numpy() for k, v in arrays.items()}
    np.savez(Path(path), **numpy_arrays)


def write_lm_npz(path: str | Path, n: int = 24, n_test: int = 8, seq_len: int = SEQ_LEN, seed: int = 0,
                 pad_rows: int = 4) -> Path:
    """Language-modelling data for the tiny GPT-2: ``x_input_ids``, ``x_attention_mask`` (int64 ``(n, T)``),
    ``y`` = :func:`causal_lm_targets` (int64 ``(n, T)``), and the same with ``_test`` for ``n_test`` rows."""
    ids, mask = token_batch(n + n_test, seq_len, seed, pad_rows)
    y = causal_lm_targets(ids, mask)
    arrays = {"x_input_ids": ids[:n], "x_attention_mask": mask[:n], "y": y[:n],
              "x_test_input_ids": ids[n:], "x_test_attention_mask": mask[n:], "y_test": y[n:]}
    _savez(path, arrays)
    return Path(path)


def write_classification_npz(path: str | Path, num_labels: int = 3, n: int = 24, n_test: int = 8,
                             seq_len: int = SEQ_LEN, seed: int = 0, pad_rows: int = 4) -> Path:
    """Sequence classification for the tiny BERT: ``x_input_ids``, ``x_attention_mask`` (int64 ``(n, T)``),
    ``y`` int64 ``(n,)`` in ``[0, num_labels)`` (every class present), and the same with ``_test``."""
    ids, mask = token_batch(n + n_test, seq_len, seed, pad_rows)
    y = torch.arange(n + n_test) % num_labels
    arrays = {"x_input_ids": ids[:n], "x_attention_mask": mask[:n], "y": y[:n],
              "x_test_input_ids": ids[n:], "x_test_attention_mask": mask[n:], "y_test": y[n:]}
    _savez(path, arrays)
    return Path(path)
