"""The GPT zoo model (Radford et al. 2019) and the token datasets (Power et al. 2022 modular addition, text):
forward against a hand-written reference, causality, parameter count, vmap over points, masked per-token loss,
splits, label shift and one-line errors."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from lossatlas.errors import UserInputError
from lossatlas.models.transformer import GPT, gpt
from lossatlas.tokens import modadd_arrays, text_arrays


def build(seed: int = 0, **keys: object) -> torch.nn.Module:
    options: dict[str, object] = {"input_shape": (8,), "output_dim": 11, "layers": 2, "width": 16, "heads": 4}
    options.update(keys)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return gpt(**options).eval()  # type: ignore[arg-type]


def ids(b: int, t: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def reference_forward(p: dict[str, torch.Tensor], x: torch.Tensor, layers: int, heads: int) -> torch.Tensor:
    """GPT-2 forward from the state dict with explicit masked softmax attention and erf GELU."""

    def ln(h: torch.Tensor, name: str) -> torch.Tensor:
        mu = h.mean(-1, keepdim=True)
        var = ((h - mu) ** 2).mean(-1, keepdim=True)
        return (h - mu) / torch.sqrt(var + 1e-5) * p[name + ".weight"] + p[name + ".bias"]

    def lin(h: torch.Tensor, name: str) -> torch.Tensor:
        return h @ p[name + ".weight"].T + p[name + ".bias"]

    b, t = x.shape
    h = p["token_embedding.weight"][x] + p["position_embedding.weight"][:t]
    w = h.shape[-1]
    d = w // heads
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    for i in range(layers):
        pre = f"blocks.{i}."
        q, k, v = lin(ln(h, pre + "ln1"), pre + "attn.qkv").chunk(3, dim=-1)
        out = torch.zeros_like(h)
        for head in range(heads):
            s = slice(head * d, (head + 1) * d)
            scores = (q[..., s] @ k[..., s].transpose(1, 2)) / math.sqrt(d)
            weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
            out[..., s] = weights @ v[..., s]
        h = h + lin(out, pre + "attn.proj")
        z = lin(ln(h, pre + "ln2"), pre + "mlp.fc")
        h = h + lin(0.5 * z * (1 + torch.erf(z / math.sqrt(2))), pre + "mlp.proj")
    return ln(h, "ln_f") @ p["head.weight"].T


def test_forward_matches_reference_and_shapes() -> None:
    net = build(seed=1, layers=3).double()
    with torch.no_grad():  # random LayerNorm affine so that the test sees them
        for name, value in net.named_parameters():
            if "ln" in name:
                value.copy_(torch.randn_like(value))
    x = ids(5, 6, 11)  # T' = 6 < T = 8
    out = net(x)
    assert out.shape == (5, 6, 11) and out.dtype == torch.float64
    p = {k: v.detach() for k, v in net.state_dict().items()}
    torch.testing.assert_close(out, reference_forward(p, x, layers=3, heads=4), rtol=1e-10, atol=1e-12)


def test_causal() -> None:
    net = build(seed=2)
    x = ids(3, 8, 11, seed=1)
    for t in range(7):
        changed = x.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1 + torch.arange(7 - t)) % 11
        a, b = net(x), net(changed)
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
        assert (a[:, t + 1] - b[:, t + 1]).abs().max() > 1e-4  # later positions do see the change


def test_parameter_names_count_and_init() -> None:
    v, t, w, layers, m = 13, 7, 24, 3, 2
    net = build(seed=0, input_shape=(t,), output_dim=v, layers=layers, width=w, heads=3, mlp=m)
    per_block = 2 * 2 * w + (3 * w * w + 3 * w) + (w * w + w) + (m * w * w + m * w) + (m * w * w + w)
    expected = v * w + t * w + layers * per_block + 2 * w + w * v
    assert sum(p.numel() for p in net.parameters()) == expected
    names = dict(net.named_parameters())
    for name in ("token_embedding.weight", "position_embedding.weight", "blocks.2.attn.qkv.weight",
                 "blocks.0.attn.proj.bias", "blocks.1.mlp.fc.weight", "blocks.1.mlp.proj.weight", "ln_f.bias",
                 "head.weight"):
        assert name in names
    assert "head.bias" not in names and not list(net.buffers())
    assert names["head.weight"].data_ptr() != names["token_embedding.weight"].data_ptr()  # untied
    big = build(seed=0, input_shape=(64,), output_dim=500, layers=4, width=128, heads=4)
    named = {k: v.detach() for k, v in big.named_parameters()}
    assert abs(float(named["token_embedding.weight"].std()) - 0.02) < 1e-3
    assert abs(float(named["blocks.3.mlp.proj.weight"].std()) - 0.02 / math.sqrt(8)) < 3e-4
    assert float(named["blocks.0.attn.qkv.bias"].abs().max()) == 0.0
    assert float(named["blocks.1.ln2.weight"].min()) == 1.0


def test_builder_defaults_are_power_et_al() -> None:
    net = gpt(input_shape=(3,), output_dim=98)
    assert isinstance(net, GPT) and len(net.blocks) == 2
    assert net.get_submodule("blocks.0.attn").heads == 4
    assert dict(net.named_parameters())["blocks.1.mlp.fc.weight"].shape == (512, 128)


@pytest.mark.parametrize("kernel", [None, SDPBackend.MATH])
def test_vmap_over_stacked_points_equals_loop(kernel: SDPBackend | None) -> None:
    nets = [build(seed=s) for s in range(3)]
    points = [{k: v.detach() for k, v in n.named_parameters()} for n in nets]
    stacked = {k: torch.stack([pt[k] for pt in points]) for k in points[0]}
    x = ids(4, 8, 11, seed=5)
    base = nets[0]
    with contextlib.nullcontext() if kernel is None else sdpa_kernel(kernel):
        batched = vmap(lambda theta: functional_call(base, theta, (x,)))(stacked)
        looped = torch.stack([functional_call(base, pt, (x,)) for pt in points])
    assert batched.shape == (3, 4, 8, 11)
    assert (looped[0] - looped[1]).abs().max() > 1e-3  # the points differ
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-6)


def test_hvp_through_attention_with_math_kernel() -> None:
    net = build(seed=3, layers=1, width=8, heads=2).double()
    x, y = ids(2, 8, 11, seed=1), ids(2, 8, 11, seed=2)
    theta = {k: v.detach() for k, v in net.named_parameters()}
    name = "blocks.0.attn.qkv.weight"

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        out = functional_call(net, {**theta, name: w}, (x,))
        return F.cross_entropy(out.flatten(0, -2), y.flatten())

    v = torch.randn(theta[name].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with sdpa_kernel(SDPBackend.MATH):  # the CPU fused kernel has no double backward
        hv = jvp(grad(loss_of), (theta[name],), (v,))[1]
        dense = torch.autograd.functional.hessian(loss_of, theta[name])
    torch.testing.assert_close(hv, (dense.reshape(v.numel(), v.numel()) @ v.flatten()).reshape(v.shape))


def test_modadd_loss_is_masked_mean_over_answer_tokens() -> None:
    arrays = modadd_arrays(p=7, frac=0.5, seed=0)
    v = int(arrays["num_classes"])
    net = build(seed=4, input_shape=(3,), output_dim=v)
    x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    assert x.dtype == torch.int64 and y.dtype == torch.int64 and x.shape == y.shape == (round(0.5 * 49), 3)
    logits = net(x).detach()
    loss = F.cross_entropy(logits.flatten(0, -2), y.flatten(), ignore_index=-100)
    logp = torch.log_softmax(logits.double(), dim=-1)
    picked = [float(-logp[i, t, y[i, t]]) for i in range(len(y)) for t in range(3) if int(y[i, t]) != -100]
    assert len(picked) == len(y)  # one scored token per example: the answer
    torch.testing.assert_close(loss.double(), torch.tensor(sum(picked) / len(picked), dtype=torch.float64))


def test_modadd_split_is_deterministic_and_complete() -> None:
    p = 11
    a1, a2, other = modadd_arrays(p, 0.3, seed=3), modadd_arrays(p, 0.3, seed=3), modadd_arrays(p, 0.3, seed=4)
    for key in ("x", "y", "x_test", "y_test"):
        np.testing.assert_array_equal(a1[key], a2[key])
    assert not np.array_equal(a1["x"], other["x"])
    assert len(a1["x"]) == round(0.3 * p * p) == 36 and len(a1["x_test"]) == p * p - 36
    assert int(a1["num_classes"]) == p + 1
    x, y = np.concatenate([a1["x"], a1["x_test"]]), np.concatenate([a1["y"], a1["y_test"]])
    assert x.dtype == y.dtype == np.int64
    assert sorted(map(tuple, x[:, :2].tolist())) == [(a, b) for a in range(p) for b in range(p)]
    assert (x[:, 2] == p).all() and (y[:, :2] == -100).all()
    assert all(int(r[2]) == (int(q[0]) + int(q[1])) % p for q, r in zip(x, y, strict=True))
    order = np.random.default_rng(3).permutation(p * p)
    np.testing.assert_array_equal(a1["x"][:, 0] * p + a1["x"][:, 1], order[:36])


def test_text_char_vocab_round_trip_and_label_shift(tmp_path: Path) -> None:
    text = "héllo wörld, the quick brown fox jumps over the lazy dog.\n" * 3 + "tail"
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    arrays = text_arrays(str(path), block=10, test_frac=0.2)
    vocab = sorted(set(text))
    assert int(arrays["num_classes"]) == len(vocab)
    n = len(text) // 10
    n_test = math.ceil(0.2 * n)
    x = np.concatenate([arrays["x"], arrays["x_test"]])
    y = np.concatenate([arrays["y"], arrays["y_test"]])
    assert x.shape == y.shape == (n, 10) and x.dtype == y.dtype == np.int64 and len(arrays["x_test"]) == n_test
    assert "".join(vocab[i] for i in x.flatten()) == text[: n * 10]
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    assert (y[:, -1] == -100).all()


def test_text_keeps_one_train_block(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("abcdefgh", encoding="utf-8")
    arrays = text_arrays(str(path), block=4, test_frac=0.9)
    assert len(arrays["x"]) == 1 and len(arrays["x_test"]) == 1


def one_line_error(call: object) -> str:
    with pytest.raises(UserInputError) as info:
        call()  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_errors_are_one_line(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("abcde", encoding="utf-8")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("héllo".encode("latin-1") * 10)
    assert "divisible by heads" in one_line_error(lambda: gpt(input_shape=(8,), output_dim=5, width=10, heads=4))
    assert "(T,)" in one_line_error(lambda: gpt(input_shape=(1, 8), output_dim=5))
    assert "layers > 0" in one_line_error(lambda: gpt(input_shape=(8,), output_dim=5, layers=0))
    assert "dropout" in one_line_error(lambda: gpt(input_shape=(8,), output_dim=5, dropout=1.0))
    net = build()
    assert "context length 8" in one_line_error(lambda: net(ids(1, 9, 11)))
    assert "integer token ids" in one_line_error(lambda: net(torch.zeros(1, 4)))
    assert "p >= 2" in one_line_error(lambda: modadd_arrays(p=1))
    assert "0 < frac < 1" in one_line_error(lambda: modadd_arrays(frac=1.0))
    assert "split empty" in one_line_error(lambda: modadd_arrays(p=2, frac=0.1))
    assert "split empty" in one_line_error(lambda: modadd_arrays(p=3, frac=0.95))
    assert "not found" in one_line_error(lambda: text_arrays(str(tmp_path / "missing.txt")))
    assert "fewer than 2 blocks" in one_line_error(lambda: text_arrays(str(short), block=3))
    assert "block >= 2" in one_line_error(lambda: text_arrays(str(short), block=1))
    assert "test_frac" in one_line_error(lambda: text_arrays(str(short), block=2, test_frac=0.0))
    assert "UTF-8" in one_line_error(lambda: text_arrays(str(latin), block=2))


def test_tokenizer_path_without_transformers_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("abcdefgh" * 4, encoding="utf-8")
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from lossatlas.tokens import text_arrays\n"
        f"text_arrays({str(path)!r}, block=4, tokenizer={str(tmp_path)!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1 and "UserInputError: " in result.stderr
    assert "pip install -e '.[hf]'" in result.stderr.strip().splitlines()[-1]


def test_tokenizer_path(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    words = ["the", "cat", "sat", "on", "mat", "a"]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    text = "the cat sat on the mat a cat on a mat the dog sat"
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    arrays = text_arrays(str(path), block=4, tokenizer=str(tmp_path / "tok"), test_frac=0.3)
    reference = AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    stream = reference(text, add_special_tokens=False)["input_ids"]
    assert stream == [vocab.get(w, 0) for w in text.split()]  # "dog" is [UNK]
    assert int(arrays["num_classes"]) == len(reference) == 7
    n = len(stream) // 4
    x = np.concatenate([arrays["x"], arrays["x_test"]])
    np.testing.assert_array_equal(x, np.array(stream[: n * 4]).reshape(n, 4))
    assert len(arrays["x_test"]) == math.ceil(0.3 * n)
    y = np.concatenate([arrays["y"], arrays["y_test"]])
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    assert "no tokenizer found" in one_line_error(lambda: text_arrays(str(path), block=4, tokenizer=str(tmp_path)))
    assert "directory not found" in one_line_error(
        lambda: text_arrays(str(path), block=4, tokenizer=str(tmp_path / "none"))
    )
