"""Scalable self-attention, SSA (ScalableViT, Yang et al. 2022, section 3.1).

Queries come from every token; keys and values from a reduced map. The reduction shrinks the
``H x W`` token map spatially by ``sr`` with a depth-wise convolution whose kernel and stride are
both ``sr``, scales its channels from ``C`` to ``C' = int(C * c_ratio)`` with a pointwise
convolution (both convolutions with bias), and normalises (LayerNorm over ``C'``, eps 1e-5) and
activates (exact GELU) the reduced tokens. Projections, as the official ScalableViT code lays them
out (parameters registered in this order):

* ``q``: ``C -> C'`` over all ``H*W`` tokens;
* ``k``: ``C' -> C'`` and ``v``: ``C' -> C`` over the ``(H/sr)(W/sr)`` reduced tokens;
* ``proj``: ``C -> C``, always with bias (``qkv_bias`` covers q, k and v only).

Each of the ``heads`` heads compares ``C'/heads``-channel queries and keys and mixes
``C/heads``-channel values; the softmax scale is ``(C/heads * c_ratio) ** -0.5`` (the official
code's; it equals ``(C'/heads) ** -0.5`` whenever ``C * c_ratio`` is whole).

Decisions:

* ``sr=1`` is the official code's special case: no reduction and no channel scaling, so the block
  is global multi-head attention with a ``C -> C`` query projection and one ``C -> 2C`` key-value
  projection (``kv``); ``c_ratio`` then only sets the softmax scale, as there.
* ``sr`` must divide the grid in both dimensions (no padding, no dropped border), and the
  reduction needs a plain token grid (no class token); with ``sr=1`` class tokens are allowed.
* ``C' = int(C * c_ratio)`` (floored, as the official code), at least 1; ``heads`` must divide both
  ``C`` and ``C'``.

Cost (fvcore convention, multiply-add = 1, LayerNorm 5 per element, bias and GELU free):
with ``N = H*W`` and ``M = N / sr^2``,
``N*C*C' + M*C*sr^2 + M*C*C' + 5*M*C' + M*C'*C' + M*C'*C + heads*N*M*(C'/heads + C/heads) + N*C*C``.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import cost as C
from ...cost import TensorShape
from ...layers.layout import map_to_tokens, tokens_to_map
from .. import (
    MIXERS,
    Example,
    Mixer,
    Ratio,
    ShapeProblem,
    Size,
    divisors,
    plain_grid,
)


class ScalableSelfAttention(nn.Module):
    """SSA over ``(B, prefix + H*W, C)`` tokens of a fixed ``H x W`` grid (see the module docstring)."""

    def __init__(self, dim: int, heads: int, grid: tuple, sr: int, scaled: int, scale: float,
                 qkv_bias: bool = True):
        super().__init__()
        self.heads, self.grid, self.sr, self.scaled, self.scale = heads, grid, sr, scaled, scale
        if sr > 1:
            self.q = nn.Linear(dim, scaled, bias=qkv_bias)
            self.spatial = nn.Conv2d(dim, dim, sr, stride=sr, groups=dim)  # depth-wise, kernel = stride = sr
            self.channel = nn.Conv2d(dim, scaled, 1)  # pointwise, C -> C'
            self.norm = nn.LayerNorm(scaled)
            self.act = nn.GELU()
            self.k = nn.Linear(scaled, scaled, bias=qkv_bias)
            self.v = nn.Linear(scaled, dim, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def reduced(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H*W, C)`` tokens -> ``(B, H*W/sr^2, C')`` reduced, normalised, activated tokens."""
        small = map_to_tokens(self.channel(self.spatial(tokens_to_map(x, self.grid))))
        return self.act(self.norm(small))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, Cin = x.shape
        h = self.heads
        if self.sr > 1:
            q = self.q(x).view(B, N, h, self.scaled // h).transpose(1, 2)
            r = self.reduced(x)
            k = self.k(r).view(B, -1, h, self.scaled // h).transpose(1, 2)
            v = self.v(r).view(B, -1, h, Cin // h).transpose(1, 2)
        else:
            q = self.q(x).view(B, N, h, Cin // h).transpose(1, 2)
            k, v = self.kv(x).view(B, N, 2, h, Cin // h).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, N, Cin))


@MIXERS.register
class ScalableAttentionSpec(Mixer):
    """``ssa(heads=2, sr=8, c_ratio=1.25, qkv_bias=true)``: ScalableViT's scalable self-attention;
    keys and values from the map reduced ``sr`` times per side, queries and keys ``c_ratio`` x wide."""

    kind: Literal["ssa"] = "ssa"
    heads: Size
    sr: Size = 1
    c_ratio: Ratio = 1.25
    qkv_bias: bool = True

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4)", "stages": [{"depth": 2, "width": 16, "mixer": "ssa(heads=2, sr=3)"}]},
                       ("3x24x24", "3x24x36", "3x36x36"), ("input", "3x16x16"), ("stages", 0, "mixer"))

    def scaled(self, channels: int) -> int:
        """``C'``: the width of queries and keys (the full width when ``sr=1``)."""
        return int(channels * self.c_ratio) if self.sr > 1 else channels

    def check(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        problems = []
        d, scaled = shape.channels, self.scaled(shape.channels)
        if scaled < 1:
            problems.append(ShapeProblem(("c_ratio",), f"c_ratio {self.c_ratio} scales the width {d} of {where} "
                                         f"to {scaled} channels", f"use c_ratio >= {1 / d:g}"))
        elif d % self.heads or scaled % self.heads:
            widths = f"the width {d}" + (f" or the scaled width {scaled} (= int({d} x {self.c_ratio}))"
                                         if scaled != d else "")
            valid = [h for h in divisors(d) if scaled % h == 0]
            problems.append(ShapeProblem(("heads",), f"{self.heads} heads do not divide {widths} of {where}",
                                         f"valid heads: {', '.join(map(str, valid))}"))
        if self.sr > 1:
            if shape.height % self.sr or shape.width % self.sr:
                valid = [s for s in divisors(shape.height) if shape.width % s == 0]
                problems.append(ShapeProblem(
                    ("sr",), f"reduction {self.sr} does not divide the {shape.height}x{shape.width} token grid of "
                    f"{where}", f"valid sr: {', '.join(map(str, valid))}"))
            problems += plain_grid(shape, "the spatial reduction", where, "use sr=1 or drop cls_token")
        return problems

    def cost(self, shape: TensorShape, index: int) -> C.Cost:
        d, n, h = shape.channels, shape.tokens, self.heads
        if self.sr == 1:
            return (C.linear(n, d, d, self.qkv_bias) + C.linear(n, d, 2 * d, self.qkv_bias)
                    + C.attention(h, n, n, d // h, d // h) + C.linear(n, d, d))
        scaled, sh, sw = self.scaled(d), shape.height // self.sr, shape.width // self.sr
        m = sh * sw
        return (C.linear(n, d, scaled, self.qkv_bias)
                + C.conv2d(sh, sw, d, d, self.sr, groups=d) + C.conv2d(sh, sw, d, scaled, 1)
                + C.layer_norm(m * scaled, scaled)
                + C.linear(m, scaled, scaled, self.qkv_bias) + C.linear(m, scaled, d, self.qkv_bias)
                + C.attention(h, n, m, scaled // h, d // h) + C.linear(n, d, d))

    def build(self, shape: TensorShape, index: int) -> nn.Module:
        d = shape.channels
        scale = (d / self.heads * self.c_ratio) ** -0.5
        return ScalableSelfAttention(d, self.heads, (shape.height, shape.width), self.sr, self.scaled(d), scale,
                                     self.qkv_bias)

    def describe(self, shape: TensorShape, index: int) -> str:
        if self.sr == 1:
            return f"ssa(sr=1, heads={self.heads})"
        return (f"ssa({shape.height // self.sr}x{shape.width // self.sr} kv, {self.scaled(shape.channels)} ch qk, "
                f"heads={self.heads})")
