"""``lossatlas.models.hf``: Hugging Face models from local files, checked against plain ``transformers``."""

from __future__ import annotations

import json
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap

pytest.importorskip("transformers")

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

from lossatlas.engine.attention import math_attention  # noqa: E402
from lossatlas.errors import UserInputError  # noqa: E402
from lossatlas.models.hf import build_hf_model, canonical_hf_spec, load_hf, parse_hf_spec  # noqa: E402
from tests.hf_fixtures import (  # noqa: E402
    SEQ_LEN,
    VOCAB,
    causal_lm_targets,
    tiny_bert,
    tiny_gpt2,
    token_batch,
    write_config_only,
    write_tiny_bert,
    write_tiny_gpt2,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny problems: one thread is faster


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return write_tiny_gpt2(tmp_path_factory.mktemp("hf") / "gpt2", seed=0)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("hf") / "bert", seed=0, num_labels=3)


@pytest.fixture(scope="module")
def bert_mlm_dir(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("hf") / "bert-mlm", seed=0, num_labels=None)


def _reference(cls, directory):
    """The plain transformers load of a saved directory (the default attention), eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls.from_pretrained(str(directory), local_files_only=True).eval()


def _no_grad_logits(model, *args, **kwargs):
    with torch.no_grad():
        return model(*args, **kwargs).logits


# ----------------------------------------------------------------------------- loading reproduces the model


def test_directory_reproduces_saved_gpt2(gpt2_dir):
    verbosity = transformers.utils.logging.get_verbosity()
    model = load_hf(gpt2_dir)
    assert transformers.utils.logging.get_verbosity() == verbosity  # silenced while loading only
    ids, mask = token_batch(5, pad_rows=2)
    original = tiny_gpt2(seed=0)
    assert type(model) is GPT2LMHeadModel and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    torch.testing.assert_close(model.state_dict(), original.state_dict(), rtol=0, atol=0)
    expected = _no_grad_logits(_reference(GPT2LMHeadModel, gpt2_dir), input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(_no_grad_logits(model, input_ids=ids, attention_mask=mask), expected, rtol=0, atol=0)
    torch.testing.assert_close(_no_grad_logits(model, ids), _no_grad_logits(original, ids), rtol=0, atol=0)


def test_half_precision_checkpoint_comes_back_in_float32(tmp_path):
    original = tiny_gpt2(seed=1).to(torch.bfloat16)
    original.save_pretrained(tmp_path / "bf16")
    model = load_hf(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    torch.testing.assert_close(model.state_dict(), {k: v.float() for k, v in original.state_dict().items()},
                               rtol=0, atol=0)


def test_directory_reproduces_saved_bert_classifier(bert_dir):
    model = load_hf(bert_dir)
    ids, mask = token_batch(5, pad_rows=3)
    assert type(model) is BertForSequenceClassification and model.config.num_labels == 3
    expected = _no_grad_logits(tiny_bert(seed=0, num_labels=3), input_ids=ids, attention_mask=mask)
    got = _no_grad_logits(model, input_ids=ids, attention_mask=mask)
    assert got.shape == (5, 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_task_picks_the_head_and_a_missing_head_is_seeded(bert_mlm_dir):
    """task= over architectures[0]; the classifier the MLM checkpoint lacks is drawn from the seed, with a warning."""
    with pytest.warns(UserWarning, match=r"classifier\.weight") as record:
        a = load_hf(bert_mlm_dir, task="sequence-classification", num_labels=2, seed=3)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    with pytest.warns(UserWarning):
        b = load_hf(bert_mlm_dir, task="sequence-classification", num_labels=2, seed=3)
        c = load_hf(bert_mlm_dir, task="sequence-classification", num_labels=2, seed=4)
    assert type(a) is BertForSequenceClassification and a.classifier.weight.shape == (2, 32)
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    mlm = tiny_bert(seed=0, num_labels=None)
    torch.testing.assert_close(a.bert.embeddings.word_embeddings.weight, mlm.bert.embeddings.word_embeddings.weight,
                               rtol=0, atol=0)
    torch.testing.assert_close(c.bert.encoder.state_dict(), mlm.bert.encoder.state_dict(), rtol=0, atol=0)


# ----------------------------------------------------------------------------- random weights from a config file


def test_config_file_gives_seeded_random_weights(gpt2_dir, tmp_path):
    config = write_config_only(gpt2_dir, tmp_path / "cfg")
    state = torch.random.get_rng_state()
    a, b, c = load_hf(config, seed=7), load_hf(config, seed=7), load_hf(config, seed=8)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not a.training and all(p.dtype == torch.float32 for p in a.parameters())
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)
    assert not torch.equal(a.transformer.wte.weight, c.transformer.wte.weight)
    assert not torch.equal(a.transformer.wte.weight, tiny_gpt2(seed=0).transformer.wte.weight)
    # the reference: seed torch, construct the class of architectures[0] from the same config
    torch.manual_seed(7)
    expected = GPT2LMHeadModel(GPT2Config.from_json_file(str(config)))
    torch.testing.assert_close(a.state_dict(), expected.state_dict(), rtol=0, atol=0)
    assert a.lm_head.weight is a.transformer.wte.weight


def test_config_file_of_any_name_with_task_and_labels(bert_dir, tmp_path):
    config = tmp_path / "tiny-bert.json"
    config.write_text((bert_dir / "config.json").read_text())
    model = load_hf(config, task="token-classification", num_labels=5, seed=1)
    assert type(model).__name__ == "BertForTokenClassification"
    ids, mask = token_batch(3)
    assert _no_grad_logits(model, input_ids=ids, attention_mask=mask).shape == (3, SEQ_LEN, 5)


def test_gpt2_sequence_classifier_needs_a_pad_token(gpt2_dir, tmp_path):
    with pytest.raises(UserInputError, match="pad_token_id") as info:
        load_hf(gpt2_dir / "config.json", task="sequence-classification", num_labels=2)
    assert "\n" not in str(info.value)
    config = _rewrite_config(gpt2_dir, tmp_path, "padded.json", pad_token_id=0)
    model = load_hf(config, task="sequence-classification", num_labels=2)
    ids, mask = token_batch(3, pad_rows=2)  # padding uses token id 0
    logits = _no_grad_logits(model, input_ids=ids, attention_mask=mask)
    length = int(mask[0].sum())
    torch.testing.assert_close(logits[0], _no_grad_logits(model, input_ids=ids[:1, :length])[0], rtol=1e-5, atol=1e-6)


def test_config_without_architectures_is_a_causal_lm(gpt2_dir, tmp_path):
    data = json.loads((gpt2_dir / "config.json").read_text())
    del data["architectures"]
    config = tmp_path / "config.json"
    config.write_text(json.dumps(data))
    assert type(load_hf(config)) is GPT2LMHeadModel


# ----------------------------------------------------------------------------- calling conventions and outputs


def test_positional_and_keyword_calls(gpt2_dir):
    model = load_hf(gpt2_dir)
    ids, _ = token_batch(4)
    ones = torch.ones_like(ids)
    with torch.no_grad():
        positional = model(ids)
        keywords = model(**{"input_ids": ids, "attention_mask": ones})
    assert isinstance(positional, transformers.utils.ModelOutput)
    assert positional.logits.shape == (4, SEQ_LEN, VOCAB)
    assert getattr(positional, "past_key_values", None) is None and model.config.use_cache is False
    torch.testing.assert_close(positional.logits, keywords.logits, rtol=0, atol=0)
    torch.testing.assert_close(_no_grad_logits(model, ids), positional.logits, rtol=0, atol=0)  # dropout off


def test_attention_mask_is_honoured(bert_dir):
    """A padded row's prediction equals the same row unpadded (absolute positions, right padding)."""
    model = load_hf(bert_dir)
    ids, mask = token_batch(2, pad_rows=1)
    length = int(mask[0].sum())
    padded = _no_grad_logits(model, input_ids=ids, attention_mask=mask)[0]
    alone = _no_grad_logits(model, input_ids=ids[:1, :length])[0]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)
    unmasked = _no_grad_logits(model, input_ids=ids)[0]
    assert not torch.allclose(padded, unmasked, rtol=1e-5, atol=1e-6)


