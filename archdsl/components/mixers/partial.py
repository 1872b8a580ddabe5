"""Partial attention (PartialFormer; Vo, PhD thesis 2023, chapter 5, section 5.3, eq. 5.4-5.10).

The tokens are split by a context score into a small foreground set, which gets full multi-head
self-attention with its heads mixed (MMSA), and a large background set, which one query squeezes
(single-query attention, SQA); a learnable abstract token joins the foreground and, having
attended to it, is that single query, so the two sets exchange information. Per image, with
``N`` tokens of width ``d``, ``h`` heads of ``d_h = d / h`` channels:

1. Token separation (eq. 5.4): ``c = Mean(X)`` over channels, tokens sorted by ``c`` descending;
   the first ``N_F`` are the foreground ``X_F``, the rest the background ``X_B`` (``N_B = N - N_F``).
2. Shared projections (eq. 5.8): one ``qkv`` linear (``d -> 3d``) over all ``N`` tokens and the
   abstract token.
3. MMSA (eq. 5.5): over the ``N_F + 1`` tokens (abstract token first), logits
   ``Q_F K_F^T / sqrt(d_h)``; HeadMLP mixes them across heads at every (query, key) pair:
   ``Linear(h, e*h)``, softmax over the keys, ``Linear(e*h, h)``; the mixed weights ``A_F``
   aggregate ``V_F``; heads concatenated; output projection ``W_O`` (``d -> d``).
4. SQA (eq. 5.6-5.7): ``Y_B = softmax(Q_A K_B^T / sqrt(d_h)) V_B`` per head (``1 x d`` with heads
   concatenated); ChannelMLP ``Linear(d, d/r)``, LayerNorm, ReLU, ``Linear(d/r, d)``;
   ``O_B = X_B + Y'_B`` broadcast over the background tokens.
5. The output rows (``O_F``, ``O_B``) are scattered back to the input's token order.

Decisions where the thesis is silent or ambiguous (checked against table 5.1, see
``specs/partialformer_b*.yaml``):

* ``fg`` is a token count (an integer, default 49) or a ratio of the grid (a number between 0 and
  1). A count is the reading of section 5.3.3 (partial attention is linear in ``N``, MMSA
  quadratic only in ``N_F``); a fixed count of 49 fits the FLOPs of B0-B4 together, no single
  ratio does.
* The background is never empty (section 5.3.2 splits ``N = N_F + N_B`` with ``N_F << N_B``):
  ``N_F = min(fg, N - 1)``, or ``max(1, min(N - 1, floor(fg * N)))`` for a ratio, so the grid needs
  at least 2 tokens. At 224x224 PartialFormer's stage 4 is a 7x7 grid: 48 foreground tokens and
  one background token. Every parameter is used at every input size, and the parameters do not
  depend on it.
* The score is the channel mean of the mixer's input (the block's normalised tokens), as eq. 5.4
  reads; ties are broken by token order (a stable sort).
* One learnable abstract token (``d`` values) per module, i.e. per block.
* Queries, keys and values of all tokens come from the one shared ``qkv`` projection (eq. 5.8
  counts ``3 N d^2``); the background queries are computed and unused.
* HeadMLP: expansion ``e`` (default 4) with ``int(e * h)`` hidden heads, both layers with bias;
  the softmax is taken over the keys of each of the ``e*h`` hidden maps, and the second layer's
  output is used as attention weights as is (eq. 5.5).
* The single query ``Q_A`` is the abstract token's row of ``A_F V_F`` in each head -- "a weighted
  sum of all foreground tokens" (section "The role of single query") -- used without a further
  projection (eq. 5.10 counts none). ``W_O`` projects only the ``N_F`` foreground rows (eq. 5.9
  counts ``d^2 N_F``); the background rows are ``O_B`` (eq. 5.7), not projected.
* ChannelMLP: reduction ``r`` (default 4; must divide ``d``), both layers with bias, LayerNorm
  (eps 1e-5) over the ``d/r`` hidden channels. ``X_B`` in eq. 5.7 is the mixer's input.
* ``qkv_bias`` (default true) covers the shared projection; ``W_O`` always has a bias. No dropout.
* A plain token grid is required (no class token).
* CPVT's positional encoding (figure 5.3) is not part of the mixer: in the thesis it belongs to
  the partial Transformer block; see the stage option ``peg``.

Cost per image (fvcore convention; the sort, gathers and scatter are index ops and count 0):
``m = N_F + 1``, ``r_d = d / r``, ``E = int(e * h)``::

    N*d                                   (channel mean, archdsl's mean handle)
  + (N + 1) * d * 3d                      (shared qkv)
  + 2 * m^2 * d                           (Q_F K_F^T and A_F V_F)
  + 2 * m^2 * h * E                       (HeadMLP)
  + N_F * d^2                             (W_O)
  + 2 * N_B * d                         (SQA products)
  + 2 * d * r_d + 5 * r_d                 (ChannelMLP on one token)

Parameters: ``d`` (abstract token) ``+ 3d^2 + 3d`` (qkv, with bias) ``+ 2hE + E + h`` (HeadMLP)
``+ d^2 + d`` (W_O) ``+ 2 d r_d + 3 r_d + d`` (ChannelMLP with its LayerNorm).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BeforeValidator

from ... import cost as C
from ...cost import TensorShape
from .. import (
    MIXERS,
    SMALL_GRIDS,
    Example,
    Mixer,
    Ratio,
    ShapeProblem,
    Size,
    divisors,
    plain_grid,
)
from .attention import check_heads


def _foreground(value: Any) -> Any:
    """``fg``: a whole count >= 1 or a ratio strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("fg is a foreground token count (a whole number >= 1) or a ratio of the grid "
                         "(a number between 0 and 1)")
    if isinstance(value, float) and not 0 < value < 1:
        raise ValueError("a foreground ratio is between 0 and 1 (exclusive); a count is a whole number, e.g. 49")
    if isinstance(value, int) and not 1 <= value <= 1_000_000:
        raise ValueError("a foreground count is at least 1 (and at most 1000000)")
    return value


