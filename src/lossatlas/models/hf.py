"""``--model hf:...``: a Hugging Face ``transformers`` model from local files, never a download.

Spec forms (:func:`parse_hf_spec`)::

    hf:DIR[:key=value,...]           a directory written by save_pretrained: config.json + weights
    hf:path/config.json[:key=...]    a config file alone: the model with random weights, seeded
    keys: task=causal-lm|masked-lm|sequence-classification|token-classification, num_labels=N, attn=sdpa|eager

The model class is the ``task``'s ``AutoModelFor...``, else the config's ``architectures[0]``, else the causal-LM
class. Everything is read with ``local_files_only=True``; a directory with a config but no weights is refused (a
model with random weights must be asked for by naming its config file).

The model comes back on the CPU in float32 and eval mode, with ``config.use_cache = False`` (no
``past_key_values`` in its outputs) and ``config.return_dict = True`` (a ``ModelOutput`` with ``.logits``).

Attention: the default ``attn_implementation`` (``"sdpa"`` in current releases) is kept. PyTorch's fused CPU
attention kernel has no second derivative, but lossatlas takes every Hessian-vector product inside
:func:`lossatlas.engine.attention.math_attention`, where the same model differentiates twice, by
grad-of-grad and by ``jvp(grad)``, to the numbers ``"eager"`` gives; ``torch.func.functional_call`` and ``vmap``
over parameter points work with either. ``attn=eager`` is there for a model whose sdpa path a user distrusts.

Tied weights: a language model's output head shares its input embedding (GPT-2's ``lm_head.weight`` *is*
``transformer.wte.weight``; BERT's ``cls.predictions.decoder`` is ``bert.embeddings.word_embeddings``), and
``named_parameters()`` lists the shared tensor once, under the embedding's name. A perturbation reaches the head
only through ``functional_call(..., tie_weights=True)``.

Losses: take them from ``.logits`` (the batch contract). A model's own ``.loss`` (``labels=...``) casts the logits
to float32 first, also in a float64 model, so its second derivatives are float32-accurate only.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from lossatlas.errors import UserInputError
from lossatlas.specs import canonical_spec, split_hf_spec

PREFIX = "hf:"

TASKS: dict[str, str] = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
}
"""``task=`` value -> the ``transformers`` auto class that builds its head."""

ATTENTION = ("sdpa", "eager")
"""``attn=`` values (the others need a GPU or download kernels)."""

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
"""Weight files ``save_pretrained`` writes; a directory holding none of them has no weights."""

_CLASSIFIERS = ("ForSequenceClassification", "ForTokenClassification")
_INSTALL = "pip install -e '.[hf]'"


def _fail(message: str) -> UserInputError:
    return UserInputError(" ".join(message.split()))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError:
        raise _fail(f"hf: models need Hugging Face transformers, which is not installed; run {_INSTALL}") from None
    return transformers


@contextmanager
def _quiet(transformers: ModuleType) -> Iterator[None]:
    """Silence transformers' info logging and progress bars while loading; restore them afterwards."""
    logging = transformers.utils.logging
    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


# ----------------------------------------------------------------------------- spec