def test_gpt2_loss_is_token_mean_cross_entropy_on_shifted_labels(gpt2_dir):
    """``labels=ids`` inside GPT-2 equals F.cross_entropy on y[:, t] = ids[:, t+1], y[:, -1] = -100, bit for bit."""
    model = load_hf(gpt2_dir)
    ids, _ = token_batch(6, seed=2)
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    y = causal_lm_targets(ids)
    assert torch.all(y[:, -1] == -100) and torch.equal(y[:, :-1], ids[:, 1:])
    expected = F.cross_entropy(out.logits.flatten(0, -2), y.flatten(), ignore_index=-100)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=0)
    naive = torch.stack([F.cross_entropy(out.logits[i, t], ids[i, t + 1], reduction="sum")
                         for i in range(6) for t in range(SEQ_LEN - 1)]).mean()
    torch.testing.assert_close(out.loss, naive, rtol=1e-6, atol=0)


def test_causal_lm_targets_mask_padding():
    ids, mask = token_batch(3, pad_rows=2)
    y = causal_lm_targets(ids, mask)
    for i in range(3):
        for t in range(SEQ_LEN):
            keep = t + 1 < SEQ_LEN and mask[i, t + 1] == 1
            assert int(y[i, t]) == (int(ids[i, t + 1]) if keep else -100)