Foreground = Annotated[int | float, BeforeValidator(_foreground)]


def foreground_tokens(fg: int | float, tokens: int) -> int:
    """``N_F``: the count or the ratio of the grid, leaving at least one background token and
    taking at least one foreground token (``tokens >= 2``)."""
    count = fg if isinstance(fg, int) else int(fg * tokens)
    return max(1, min(tokens - 1, count))


class ChannelMLP(nn.Module):
    """``Linear(d, d/r)``, LayerNorm, ReLU, ``Linear(d/r, d)`` (eq. 5.7)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.norm(self.fc1(x))))


class HeadMLP(nn.Module):
    """Mixes attention logits ``(B, h, Nq, Nk)`` across heads: ``Linear(h, E)``, softmax over
    the keys, ``Linear(E, h)`` (eq. 5.5)."""

    def __init__(self, heads: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(heads, hidden)
        self.fc2 = nn.Linear(hidden, heads)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        x = self.fc1(logits.permute(0, 2, 3, 1))  # B, Nq, Nk, E
        return self.fc2(x.softmax(dim=2)).permute(0, 3, 1, 2)


class PartialAttention(nn.Module):
    """Partial attention over ``(B, N, C)`` tokens with ``fg_tokens`` foreground tokens (see the
    module docstring)."""

    def __init__(self, dim: int, heads: int, tokens: int, fg_tokens: int, head_hidden: int, channel_hidden: int,
                 qkv_bias: bool = True):
        super().__init__()
        self.dim, self.heads, self.tokens, self.fg_tokens = dim, heads, tokens, fg_tokens
        self.scale = (dim // heads) ** -0.5
        self.abstract_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.abstract_token, std=0.02)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.head_mlp = HeadMLP(heads, head_hidden)
        self.proj = nn.Linear(dim, dim)
        self.channel_mlp = ChannelMLP(dim, channel_hidden)

    def separate(self, x: torch.Tensor) -> torch.Tensor:
        """Token indices ``(B, N)`` by context score, descending: the first ``fg_tokens`` are the
        foreground (eq. 5.4)."""
        return torch.argsort(x.mean(dim=-1), dim=1, descending=True, stable=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        h, nf = self.heads, self.fg_tokens
        order = self.separate(x)[..., None].expand(B, N, D)
        xs = torch.gather(x, 1, order)  # foreground first
        tokens = torch.cat([self.abstract_token.expand(B, 1, D), xs], dim=1)
        q, k, v = self.qkv(tokens).reshape(B, N + 1, 3, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)
        m = nf + 1  # abstract token + foreground
        # MMSA over the abstract token and the foreground, heads mixed by HeadMLP
        logits = torch.matmul(q[:, :, :m] * self.scale, k[:, :, :m].transpose(-2, -1))
        mixed = torch.matmul(self.head_mlp(logits), v[:, :, :m])  # B, h, m, d_h
        fg = self.proj(mixed[:, :, 1:].transpose(1, 2).reshape(B, nf, D))
        # SQA: the abstract token's output queries the background
        y = F.scaled_dot_product_attention(mixed[:, :, :1], k[:, :, m:], v[:, :, m:])  # B, h, 1, d_h
        bg = xs[:, nf:] + self.channel_mlp(y.transpose(1, 2).reshape(B, 1, D))
        return torch.zeros_like(x).scatter(1, order, torch.cat([fg, bg], dim=1))


@MIXERS.register
class PartialAttentionSpec(Mixer):
    """``partial(heads=2, fg=49, e=4, r=4)``: PartialFormer's partial attention (MMSA + SQA).

    MMSA (heads mixed by a HeadMLP of expansion ``e``) over an abstract token and the ``fg``
    tokens of highest channel mean (``fg``: a count, or a ratio of the grid); single-query
    attention from the abstract token over the rest, through a ChannelMLP of reduction ``r``."""

    kind: Literal["partial"] = "partial"
    heads: Size
    fg: Foreground = 49
    e: Ratio = 4.0
    r: Size = 4
    qkv_bias: bool = True

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4)", "stages": [{"depth": 2, "width": 16, "mixer": "partial(heads=2, fg=9)"}]},
                       SMALL_GRIDS, ("stem", "patch_embed(patch=4, cls_token=true)"), ("stages", 0, "mixer"))

    def head_hidden(self) -> int:
        return int(self.e * self.heads)

    def fg_tokens(self, shape: TensorShape) -> int:
        return foreground_tokens(self.fg, shape.tokens)

    def check(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        d = shape.channels
        problems = check_heads(self.heads, d)
        if shape.prefix:
            problems += plain_grid(shape, "partial attention", where)
        elif shape.grid < 2:
            problems.append(ShapeProblem((), f"partial attention needs at least 2 tokens (foreground and "
                                         f"background), but {where} has a {shape.height}x{shape.width} grid",
                                         "use a larger input or fewer downsamplings"))
        if self.head_hidden() < 1:
            problems.append(ShapeProblem(("e",), f"HeadMLP expansion {self.e:g} x {self.heads} heads leaves no "
                                         "hidden heads", f"use e >= {1 / self.heads:g}"))
        if d % self.r:
            problems.append(ShapeProblem(("r",), f"ChannelMLP reduction {self.r} does not divide the width {d} "
                                         f"of {where}", f"valid r: {', '.join(map(str, divisors(d)))}"))
        return problems

    def parts(self, shape: TensorShape) -> dict[str, C.Cost]:
        """The cost of each part (see the module docstring); ``cost`` is their sum."""
        n, d, h = shape.tokens, shape.channels, self.heads
        nf, e_hidden, r_hidden = self.fg_tokens(shape), self.head_hidden(), d // self.r
        m, nb = nf + 1, n - nf
        channel_mlp = C.linear(1, d, r_hidden) + C.layer_norm(r_hidden, r_hidden) + C.linear(1, r_hidden, d)
        return {
            "separation": C.mean(n * d),
            "abstract_token": C.Cost(d, 0),
            "qkv": C.linear(n + 1, d, 3 * d, self.qkv_bias),
            "mmsa": C.attention(h, m, m, d // h, d // h),
            "head_mlp": C.linear(m * m, h, e_hidden) + C.linear(m * m, e_hidden, h),
            "proj": C.linear(nf, d, d),
            "sqa": C.attention(h, 1, nb, d // h, d // h),
            "channel_mlp": channel_mlp,
        }

    def cost(self, shape: TensorShape, index: int) -> C.Cost:
        return C.total(self.parts(shape).values())

    def build(self, shape: TensorShape, index: int) -> nn.Module:
        return PartialAttention(shape.channels, self.heads, shape.tokens, self.fg_tokens(shape), self.head_hidden(),
                                shape.channels // self.r, self.qkv_bias)

    def describe(self, shape: TensorShape, index: int) -> str:
        return f"partial(fg={self.fg_tokens(shape)}/{shape.tokens}, heads={self.heads})"