def parse_hf_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``hf:PATH[:key=value,...]`` -> ``(PATH, options)`` for :func:`load_hf`.

    ``options`` holds ``task`` (str), ``num_labels`` (int) and ``attn_implementation`` (spelt ``attn``), each only
    when given. The options are what follows the last ``:`` when that part contains ``=``; a path holding ``:``
    otherwise stays whole.
    """
    stripped = text.strip() if isinstance(text, str) else ""
    if not stripped.startswith(PREFIX):
        raise _fail(f"model spec {text!r} is not an hf: spec; write hf:DIR or hf:path/config.json[:task=...]")
    path, tail = split_hf_spec(stripped)
    if not path:
        raise _fail(f"model spec {text!r} names no path; write hf:DIR or hf:path/config.json")
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in tail.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not key or not value:
            raise _fail(f"model spec {text!r}: option {item!r} is not key=value")
        if key in options or key == "attn" and "attn_implementation" in options:
            raise _fail(f"model spec {text!r}: option {key!r} is given twice")
        if key == "task":
            options["task"] = _check_task(value)
        elif key == "num_labels":
            options["num_labels"] = _check_num_labels(value)
        elif key == "attn":
            options["attn_implementation"] = _check_attention(value)
        else:
            raise _fail(f"model spec {text!r}: unknown option {key!r}; hf: models take task=, num_labels=, attn=")
    return path, options


def canonical_hf_spec(text: str) -> str:
    """The spec with its path made absolute (``hf:runs/gpt2`` -> ``hf:/abs/runs/gpt2``), so that one model named
    two ways gives one configuration hash; options are kept as written (checked first)."""
    parse_hf_spec(text)
    return canonical_spec(text)


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise _fail(f"unknown task {task!r} for an hf: model; use one of {', '.join(TASKS)}")
    return task


def _check_num_labels(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or n < 1 or str(n) != str(value).strip():
        raise _fail(f"num_labels must be a positive integer, got {value!r}")
    return n


def _check_attention(value: str) -> str:
    if value not in ATTENTION:
        raise _fail(f"unknown attention implementation {value!r} for an hf: model; use attn=sdpa or attn=eager")
    return value


# ----------------------------------------------------------------------------- loading


def _read_config(transformers: ModuleType, source: Path, label: str, num_labels: int | None) -> Any:
    extra = {} if num_labels is None else {"num_labels": num_labels}
    try:
        return transformers.AutoConfig.from_pretrained(str(source), local_files_only=True, **extra)
    except Exception as exc:  # noqa: BLE001 - any failure here is the config file's fault
        raise _fail(f"{label} cannot be read by transformers {transformers.__version__} ({_first_line(exc)}); "
                    "pass a config.json written by save_pretrained") from None


def _model_class(transformers: ModuleType, config: Any, task: str | None, label: str) -> type:
    """The class to build: the task's head for this model type, else ``architectures[0]``, else the causal LM."""
    model_type = getattr(config, "model_type", "?")
    if task is not None:
        auto = getattr(transformers, TASKS[task])
        try:
            return auto._model_mapping[type(config)]  # type: ignore[no-any-return]
        except KeyError:
            raise _fail(f"transformers has no {task} head for model type {model_type!r} ({label}); "
                        f"pass another task= ({', '.join(TASKS)})") from None
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        return _model_class(transformers, config, "causal-lm", label)
    name = str(architectures[0])
    cls = getattr(transformers, name, None)
    if not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
        raise _fail(f"architecture {name!r} in {label} is not a model class of transformers "
                    f"{transformers.__version__}; upgrade transformers or pass task= ({', '.join(TASKS)})")
    base = getattr(transformers.models.auto.modeling_auto, "MODEL_MAPPING_NAMES", {}).get(model_type)
    if name == base:
        raise _fail(f"architecture {name!r} in {label} is the bare model without an output head (no logits); "
                    f"pass task= ({', '.join(TASKS)})")
    return cls


def _check_labels_option(cls: type, num_labels: int | None, label: str) -> None:
    if num_labels is not None and not cls.__name__.endswith(_CLASSIFIERS):
        raise _fail(f"num_labels applies to a classification head, but {label} builds {cls.__name__}; "
                    "add task=sequence-classification or task=token-classification, or drop num_labels")


def _check_pad_token(cls: type, config: Any, label: str) -> None:
    """A sequence classifier that pools the last non-padding token (GPT-2, Llama) finds it by ``pad_token_id``; with
    none set it refuses every batch of more than one sequence, at the first forward pass."""
    if not cls.__name__.endswith("ForSequenceClassification") or getattr(config, "pad_token_id", 0) is not None:
        return
    try:
        needs = "pad_token_id" in inspect.getsource(cls.forward)  # type: ignore[attr-defined]
    except (OSError, TypeError):
        needs = True
    if needs:
        raise _fail(f"{cls.__name__} finds each sequence's last token by pad_token_id, which {label} does not set; "
                    'add "pad_token_id": ID (the token id your padding uses) to the config')


def _weights_of(directory: Path) -> Path | None:
    return next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)


def _from_pretrained(transformers: ModuleType, cls: type, directory: Path, config: Any,
                     attn: dict[str, str], num_labels: int | None, seed: int) -> nn.Module:
    label = f"'{directory}'"
    try:
        model, info = cls.from_pretrained(  # type: ignore[attr-defined]
            str(directory), config=config, local_files_only=True, output_loading_info=True, **attn)
    except Exception as exc:  # noqa: BLE001 - weights that do not fit their config are the files' fault
        saved = _saved_num_labels(directory)
        if num_labels is not None and saved is not None and saved != num_labels:
            raise _fail(f"the weights in {label} hold a classifier for {saved} labels, not num_labels={num_labels}; "
                        f"drop num_labels or pass num_labels={saved}") from None
        raise _fail(f"the weights in {label} cannot be loaded into {cls.__name__} ({_first_line(exc)}); "
                    "save them again with save_pretrained") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        warnings.warn(f"hf:{directory}: {len(missing)} tensors of {cls.__name__} are not in the checkpoint and "
                      f"start from random values (seed {seed}): {shown}", UserWarning, stacklevel=3)
    return model  # type: ignore[no-any-return]


def _saved_num_labels(directory: Path) -> int | None:
    try:
        data = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if "num_labels" in data:
        return int(data["num_labels"])
    labels = data.get("id2label")
    return len(labels) if isinstance(labels, dict) else None