# ----------------------------------------------------------------------------- tied weights and functional_call


def test_tied_head_is_listed_once(gpt2_dir, bert_mlm_dir):
    gpt2 = load_hf(gpt2_dir)
    names = [n for n, _ in gpt2.named_parameters()]
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    bert = load_hf(bert_mlm_dir)
    names = [n for n, _ in bert.named_parameters()]
    assert "bert.embeddings.word_embeddings.weight" in names and "cls.predictions.decoder.weight" not in names
    assert bert.cls.predictions.decoder.weight is bert.bert.embeddings.word_embeddings.weight


def test_functional_call_reaches_the_tied_head_only_with_tie_weights(gpt2_dir):
    """Perturbing ``transformer.wte.weight`` through functional_call: tie_weights=True moves the head with it (the
    model whose embedding was changed in place), tie_weights=False leaves the head at the old embedding."""
    model = load_hf(gpt2_dir)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    delta = 0.5 * torch.randn(theta["transformer.wte.weight"].shape, generator=torch.Generator().manual_seed(1))
    moved = dict(theta, **{"transformer.wte.weight": theta["transformer.wte.weight"] + delta})
    ids, _ = token_batch(3)

    tied = load_hf(gpt2_dir)
    with torch.no_grad():
        tied.transformer.wte.weight.add_(delta)  # the head is the same tensor: it moves too
    untied = GPT2LMHeadModel(GPT2Config.from_dict({**tied.config.to_dict(), "tie_word_embeddings": False})).eval()
    untied.load_state_dict({**tied.state_dict(), "lm_head.weight": model.lm_head.weight.detach().clone()})
    assert untied.lm_head.weight is not untied.transformer.wte.weight

    with torch.no_grad():
        with_tie = functional_call(model, moved, (ids,), tie_weights=True, strict=False).logits
        without_tie = functional_call(model, moved, (ids,), tie_weights=False, strict=False).logits
    torch.testing.assert_close(with_tie, _no_grad_logits(tied, ids), rtol=0, atol=0)
    torch.testing.assert_close(without_tie, _no_grad_logits(untied, ids), rtol=0, atol=0)
    assert (with_tie - without_tie).abs().max() > 1.0


def test_gradient_through_functional_call_with_tie_weights_counts_both_uses(gpt2_dir):
    model = load_hf(gpt2_dir)
    ids, _ = token_batch(4)
    reference = load_hf(gpt2_dir)
    reference(input_ids=ids, labels=ids).loss.backward()
    expected = reference.transformer.wte.weight.grad
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}

    def wte_grad(tie):
        return grad(lambda p: functional_call(model, p, (), {"input_ids": ids, "labels": ids}, tie_weights=tie,
                                              strict=False).loss)(theta)["transformer.wte.weight"]

    torch.testing.assert_close(wte_grad(True), expected, rtol=1e-5, atol=1e-7)
    assert (wte_grad(False) - expected).abs().max() > 1e-3  # without the head's share


def test_lossatlas_functional_forward_follows_the_tie(gpt2_dir):
    from lossatlas.params import functional_forward

    model = load_hf(gpt2_dir)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    theta["transformer.wte.weight"] += 0.3
    ids, mask = token_batch(2, pad_rows=1)
    tied = load_hf(gpt2_dir)
    with torch.no_grad():
        tied.transformer.wte.weight.add_(0.3)
        got = functional_forward(model, theta, {}, {"input_ids": ids, "attention_mask": mask})
    torch.testing.assert_close(got, _no_grad_logits(tied, input_ids=ids, attention_mask=mask), rtol=0, atol=0)


# ----------------------------------------------------------------------------- attention: the default is enough


def _lm_loss(model, x, y):
    """The batch contract's token-mean loss from the logits (HF's own ``.loss`` casts logits to float32)."""
    def loss(p):
        logits = functional_call(model, p, (), x, tie_weights=True, strict=False).logits
        return F.cross_entropy(logits.flatten(0, -2), y.flatten(), ignore_index=-100)
    return loss


