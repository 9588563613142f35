"""A small decoder-only transformer (GPT) for token tasks: modular arithmetic, character- or BPE-level text.

Radford et al. 2019 ("Language Models are Unsupervised Multitask Learners", GPT-2): pre-LayerNorm blocks
``h <- h + attn(ln1(h))``, ``h <- h + mlp(ln2(h))``, a final LayerNorm, weights drawn from N(0, 0.02²) with the
residual output projections scaled by 1/√(2·layers). Power et al. 2022 ("Grokking: Generalization beyond
overfitting on small algorithmic datasets") train a decoder of this shape with 2 layers, width 128 and 4 heads
(the zoo defaults) on binary-operation tables such as a + b mod p.

Shapes: input int64 token ids (B, T') with T' <= T, the context length (``input_shape = (T,)``); output
logits (B, T', V) with V = ``output_dim``, the vocabulary size (the input vocabulary is the same V). Attention
is causal: the logits at position t depend on tokens 0..t only. It is written with
``F.scaled_dot_product_attention(..., is_causal=True)``; the engine switches to the math kernel where it needs
second derivatives. The model has no buffers and no in-place state, so ``torch.func.functional_call`` and
``torch.func.vmap`` over stacked parameter dicts work.

Parameter names: ``token_embedding.weight`` (V, W), ``position_embedding.weight`` (T, W),
``blocks.{i}.ln1.{weight,bias}``, ``blocks.{i}.attn.qkv.{weight,bias}`` (3W, W), ``blocks.{i}.attn.proj.*``
(W, W), ``blocks.{i}.ln2.*``, ``blocks.{i}.mlp.fc.*`` (mlp·W, W), ``blocks.{i}.mlp.proj.*`` (W, mlp·W),
``ln_f.{weight,bias}``, ``head.weight`` (V, W; untied from the token embedding, no bias, as GPT-2's lm_head).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lossatlas.errors import UserInputError
from lossatlas.models.resnet import require_positive


def _dropout(p: float) -> nn.Module:
    """Dropout only when p > 0, so that a dropout-free model has no random op (vmap needs none)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: (B, T', W) -> (B, T', W), ``heads`` heads of width W / heads."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.resid_drop = _dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        b, t, w = h.shape
        q, k, v = (
            z.reshape(b, t, self.heads, w // self.heads).transpose(1, 2) for z in self.qkv(h).split(w, dim=-1)
        )
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, heads, T', W/heads)
        return self.resid_drop(self.proj(out.transpose(1, 2).reshape(b, t, w)))


class FeedForward(nn.Module):
    """``proj(gelu(fc(h)))``: W -> hidden -> W, exact (erf) GELU."""

    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, width)
        self.drop = _dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.drop(self.proj(self.act(self.fc(h))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``h + attn(ln1(h))``, then ``h + mlp(ln2(h))``."""

    def __init__(self, width: int, heads: int, mlp: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = FeedForward(width, mlp * width, dropout)

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.attn(self.ln1(h))
        return h + self.mlp(self.ln2(h))


class GPT(nn.Module):
    """Decoder-only transformer: int64 ids (B, T') -> logits (B, T', vocab), T' <= context.

    Token + learned positional embedding, ``layers`` pre-LN blocks, final LayerNorm, linear head. GPT-2
    initialisation (Radford et al. 2019): every Linear / Embedding weight ~ N(0, 0.02²), biases 0, LayerNorm
    weight 1 and bias 0, and the two residual projections of each block (``attn.proj``, ``mlp.proj``)
    ~ N(0, (0.02 / √(2·layers))²).
    """

    def __init__(
        self, *, vocab: int, context: int, layers: int, width: int, heads: int, mlp: int, dropout: float
    ) -> None:
        super().__init__()
        self.context = context
        self.token_embedding = nn.Embedding(vocab, width)
        self.position_embedding = nn.Embedding(context, width)
        self.drop = _dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, mlp, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation (see the class docstring)."""
        residual_std = 0.02 / math.sqrt(2 * len(self.blocks))
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                std = residual_std if name.endswith(("attn.proj", "mlp.proj")) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_floating_point() or x.is_complex():
            raise UserInputError(
                f"zoo model 'gpt' takes integer token ids, got {x.dtype} inputs; use a token dataset (int64 x)"
            )
        length = x.shape[-1]
        if length > self.context:
            raise UserInputError(
                f"zoo model 'gpt' has context length {self.context} but got sequences of length {length}; "
                f"build it with input_shape=({length},) or shorten the sequences"
            )
        positions = torch.arange(length, device=x.device)
        h = self.drop(self.token_embedding(x) + self.position_embedding(positions))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))


def gpt(
    *,
    input_shape: tuple[int, ...],
    output_dim: int,
    layers: int = 2,
    width: int = 128,
    heads: int = 4,
    mlp: int = 4,
    dropout: float = 0.0,
) -> nn.Module:
    """Decoder-only transformer (GPT-2 style, Radford et al. 2019) on token ids; see :class:`GPT`.

    ``input_shape = (T,)`` is the context length, ``output_dim`` the vocabulary size V (input and output).
    The defaults (2 layers, width 128, 4 heads, MLP 4·width) are the decoder of Power et al. 2022 (grokking).
    ``mlp`` is the hidden width of the MLP as a multiple of ``width``; ``dropout`` in [0, 1) acts on the
    embeddings, the attention probabilities and both residual branches (training mode only).
    """
    if len(input_shape) != 1 or not input_shape[0] > 0:
        raise UserInputError(
            f"zoo model 'gpt' needs token inputs of shape (T,) (the context length), got input_shape="
            f"{tuple(input_shape)}; use a token dataset such as modadd or text"
        )
    require_positive(output_dim, "output_dim (the vocabulary size)", "gpt")
    for key, value in (("layers", layers), ("width", width), ("heads", heads), ("mlp", mlp)):
        require_positive(value, key, "gpt")
    if width % heads != 0:
        raise UserInputError(
            f"zoo model 'gpt' needs width divisible by heads, got width={width}, heads={heads}; "
            f"pick e.g. width={heads * max(1, round(width / heads))}"
        )
    if not 0.0 <= dropout < 1.0:
        raise UserInputError(f"zoo model 'gpt' needs 0 <= dropout < 1, got dropout={dropout}; e.g. dropout=0.1")
    return GPT(
        vocab=int(output_dim),
        context=int(input_shape[0]),
        layers=layers,
        width=width,
        heads=heads,
        mlp=mlp,
        dropout=float(dropout),
    )