def load_hf(target: str | Path, *, task: str | None = None, seed: int = 0, num_labels: int | None = None,
            attn_implementation: str | None = None) -> nn.Module:
    """A ``transformers`` model from a local directory (its weights) or a config file (random weights).

    Args:
        target: a directory written by ``save_pretrained`` (``config.json`` and ``model.safetensors`` or
            ``pytorch_model.bin``), or the path of a ``.json`` config file, whose model starts from random weights.
        task: ``causal-lm``, ``masked-lm``, ``sequence-classification`` or ``token-classification`` (the head
            built on the model); default the config's ``architectures[0]``, else ``causal-lm``.
        seed: seed of every random value: all weights from a config file, a head the checkpoint lacks
            (``task=sequence-classification`` on a language model's directory). Drawn inside
            ``torch.random.fork_rng``: the global RNG is untouched; equal seeds give bit-identical weights.
        num_labels: classes of a classification head (overrides the config's).
        attn_implementation: ``"sdpa"`` or ``"eager"``; default transformers' own (see the module docstring).

    Returns:
        The model on the CPU, float32, ``eval()`` mode, ``config.use_cache = False``, ``config.return_dict = True``.

    Raises:
        UserInputError: (one line) transformers missing, a missing path, a directory without ``config.json`` or
            without weights, an unreadable config, an unknown task, architecture or attention implementation,
            a task the model type has no head for, ``num_labels`` on a head without labels, weights that do not
            fit.
    """
    transformers = _transformers()
    if task is not None:
        _check_task(task)
    if num_labels is not None:
        num_labels = _check_num_labels(num_labels)
    attn = {} if attn_implementation is None else {"attn_implementation": _check_attention(attn_implementation)}
    path = Path(target).expanduser()
    if path.suffix == ".json":
        if not path.is_file():
            raise _fail(f"config file '{path}' does not exist; pass hf:DIR (config.json + weights) or an existing "
                        "config .json")
        directory = None
        label = f"'{path}'"
    else:
        if not path.is_dir():
            raise _fail(f"'{path}' is neither a model directory nor a .json config file; pass hf:DIR written by "
                        "save_pretrained or hf:path/config.json")
        if not (path / "config.json").is_file():
            raise _fail(f"directory '{path}' has no config.json; pass a directory written by save_pretrained")
        if _weights_of(path) is None:
            raise _fail(f"directory '{path}' has a config.json but no weights ({' or '.join(WEIGHT_FILES[::2])}); "
                        f"pass hf:{path / 'config.json'} to start from random weights")
        directory = path
        label = f"'{path / 'config.json'}'"
    with _quiet(transformers), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = _read_config(transformers, path, label, num_labels)
        cls = _model_class(transformers, config, task, label)
        _check_labels_option(cls, num_labels, label)
        _check_pad_token(cls, config, label)
        if attn:
            config._attn_implementation = attn["attn_implementation"]
        if directory is None:
            try:
                model = cls(config)
            except Exception as exc:  # noqa: BLE001 - a config the class refuses (sizes, attention) is the file's
                raise _fail(f"transformers cannot build {cls.__name__} from {label} ({_first_line(exc)}); "
                            "fix the config") from None
        else:
            model = _from_pretrained(transformers, cls, directory, config, attn, num_labels, seed)
    model.config.use_cache = False
    model.config.return_dict = True
    return model.to(device="cpu", dtype=torch.float32).eval()


# ----------------------------------------------------------------------------- the --model entry point


def output_width(model: nn.Module) -> int:
    """Width of the model's logits: the vocabulary of a language-model head, else ``config.num_labels``."""
    hf: Any = model
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if isinstance(head, nn.Linear):
        return int(head.out_features)
    return int(hf.config.num_labels)


def max_positions(model: nn.Module) -> int | None:
    """Longest sequence the model's position embeddings cover (``max_position_embeddings``), if it says."""
    config: Any = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def build_hf_model(spec: str, *, input_shape: Sequence[int], output_dim: int, seed: int = 0) -> nn.Module:
    """The ``hf:`` branch of :func:`lossatlas.models.loading.build_model`: load, then check it fits the data.

    ``input_shape``: ``(T,)`` for token data (checked against the model's positions); ``output_dim``: the classes
    (the vocabulary for language modelling), checked against the model's logits.
    """
    path, options = parse_hf_spec(spec)
    model = load_hf(path, seed=seed, **options)
    width = output_width(model)
    classifier = model.__class__.__name__.endswith(_CLASSIFIERS)
    # a language model's labels are token ids: the data's largest + 1 may be below the vocabulary, never above
    if width != int(output_dim) and (classifier or width < int(output_dim)):
        hint = (f"pass num_labels={output_dim}" if classifier
                else "use a dataset whose token ids match the model's vocabulary")
        raise _fail(f"{spec} has {width} output classes (logits) but the data has {output_dim}; {hint}")
    shape = tuple(int(s) for s in input_shape)
    limit = max_positions(model)
    if len(shape) == 1 and limit is not None and shape[0] > limit:
        raise _fail(f"{spec} takes sequences of at most {limit} tokens (max_position_embeddings) but the data has "
                    f"{shape[0]}; use shorter sequences")
    return model


__all__ = ["ATTENTION", "TASKS", "build_hf_model", "canonical_hf_spec", "load_hf", "max_positions",
           "output_width", "parse_hf_spec"]