def test_default_attention_gives_eager_hessian_vector_products_under_math_attention(gpt2_dir):
    """Why the default (sdpa) is kept: inside math_attention its HVPs, grad-of-grad and jvp(grad), equal eager's."""
    sdpa = load_hf(gpt2_dir).double()
    eager = load_hf(gpt2_dir, attn_implementation="eager").double()
    assert eager.config._attn_implementation == "eager"  # the default: sdpa since transformers 4.4x, eager in 4.40
    ids, mask = token_batch(3, pad_rows=1)
    x, y = {"input_ids": ids, "attention_mask": mask}, causal_lm_targets(ids, mask)
    theta = {n: p.detach().clone() for n, p in sdpa.named_parameters()}
    g = torch.Generator().manual_seed(0)
    v = {n: torch.randn(t.shape, generator=g, dtype=t.dtype) for n, t in theta.items()}

    def grad_of_grad(model):
        p = {n: t.clone().requires_grad_(True) for n, t in theta.items()}
        grads = torch.autograd.grad(_lm_loss(model, x, y)(p), list(p.values()), create_graph=True)
        dot = sum((gi * v[n]).sum() for gi, n in zip(grads, p, strict=True))
        return dict(zip(p, torch.autograd.grad(dot, list(p.values())), strict=True))

    expected = grad_of_grad(eager)
    with math_attention():
        by_reverse = grad_of_grad(sdpa)
        _, by_forward = jvp(grad(_lm_loss(sdpa, x, y)), (theta,), (v,))
    torch.testing.assert_close(by_reverse, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(by_forward, expected, rtol=1e-9, atol=1e-12)


def test_vmap_over_parameter_points_with_an_attention_mask(bert_dir):
    model = load_hf(bert_dir)
    ids, mask = token_batch(4, pad_rows=2)
    x = {"input_ids": ids, "attention_mask": mask}
    theta = {n: p.detach() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    stacked = {n: t + 0.05 * torch.randn((3, *t.shape), generator=g) for n, t in theta.items()}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sdpa's CPU kernel has no batching rule: vmap loops over it, with a warning
        batched = vmap(lambda p: functional_call(model, p, (), x, strict=False).logits)(stacked)
        loop = torch.stack([functional_call(model, {n: t[i] for n, t in stacked.items()}, (), x, strict=False).logits
                            for i in range(3)])
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- spec and the --model entry point


@pytest.mark.parametrize(("text", "path", "options"), [
    ("hf:runs/gpt2", "runs/gpt2", {}),
    (" hf:runs/gpt2:task=causal-lm ", "runs/gpt2", {"task": "causal-lm"}),
    ("hf:m/config.json:task=sequence-classification,num_labels=2,attn=eager", "m/config.json",
     {"task": "sequence-classification", "num_labels": 2, "attn_implementation": "eager"}),
    ("hf:C:/models/x", "C:/models/x", {}),
    ("hf:/a:b/model:num_labels=4", "/a:b/model", {"num_labels": 4}),
])
def test_parse_hf_spec(text, path, options):
    assert parse_hf_spec(text) == (path, options)


def test_canonical_spec_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert canonical_hf_spec("hf:m:task=masked-lm") == f"hf:{tmp_path / 'm'}:task=masked-lm"
    assert canonical_hf_spec("hf:m") == canonical_hf_spec(f"hf:{tmp_path}/./m")


def test_build_hf_model_checks_the_data(gpt2_dir, bert_dir):
    model = build_hf_model(f"hf:{gpt2_dir}", input_shape=(SEQ_LEN,), output_dim=VOCAB, seed=0)
    torch.testing.assert_close(model.state_dict(), tiny_gpt2(seed=0).state_dict(), rtol=0, atol=0)
    assert build_hf_model(f"hf:{bert_dir}", input_shape=(SEQ_LEN,), output_dim=3).config.num_labels == 3
    with pytest.raises(UserInputError, match="pass num_labels=4"):
        build_hf_model(f"hf:{bert_dir}/config.json", input_shape=(SEQ_LEN,), output_dim=4)
    assert build_hf_model(f"hf:{bert_dir}/config.json:num_labels=4", input_shape=(8,), output_dim=4) is not None
    with pytest.raises(UserInputError, match="at most 32 tokens"):
        build_hf_model(f"hf:{gpt2_dir}", input_shape=(33,), output_dim=VOCAB)
    with pytest.raises(UserInputError, match="64 output classes .* the data has 65"):
        build_hf_model(f"hf:{gpt2_dir}", input_shape=(SEQ_LEN,), output_dim=VOCAB + 1)


# ----------------------------------------------------------------------------- every error is one line


def _rewrite_config(directory, tmp_path, name, **changes):
    data = json.loads((directory / "config.json").read_text())
    data.update(changes)
    out = tmp_path / name
    out.write_text(json.dumps(data))
    return out


def _error_cases(gpt2_dir, bert_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_weights = tmp_path / "no-weights"
    write_config_only(gpt2_dir, no_weights)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    return [
        (lambda: load_hf(tmp_path / "missing"), "neither a model directory"),
        (lambda: load_hf(tmp_path / "missing.json"), "does not exist"),
        (lambda: load_hf(empty), "has no config.json"),
        (lambda: load_hf(no_weights), "pass hf:.*config.json to start from random weights"),
        (lambda: load_hf(no_weights / "config.json", task="image-generation"), "unknown task"),
        (lambda: load_hf(gpt2_dir, task="masked-lm"), "no masked-lm head for model type 'gpt2'"),
        (lambda: load_hf(_rewrite_config(gpt2_dir, tmp_path, "a.json", architectures=["NoSuchModelForCausalLM"])),
         "'NoSuchModelForCausalLM'.*not a model class"),
        (lambda: load_hf(_rewrite_config(gpt2_dir, tmp_path, "b.json", model_type="no-such-type")),
         "cannot be read by transformers"),
        (lambda: load_hf(_rewrite_config(gpt2_dir, tmp_path, "c.json", architectures=["GPT2Model"])),
         "bare model without an output head"),
        (lambda: load_hf(broken), "cannot be read by transformers"),
        (lambda: load_hf(gpt2_dir, num_labels=2), "num_labels applies to a classification head"),
        (lambda: load_hf(bert_dir, num_labels=2), "classifier for 3 labels, not num_labels=2"),
        (lambda: load_hf(gpt2_dir, num_labels=0), "positive integer"),
        (lambda: load_hf(gpt2_dir, attn_implementation="flash_attention_2"), "attn=sdpa or attn=eager"),
        (lambda: load_hf(_rewrite_config(gpt2_dir, tmp_path, "d.json", n_head=5)), "cannot build GPT2LMHeadModel"),
        (lambda: parse_hf_spec("zoo:mlp"), "not an hf: spec"),
        (lambda: parse_hf_spec("hf:"), "names no path"),
        (lambda: parse_hf_spec("hf:m:task=causal-lm,seed=3"), "unknown option 'seed'"),
        (lambda: parse_hf_spec("hf:m:num_labels=two"), "positive integer"),
        (lambda: parse_hf_spec("hf:m:num_labels=2,num_labels=3"), "given twice"),
        (lambda: parse_hf_spec("hf:m:task=causal-lm,=3"), "not key=value"),
        (lambda: parse_hf_spec("hf:m:task=chat"), "unknown task"),
    ]


def test_every_error_is_one_line(gpt2_dir, bert_dir, tmp_path):
    for call, pattern in _error_cases(gpt2_dir, bert_dir, tmp_path):
        with pytest.raises(UserInputError, match=pattern) as info:
            call()
        assert "\n" not in str(info.value), str(info.value)
        assert info.value.__cause__ is None


def test_transformers_missing_is_one_line(gpt2_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(UserInputError, match=r"pip install -e '\.\[hf\]'") as info:
        load_hf(gpt2_dir)
    assert "\n" not in str(info.value)


def test_weights_not_fitting_their_config_are_one_line(gpt2_dir, tmp_path):
    """A checkpoint whose config was edited afterwards (width 32 saved, 16 claimed)."""
    moved = tmp_path / "edited"
    moved.mkdir()
    (moved / "model.safetensors").write_bytes((gpt2_dir / "model.safetensors").read_bytes())
    _rewrite_config(gpt2_dir, moved, "config.json", n_embd=16)
    with pytest.raises(UserInputError, match="cannot be loaded into GPT2LMHeadModel") as info:
        load_hf(moved)
    assert "\n" not in str(info.value)


def test_bert_config_is_not_a_gpt2(tmp_path):
    """A sanity check of the fixtures: the classifier's config names its own class."""
    path = write_tiny_bert(tmp_path / "b", num_labels=2)
    assert json.loads((path / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    assert BertConfig.from_json_file(str(path / "config.json")).num_labels == 2
