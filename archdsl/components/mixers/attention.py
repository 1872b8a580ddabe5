"""Global multi-head self-attention (ViT, Dosovitskiy et al. 2021, eq. 1-4; DeiT).

All tokens, class token included, attend to all tokens through
``F.scaled_dot_product_attention``. Parameter layout as timm's ``Attention``: one ``qkv``
projection, one output ``proj``.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import cost as C
from ...cost import TensorShape
from .. import (
    MIXERS,
    SMALL_GRIDS,
    Example,
    Mixer,
    ShapeProblem,
    Size,
    divisors,
)


def check_heads(heads: int, channels: int) -> list[ShapeProblem]:
    """Heads must divide the width: every head gets ``channels / heads`` channels."""
    if channels % heads:
        return [ShapeProblem(("heads",), f"{heads} heads do not divide the width {channels}",
                             f"valid heads: {', '.join(map(str, divisors(channels)))}")]
    return []


class MultiHeadAttention(nn.Module):
    """Self-attention over ``(B, N, C)`` tokens; ``attn_bias`` (broadcastable to
    ``(B, heads, N, N)``) is added to the logits when given."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None,
                value_term: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``value_term`` maps the values ``(B, N, C)`` to a term added to the attention output
        before the output projection (ScalableViT's LIM)."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        # heads to channels through an explicit contiguous copy (values unchanged): the CPU kernel's
        # output is laid out (B, N, heads, d) already, so a plain reshape traces to a view, which the
        # ONNX exporter's sdpa decomposition (laid out (B, heads, N, d)) cannot replay
        out = out.transpose(1, 2).clone(memory_format=torch.contiguous_format).view(B, N, C)
        if value_term is not None:
            out = out + value_term(v.transpose(1, 2).reshape(B, N, C))
        return self.proj(out)


def mhsa_cost(batch: int, tokens: int, dim: int, heads: int, qkv_bias: bool) -> C.Cost:
    """qkv and output projections over ``batch * tokens`` rows plus the attention products."""
    rows = batch * tokens
    return (C.linear(rows, dim, 3 * dim, qkv_bias) + C.attention(batch * heads, tokens, tokens,
            dim // heads, dim // heads) + C.linear(rows, dim, dim))


@MIXERS.register
class GlobalAttentionSpec(Mixer):
    """``attention(heads=3, qkv_bias=true)``: every token attends to every token (O(N^2))."""

    kind: Literal["attention"] = "attention"
    heads: Size
    qkv_bias: bool = True

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4)", "stages": [{"depth": 2, "width": 16, "mixer": "attention(heads=2)"}]},
                       SMALL_GRIDS, ("stages.0.mixer", "attention(heads=3)"), ("stages", 0, "mixer"))

    def check(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        return check_heads(self.heads, shape.channels)

    def cost(self, shape: TensorShape, index: int) -> C.Cost:
        return mhsa_cost(1, shape.tokens, shape.channels, self.heads, self.qkv_bias)

    def build(self, shape: TensorShape, index: int) -> nn.Module:
        return MultiHeadAttention(shape.channels, self.heads, self.qkv_bias)

    def describe(self, shape: TensorShape, index: int) -> str:
        return f"attention(heads={self.heads})"

    def graft_window(self) -> int:
        """GrafT on a global-attention backbone (DeiT): L-MSA windows of 7 at the coarser scales, as on Swin."""
        return 7
