"""Window attention (Swin, Liu et al. 2021, sections 3.2-3.3) and IWSA (ScalableViT).

Self-attention inside non-overlapping ``size x size`` windows, with a learned relative position
bias (eq. 4) and, with ``shift=true``, every other block's windows displaced by ``size // 2``
(cyclic shift with masking, figure 4). With ``lim=true`` it is ScalableViT's interactive window
self-attention (supplementary, section A): the Local Interactive Module re-assembles the windows'
values into the full map, applies a 3x3 depth-wise convolution (with bias) and adds the result to
the attention output before the output projection, so information crosses window borders. Decisions, as in Swin and timm: where the token grid is not
larger than the window in a dimension, the window shrinks to the grid there and that dimension is
not shifted; the window must otherwise divide the grid (no padding), which ``check`` enforces.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn as nn
from pydantic import Field

from ... import cost as C
from ...cost import TensorShape
from ...layers.windows import (
    add_position_bias,
    bias_table_params,
    merge,
    partition,
    relative_bias,
    shifted_window_mask,
    window_divides,
    window_geometry,
)
from .. import MIXERS, Example, Mixer, ShapeProblem, Size, plain_grid
from .attention import MultiHeadAttention, check_heads


class WindowAttention(nn.Module):
    """(Shifted) window multi-head self-attention over ``(B, H*W, C)`` tokens of a fixed grid."""

    def __init__(self, dim: int, heads: int, grid: tuple, window: tuple, shift: tuple,
                 qkv_bias: bool = True, position_bias: bool = True, lim_kernel: int = 0):
        super().__init__()
        self.grid, self.window, self.shift, self.heads = grid, window, shift, heads
        n = window[0] * window[1]
        add_position_bias(self, window, heads, position_bias)
        self.attn = MultiHeadAttention(dim, heads, qkv_bias)
        self.lim = nn.Conv2d(dim, dim, lim_kernel, padding=lim_kernel // 2, groups=dim) if lim_kernel else None
        if any(shift):
            self.register_buffer("mask", shifted_window_mask(*grid, window, shift), persistent=False)
        else:
            self.mask = None
        self.tokens_per_window = n

    def local_term(self, values: torch.Tensor) -> torch.Tensor:
        """LIM: the windows' values as one map, a depth-wise convolution, back to windows."""
        H, W = self.grid
        full = merge(values, self.window, H, W).permute(0, 3, 1, 2)
        return partition(self.lim(full).permute(0, 2, 3, 1), self.window)

    def attn_bias(self, batch: int) -> torch.Tensor | None:
        n = self.tokens_per_window
        bias = None
        if self.relative_position_bias_table is not None:
            bias = relative_bias(self).unsqueeze(0)  # 1, heads, N, N
        if self.mask is not None:
            windows = self.mask.shape[0]
            mask = self.mask.view(1, windows, 1, n, n)
            bias = mask if bias is None else bias.view(1, 1, self.heads, n, n) + mask
            bias = bias.expand(batch, windows, self.heads, n, n).reshape(-1, self.heads, n, n)
        return bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        H, W = self.grid
        x = x.view(B, H, W, C)
        if any(self.shift):
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        x = self.attn(partition(x, self.window), self.attn_bias(B), self.local_term if self.lim is not None else None)
        x = merge(x, self.window, H, W)
        if any(self.shift):
            x = torch.roll(x, shifts=self.shift, dims=(1, 2))
        return x.reshape(B, N, C)


@MIXERS.register
class WindowAttentionSpec(Mixer):
    """``window(size=7, heads=3, shift=true, rpb=true, lim=false)``: attention within windows (O(N)).

    ``shift=true`` shifts the windows of every odd-indexed block of the stage (Swin's W-MSA /
    SW-MSA alternation); ``rpb`` is the relative position bias; ``lim=true`` adds ScalableViT's
    Local Interactive Module (IWSA) with a ``lim_kernel`` x ``lim_kernel`` depth-wise convolution.
    """

    kind: Literal["window"] = "window"
    size: Size = 7
    heads: Size
    shift: bool = False
    rpb: bool = True
    qkv_bias: bool = True
    lim: bool = False
    lim_kernel: Annotated[int, Field(ge=1, le=31)] = 3

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4)", "stages": [{"depth": 2, "width": 16, "mixer": "window(size=3, heads=2, shift=true)"}]},
                       ("3x24x24", "3x24x36", "3x36x36"), ("input", "3x16x16"), ("stages", 0, "mixer"))

    def geometry(self, shape: TensorShape, index: int) -> tuple[tuple, tuple]:
        return window_geometry(self.size, shape.height, shape.width, self.shift and index % 2 == 1)

    def check(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        return (check_heads(self.heads, shape.channels)
                + plain_grid(shape, "window attention", where, "use attention(...) or drop cls_token")
                + window_divides(self.size, self.geometry(shape, 0)[0], shape, where))

    def cost(self, shape: TensorShape, index: int) -> C.Cost:
        (wh, ww), _ = self.geometry(shape, index)
        n, windows = wh * ww, shape.grid // (wh * ww)
        d = shape.channels
        table = bias_table_params((wh, ww), self.heads, self.rpb)
        lim = C.conv2d(shape.height, shape.width, d, d, self.lim_kernel, groups=d) if self.lim else C.ZERO
        return (C.Cost(table, 0) + C.linear(shape.grid, d, 3 * d, self.qkv_bias) + lim
                + C.attention(windows * self.heads, n, n, d // self.heads, d // self.heads) + C.linear(shape.grid, d, d))

    def build(self, shape: TensorShape, index: int) -> nn.Module:
        window, shift = self.geometry(shape, index)
        return WindowAttention(shape.channels, self.heads, (shape.height, shape.width), window, shift,
                               self.qkv_bias, self.rpb, self.lim_kernel if self.lim else 0)

    def graft_window(self) -> int:
        return self.size

    def describe(self, shape: TensorShape, index: int) -> str:
        (wh, ww), shift = self.geometry(shape, index)
        kind = "iwsa" if self.lim else "window"
        return f"{kind}({wh}x{ww}{', shifted' if any(shift) else ''}, heads={self.heads})"
