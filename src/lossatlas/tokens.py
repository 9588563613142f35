"""Token datasets as numpy arrays: modular addition (grokking) and causal language modelling on a text file.

Each builder returns a dict of numpy arrays ``x, y, x_test, y_test`` plus ``num_classes``, a 0-d int64 array
holding the vocabulary size (the model's ``output_dim``; read it with ``int(arrays["num_classes"])``).
``x`` are int64 token ids (N, T); ``y`` are int64 per-token labels (N, T) with -100 where no loss is taken
(the ``ignore_index`` of ``F.cross_entropy`` and the Hugging Face causal-LM convention). No torch needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lossatlas.errors import UserInputError

#: Label of a position that takes no loss (``F.cross_entropy(..., ignore_index=-100)``).
IGNORE_INDEX = -100

Arrays = dict[str, np.ndarray]


def modadd_arrays(p: int = 97, frac: float = 0.3, seed: int = 0) -> Arrays:
    """Modular addition a + b mod p as a sequence task (Power et al. 2022, "Grokking: Generalization beyond
    overfitting on small algorithmic datasets").

    All p² pairs (a, b), a, b in 0..p-1, pair i = a·p + b, become the three tokens ``a b =`` with ``=`` the
    token id p, so the vocabulary has p + 1 tokens (``num_classes = p + 1``). x int64 (N, 3) = [a, b, p];
    y int64 (N, 3) = [-100, -100, (a + b) mod p]: only the answer after ``=`` is scored. The split is a
    permutation of the p² pairs from ``np.random.default_rng(seed)``: its first ``round(frac·p²)`` pairs
    (Python ``round``) are the train split, the rest the test split. The default train fraction 0.3 lies in
    the range where Power et al. (Fig. 1, 2) see grokking: train accuracy reaches 100% long before test accuracy.
    """
    if isinstance(p, bool) or not isinstance(p, int | np.integer) or p < 2:
        raise UserInputError(f"modadd needs an integer modulus p >= 2, got p={p!r}; e.g. p=97")
    if not 0.0 < frac < 1.0:
        raise UserInputError(f"modadd needs a train fraction 0 < frac < 1, got frac={frac!r}; e.g. frac=0.3")
    p = int(p)
    n_train = round(frac * p * p)
    if n_train == 0 or n_train == p * p:
        raise UserInputError(
            f"modadd with p={p}, frac={frac} leaves the {'train' if n_train == 0 else 'test'} split empty "
            f"(round(frac*p*p) = {n_train} of {p * p} pairs); choose frac or p so both splits get pairs"
        )
    a, b = np.divmod(np.arange(p * p, dtype=np.int64), p)
    x = np.stack([a, b, np.full_like(a, p)], axis=1)
    y = np.stack([np.full_like(a, IGNORE_INDEX), np.full_like(a, IGNORE_INDEX), (a + b) % p], axis=1)
    order = np.random.default_rng(seed).permutation(p * p)
    train, test = order[:n_train], order[n_train:]
    return {
        "x": x[train],
        "y": y[train],
        "x_test": x[test],
        "y_test": y[test],
        "num_classes": np.array(p + 1, dtype=np.int64),
    }


def _encode(text: str, tokenizer: str | None) -> tuple[list[int], int]:
    """Token ids of ``text`` and the vocabulary size: characters (sorted set) or a local HF tokenizer."""
    if tokenizer is None:
        vocabulary = sorted(set(text))
        index = {char: i for i, char in enumerate(vocabulary)}
        return [index[char] for char in text], len(vocabulary)
    if not Path(tokenizer).expanduser().is_dir():
        raise UserInputError(f"tokenizer directory not found: {tokenizer}; pass a local directory saved with "
                             "save_pretrained")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UserInputError(
            "tokenizer= needs the transformers package; install it with pip install -e '.[hf]'"
        ) from None
    try:
        tok = AutoTokenizer.from_pretrained(str(Path(tokenizer).expanduser()), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        reason = " ".join(str(err).split())[:200]
        raise UserInputError(
            f"no tokenizer found in {tokenizer!r} ({reason}); pass a local directory saved with save_pretrained"
        ) from None
    ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
    return list(ids), len(tok)


def text_arrays(path: str, block: int = 128, tokenizer: str | None = None, test_frac: float = 0.1) -> Arrays:
    """Causal language modelling on a UTF-8 text file, cut into non-overlapping blocks of ``block`` tokens.

    Tokens: with ``tokenizer=None`` one per character, ids 0..V-1 in the order of the sorted set of characters
    of the file (V = number of distinct characters); with ``tokenizer=DIR`` the Hugging Face tokenizer saved in
    DIR (``AutoTokenizer.from_pretrained(DIR, local_files_only=True)``, no special tokens added), V =
    ``len(tokenizer)``. V is returned as the extra key ``num_classes`` (0-d int64 array).

    The token stream is cut into N = len // block blocks (the tail is dropped); x = ids (N, block) int64,
    y[:, t] = ids[:, t + 1] and y[:, -1] = -100, so the per-token cross-entropy over the unmasked labels equals
    Hugging Face's ``GPT2LMHeadModel(input_ids=ids, labels=ids).loss``. The last ``ceil(test_frac * N)`` blocks
    (at most N - 1) are the test split, the others the train split.
    """
    if isinstance(block, bool) or not isinstance(block, int | np.integer) or block < 2:
        raise UserInputError(f"text data needs an integer block >= 2 tokens, got block={block!r}; e.g. block=128")
    if not 0.0 < test_frac < 1.0:
        raise UserInputError(f"text data needs 0 < test_frac < 1, got test_frac={test_frac!r}; e.g. test_frac=0.1")
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserInputError(f"text file not found: {path}; check the path")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserInputError(
            f"text file {path} is not UTF-8 ({err.reason} at byte {err.start}); re-encode it as UTF-8"
        ) from None
    ids, vocab = _encode(text, tokenizer)
    n = len(ids) // block
    if n < 2:
        raise UserInputError(
            f"text file {path} has {len(ids)} tokens, fewer than 2 blocks of {block}; use a longer text or a "
            "smaller block"
        )
    blocks = np.asarray(ids[: n * block], dtype=np.int64).reshape(n, block)
    labels = np.full_like(blocks, IGNORE_INDEX)
    labels[:, :-1] = blocks[:, 1:]
    n_test = min(math.ceil(test_frac * n), n - 1)
    cut = n - n_test
    return {
        "x": blocks[:cut],
        "y": labels[:cut],
        "x_test": blocks[cut:],
        "y_test": labels[cut:],
        "num_classes": np.array(vocab, dtype=np.int64),
    }
