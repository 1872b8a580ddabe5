"""MAT attention: mixing abstract tokens (Vo, PhD thesis 2023, chapter 4, section 4.3.1, eq. 4.1-4.5).

Non-overlapping ``w x w`` windows (Swin's window attention) exchange information through one
abstract token per window. Per image, with ``N = H*W`` tokens of width ``d``, ``h`` heads of
``d_h = d / h`` channels, ``n = w*w`` tokens per window and ``N_w = N / n`` windows:

1. Token merging: the tokens are partitioned into windows and an abstract token is put in front
   of each window's ``n`` tokens (``X^A``: ``N_w`` sequences of ``n + 1`` tokens).
2. Token abstraction (eq. 4.1-4.2): window MHSA over each merged window: one ``qkv`` projection
   (``W^Q, W^K, W^V``, shared by image and abstract tokens, ``d -> 3d``), Swin's relative position
   bias between image tokens, ``softmax(Q K^T / sqrt(d_h)) V`` per head. The outputs are unmerged
   into the image tokens ``X'`` and the learned abstract tokens ``A'`` (``N_w x d``).
3. Mixing abstract tokens (eq. 4.3-4.4): MHSA over the ``N_w`` abstract tokens with its own
   ``W_A^Q, W_A^K, W_A^V`` (``d -> 3d``) and output projection (``d -> d``): ``Ã'``.
4. Token fusion (eq. 4.5): cross-attention with the image tokens' queries ``Q_I = W^Q X`` (the
   queries step 2 computed) over keys and values ``Ã' -> 2d`` (``kv``) of the mixed abstract
   tokens; added to ``X'``; one output projection ``W^O`` (``d -> d``) over the image tokens.

Decisions where the thesis is silent or ambiguous (checked against tables 4.2, 4.3 and 4.9 with
MAT-2, C = 32: stage 3 is 6 blocks of d = 128 on 14x14, stage 4 6 blocks of d = 256 on 7x7,
so ``sum(d^2)`` over the MAT blocks is 491,520):

* What is new against window attention. MAT-2 minus its window-attention ablation is
  10.767M - 7.802M = 2.965M = 6.03 x 491,520 parameters, but only 0.007 GFLOPs: the new
  parameters, ``6 d^2``, act on the few abstract tokens, none on the image tokens. Hence the
  mixing MHSA (``4 d^2``: ``W_A^{Q,K,V}`` and its output projection) and the fusion's key and
  value projections (``2 d^2``); the fusion's queries are the window queries ``W^Q X`` (eq. 4.5
  writes the same ``W^Q``) and its output joins ``X'`` before the window's output projection.
  Reading eq. 4.5 literally (``W^K, W^V`` of eq. 4.2 reused as well) gives ``4 d^2``: MAT-2 at
  9.78M, 9% short; a separate query or output projection over the image tokens would cost
  ``N d^2`` FLOPs per block (about 0.04 GFLOPs for MAT-2), against the 0.007 measured.
* The abstract token. The thesis has ``N_w`` of them and lets ``N_w`` follow the image size
  ("the number of abstract tokens N_w is changed according to the image size"). One learnable
  ``d``-vector per MAT layer is copied into every window (token merging), so there are ``N_w``
  abstract tokens at any resolution and the parameters do not depend on it; each copy becomes its
  window's summary in token abstraction. Table 4.2 agrees: MAT in stage 1 (56x56, 64 windows of
  7x7) adds 22k parameters over 2 blocks of d = 32, i.e. 11k a block, which is
  ``10 d^2 + 12 d + 169 h`` = 10,962 with one token (``d``) and 13k with 64 distinct ones
  (``64 d``); stage 2 likewise (42.5k a block; 42,468 against 43,428).
* Relative position bias (``rpb``, default on; Swin's table of ``(2w-1)^2 x h``) between the
  image tokens of a window; pairs with the abstract token get no bias (it has no position).
* ``qkv_bias`` covers ``qkv``, ``W_A^{Q,K,V}`` and ``kv``; output projections always have a bias.
  Softmax scale ``d_h ** -0.5`` everywhere. No residual around the mixing MHSA (eq. 4.3 writes
  ``Ã' = MHSA(A')``), no dropout.
* Window geometry as ``window(...)``: where the grid is no larger than ``w`` in a dimension the
  window shrinks to it (stage 4 at 224x224 is one 7x7 window: one abstract token), otherwise
  ``w`` must divide the grid (no padding). A plain token grid is required (no class token).

Cost per image (fvcore convention; the partition, concatenation and split are free)::

    (N + N_w) * d * 3d                     (qkv over image and abstract tokens)
  + N_w * h * (n + 1)^2 * 2 d_h            (window attention products)
  + N_w * d * 3d + h * N_w^2 * 2 d_h + N_w * d^2   (mixing MHSA)
  + N_w * d * 2d                           (kv of the mixed tokens)
  + h * N * N_w * 2 d_h                    (fusion cross-attention products)
  + N * d^2                                (output projection)

Parameters: ``10 d^2 + 10 d`` (with the biases) ``+ d`` (abstract token) ``+ (2w-1)^2 h`` (bias table).

The fusion products make the cost quadratic in the grid for a fixed window (the thesis calls it
linear): 4.15x the FLOPs for 4x the tokens from 14x14 to 28x28, 4.6x from 28x28 to 56x56.

Not reached: every row of tables 4.2, 4.3 and 4.9 with attention (MAT or window) in stage 4 has
about ``65 d`` parameters and 2-4 MFLOPs more per stage-4 block than this reading (MAT-2: 17.2k
and 3.0M per block, 103k and 18M in all), while the differences between rows for stages 1-3
agree to the rounding; no layer the thesis describes accounts for it (see ``specs/mat_2.yaml``).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import cost as C
from ...cost import TensorShape
from ...layers.windows import (
    add_position_bias,
    bias_table_params,
    merge,
    partition,
    relative_bias,
    window_divides,
    window_geometry,
)
from .. import MIXERS, Example, Mixer, ShapeProblem, Size, plain_grid
from .attention import MultiHeadAttention, check_heads, mhsa_cost


class MixingAbstractTokens(nn.Module):
    """MAT attention over ``(B, H*W, C)`` tokens of a fixed grid (see the module docstring)."""

    def __init__(self, dim: int, heads: int, grid: tuple, window: tuple, qkv_bias: bool = True,
                 position_bias: bool = True):
        super().__init__()
        self.grid, self.window, self.heads = grid, window, heads
        self.windows = (grid[0] // window[0]) * (grid[1] // window[1])
        self.abstract_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.abstract_token, std=0.02)
        add_position_bias(self, window, heads, position_bias)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)  # W^Q, W^K, W^V (eq. 4.2, 4.5)
        self.mix = MultiHeadAttention(dim, heads, qkv_bias)  # eq. 4.3-4.4
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)  # keys and values of the mixed tokens (eq. 4.5)
        self.proj = nn.Linear(dim, dim)

    def attn_bias(self) -> torch.Tensor | None:
        """``(1, heads, n + 1, n + 1)``: the relative position bias between image tokens, 0 with
        the abstract token (first)."""
        if self.relative_position_bias_table is None:
            return None
        return F.pad(relative_bias(self), (1, 0, 1, 0)).unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        H, W = self.grid
        h, nw = self.heads, self.windows
        n, dh = N // nw, D // h
        # token merging: one abstract token in front of each window
        windows = partition(x.view(B, H, W, D), self.window)  # B*nw, n, D
        merged = torch.cat([self.abstract_token.expand(B * nw, 1, D), windows], dim=1)
        # token abstraction (eq. 4.1-4.2)
        q, k, v = self.qkv(merged).reshape(B * nw, n + 1, 3, h, dh).permute(2, 0, 3, 1, 4).unbind(0)
        local = F.scaled_dot_product_attention(q, k, v, attn_mask=self.attn_bias())  # B*nw, h, n+1, dh
        abstract = local[:, :, 0].reshape(B, nw, D)  # A'
        # mixing abstract tokens (eq. 4.3-4.4)
        mixed = self.mix(abstract)  # Ã'
        # token fusion (eq. 4.5): image queries over the mixed tokens' keys and values
        k_a, v_a = self.kv(mixed).reshape(B, nw, 2, h, dh).permute(2, 0, 3, 1, 4).unbind(0)
        queries = q[:, :, 1:].reshape(B, nw, h, n, dh).transpose(1, 2).reshape(B, h, nw * n, dh)
        fused = F.scaled_dot_product_attention(queries, k_a, v_a)  # B, h, nw*n, dh
        fused = fused.reshape(B, h, nw, n, dh).permute(0, 2, 3, 1, 4).reshape(B * nw, n, D)
        out = self.proj(local[:, :, 1:].transpose(1, 2).reshape(B * nw, n, D) + fused)
        return merge(out, self.window, H, W).reshape(B, N, D)


@MIXERS.register
class MixingAbstractTokensSpec(Mixer):
    """``mat(size=7, heads=8, rpb=true, qkv_bias=true)``: window attention whose windows exchange
    information through their abstract tokens, mixed globally (O(N) but for the fusion products,
    ``N N_w = N^2 / w^2``)."""

    kind: Literal["mat"] = "mat"
    size: Size = 7
    heads: Size
    rpb: bool = True
    qkv_bias: bool = True

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4)", "stages": [{"depth": 2, "width": 16, "mixer": "mat(size=3, heads=2)"}]},
                       ("3x24x24", "3x24x36", "3x36x36"), ("input", "3x16x16"), ("stages", 0, "mixer"))

    def geometry(self, shape: TensorShape) -> tuple[int, int]:
        return window_geometry(self.size, shape.height, shape.width, False)[0]

    def check(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        problems = check_heads(self.heads, shape.channels)
        problems += plain_grid(shape, "MAT attention", where) + window_divides(self.size, self.geometry(shape), shape, where)
        return problems

    def parts(self, shape: TensorShape) -> dict[str, C.Cost]:
        """The cost of each part (see the module docstring); ``cost`` is their sum."""
        wh, ww = self.geometry(shape)
        d, h, n = shape.channels, self.heads, wh * ww
        nw, tokens, dh = shape.grid // n, shape.grid, d // h
        table = bias_table_params((wh, ww), h, self.rpb)
        return {
            "abstract_token": C.Cost(d + table, 0),
            "qkv": C.linear(tokens + nw, d, 3 * d, self.qkv_bias),
            "abstraction": C.attention(nw * h, n + 1, n + 1, dh, dh),
            "mixing": mhsa_cost(1, nw, d, h, self.qkv_bias),
            "kv": C.linear(nw, d, 2 * d, self.qkv_bias),
            "fusion": C.attention(h, tokens, nw, dh, dh),
            "proj": C.linear(tokens, d, d),
        }

    def cost(self, shape: TensorShape, index: int) -> C.Cost:
        return C.total(self.parts(shape).values())

    def build(self, shape: TensorShape, index: int) -> nn.Module:
        return MixingAbstractTokens(shape.channels, self.heads, (shape.height, shape.width), self.geometry(shape),
                                    self.qkv_bias, self.rpb)

    def describe(self, shape: TensorShape, index: int) -> str:
        wh, ww = self.geometry(shape)
        return f"mat({wh}x{ww}, {shape.grid // (wh * ww)} tokens, heads={self.heads})"
