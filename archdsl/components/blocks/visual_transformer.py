"""Visual Transformer modules (Wu et al. 2020, "Visual Transformers: Token-based Image
Representation and Processing for Computer Vision", sections 3-4, table 11, appendix C) as a
stage kind: ``block: visual_transformer``.

Each block is one VT module over a ``C x H x W`` feature map ``X`` (``HW`` pixels of ``C =
width`` channels) and ``L = tokens`` visual tokens of ``CT = token_width`` channels:

1. Tokenizer, one of (``tokenizer``, one kind per module):
   * ``filter`` (eq. 1): ``T = SOFTMAX_HW(X W_A)^T X``, ``W_A`` a ``C x L`` matrix of learned filters;
   * ``recurrent`` (eq. 2): ``W_R = T_in W_{T->R}`` from the previous module's tokens ``T_in``
     (``W_{T->R}``: ``CT x C``), then ``T = SOFTMAX_HW(X W_R^T)^T X``;
   * ``clustering`` (appendix C, eq. 6, listing 1): ``W_K = KMEANS(X)``, then
     ``T = SOFTMAX_HW(X W_K)^T X``. The pixels and the centroids are normalised to unit vectors,
     the centroids start from the map average-pooled to ``L`` cells and ``kmeans_iters`` Lloyd
     iterations refine them. No parameters.
   The spatial softmax is taken as written (no temperature). When ``C != CT`` the ``L`` pooled
   tokens are lifted to ``CT`` channels by a linear ``C -> CT`` map; this equals a pointwise
   convolution of ``X`` before the pooling (the softmax weights of a token sum to 1), at ``L``
   rows instead of ``HW``.
2. Transformer (eq. 3-4): ``T' = T + SOFTMAX_L((T K)(T Q)^T) T``, ``T_out = T' + ReLU(T' F_1) F_2``.
3. Projector (eq. 5): ``X_out = X + SOFTMAX_L((X W_Q)(T W_K)^T) T``; when ``CT != C`` the
   values are ``T W_V`` (``CT -> C``), so that they can be added to the map.

Table 11's VT-ResNets use a filter-based tokenizer in the first module and recurrent ones after
(section 5.1): the default, or ``tokenizer: [filter, recurrent]`` (a list shorter than the stage
repeats its last kind; ``tokenizer: filter`` is table 4's "w/o RT", ``[clustering, recurrent]``
table 3's clustering-based VT). The classifier reads the last module's tokens (section 4: "we
output 16 visual tokens to the classification head, which applies an average pooling over the
tokens"):
with ``output: tokens`` (default) the last block outputs ``L`` tokens, an ``NLC`` shape of
``CT`` channels over a ``1 x L`` grid, so a ``pool: avg`` head is the mean over the tokens, and
that module has no projector (nothing would read its map). ``output: map`` makes the last
module project and output the feature map. ``projector: false`` drops every projector (table 7).
Between modules the blocks pass ``(map, tokens)``.

Decisions where the paper is silent or its equations do not give its figures (parameter and
FLOP arithmetic per module at 224x224, on the 14x14 map of ResNet's stage 4, ``L = 16``,
``CT = 1024``; params in M, FLOPs in multiply-adds):

* Multi-head, block-diagonal key and query maps (``heads``, default 8). Read literally, ``K``,
  ``Q`` (eq. 3) and ``W_Q`` (eq. 5) are dense ``CT x CT`` and ``C x C`` matrices: for VT-R50
  (``C = 1024``) 2.10M parameters (``K``, ``Q``) and 1.05M parameters + 205M FLOPs (``W_Q`` at
  every pixel) per module, VT-R50 28.46M / 4.013G against table 8's 21.4M / 3.412G (+33%,
  +18%). With ``heads = h`` the tokens and the map are split into ``h`` channel groups and head
  ``i`` attends with its own ``K_i``, ``Q_i``, ``W_Q,i`` over its own group (grouped 1x1
  convolutions, ``CT^2 / h`` and ``C^2 / h`` parameters); ``heads = 1`` is the literal reading.
  ``W_K``, ``W_V``, ``W_{T->R}``, ``F_1`` and ``F_2`` act on the ``L`` tokens only and stay
  dense. Params of VT-R18 / R34 / R50 / R101 against tables 2 and 8 (FLOPs in brackets):
  h = 4: +1.5 / +0.7 / +3.6 / -0.8% (+0.9 / +0.6 / +6.4 / +3.1%);
  h = 8: -3.2 / -3.2 / -1.3 / -3.3% (-0.0 / -0.2 / +4.5 / +2.2%);
  h = 16: -5.6 / -5.2 / -3.8 / -4.6% (-0.5 / -0.6 / +3.6 / +1.8%): only h = 8 keeps all four
  within 5%. The two key-query products (eq. 3, 5) are scaled by ``1 / sqrt(channels per
  head)``, as in the standard transformer the paper adopts.
* No biases and no normalisation layers: the equations have none.
* The last module has no projector when the stage outputs tokens: its map would be read by
  nothing and its parameters would get no gradient. Table 7 (VT-R18 11.7M with projectors, 9.4M
  without: 2.3M, two projectors of 1.15M) suggests the paper's counts include that unused
  projector (VT-R18 here: 1.07M per projector; with ``output: map``, which keeps it, VT-R18 has
  11.89M parameters and 1.594 GFLOPs). The ablations, VT-R18 here against the paper: clustering
  tokenizer 11.31M / 1.578G (table 3: 11.6M / 1.579G), no recurrent tokenizer 10.80M / 1.560G
  (table 4: 11.1M / 1.586G), no projector 10.24M / 1.542G (table 7: 9.4M / 1.498G, two projectors
  fewer against one here).
* ``C`` is the stage's ``width`` and the modules keep it. Table 11 gives VT-R18/R34 ``C = 512``
  (section 4 says 256); stage 4 of ResNet-18/34 outputs 256 channels, so the specs bring them to
  512 with a 1x1 convolution (``downsample: conv(kernel=1, stride=1)``) and the modules run on
  the 14x14 map. With ``C = 256`` VT-R18 would have 9.85M parameters (-16% of 11.7M); a 3x3
  stride-2 convolution (ResNet's own downsampling, modules on 7x7) 12.37M (+5.7%).
* Clustering: ``kmeans_iters`` defaults to 3 (listing 1 leaves ``niter`` open). The ``L`` seed
  cells are the factor pair of ``L`` closest to square (4x4 for 16), its longer side along the
  map's longer side. A cluster left without pixels keeps its centroid. Listing 1's division by
  the cluster size is dropped: the centroid is normalised right after, which undoes it.

Cost per module (fvcore convention: matmuls, convolutions and linears count their
multiply-adds; softmax, norms, argmax, one-hot and where count 0)::

    tokenizer    filter      L*C params;  2*HW*L*C                 (logits, pooling)
                 recurrent   CT*C params; L*CT*C + 2*HW*L*C
                 clustering  HW*C (seed pooling) + kmeans_iters * 2*HW*C*L + 2*HW*L*C
    lift         C*CT params, L*C*CT                                (only if C != CT)
    transformer  2*CT^2/h + 2*CT^2 params; L*(2*CT^2/h + 2*CT^2) + 2*L^2*CT
    projector    C^2/h + CT*C (+ CT*C for W_V if C != CT) params;
                 HW*C^2/h + L*CT*C (+ L*CT*C) + 2*HW*L*C
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BeforeValidator, Field
from timm.layers import DropPath

from ... import cost as C
from ...cost import TensorShape
from .. import (
    STAGES,
    Channels,
    Example,
    ShapeProblem,
    Size,
    as_list,
    divisors,
)
from .base import StageSpec

Tokenizer = Literal["filter", "recurrent", "clustering"]



def seed_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The ``rows x cols`` cells the clustering tokenizer pools the map to for its initial
    centroids: the factor pair of ``tokens`` closest to square, longer side along the longer side
    of the map."""
    short = max(d for d in divisors(tokens) if d * d <= tokens)
    return (short, tokens // short) if height <= width else (tokens // short, short)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` map -> ``(B, 1, HW, C)``: one attention "head" over the pixels."""
    return x.flatten(2).transpose(1, 2)[:, None]


def _pool(filters: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``SOFTMAX_HW(X W)^T X`` for ``L`` filters ``(B, L, C)``: a weighted average of the pixels
    per filter, the softmax taken over the pixels (eq. 1, 2, 6)."""
    pixels = _pixels(x)
    return F.scaled_dot_product_attention(filters[:, None], pixels, pixels, scale=1.0)[:, 0]


class FilterTokenizer(nn.Module):
    """Eq. 1: ``L`` learned filters ``W_A`` group the pixels."""

    def __init__(self, dim: int, tokens: int):
        super().__init__()
        self.filters = nn.Parameter(torch.randn(tokens, dim) * dim ** -0.5)  # W_A^T

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        return _pool(self.filters.expand(x.shape[0], -1, -1), x)


class RecurrentTokenizer(nn.Module):
    """Eq. 2: the previous module's tokens give the filters, ``W_R = T_in W_{T->R}``."""

    def __init__(self, dim: int, token_dim: int):
        super().__init__()
        self.token_to_filters = nn.Linear(token_dim, dim, bias=False)  # W_{T->R}

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        return _pool(self.token_to_filters(previous), x)


class ClusteringTokenizer(nn.Module):
    """Appendix C, eq. 6: the filters are k-means centroids of the unit-normalised pixels
    (listing 1), seeded by the map average-pooled to ``grid`` cells."""

    def __init__(self, grid: tuple[int, int], iters: int):
        super().__init__()
        self.grid, self.iters = grid, iters

    def centroids(self, x: torch.Tensor) -> torch.Tensor:
        """Lloyd's algorithm on the unit sphere: ``(B, L, C)`` unit centroids."""
        centroids = F.normalize(F.adaptive_avg_pool2d(x, self.grid).flatten(2).transpose(1, 2), dim=-1)
        pixels = F.normalize(x.flatten(2).transpose(1, 2), dim=-1)  # B, HW, C
        for _ in range(self.iters):
            # between unit vectors the nearest centroid is the most similar one
            nearest = torch.matmul(pixels, centroids.transpose(1, 2)).argmax(dim=-1)  # B, HW
            members = F.one_hot(nearest, centroids.shape[1]).to(pixels.dtype)  # B, HW, L
            sums = torch.matmul(members.transpose(1, 2), pixels)  # B, L, C
            occupied = members.sum(dim=1)[..., None] > 0
            centroids = torch.where(occupied, F.normalize(sums, dim=-1), centroids)
        return centroids

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        return _pool(self.centroids(x), x)


class TokenTransformer(nn.Module):
    """Eq. 3-4 over ``(B, L, CT)`` tokens, ``heads`` channel groups each with its own ``K_i``,
    ``Q_i`` (a grouped 1x1 convolution) attending over its own channels."""

    def __init__(self, dim: int, heads: int, drop_path: float):
        super().__init__()
        self.heads = heads
        self.k = nn.Conv1d(dim, dim, 1, groups=heads, bias=False)  # K: rows of the L x L weights
        self.q = nn.Conv1d(dim, dim, 1, groups=heads, bias=False)  # Q: their columns
        self.fc1 = nn.Linear(dim, dim, bias=False)  # F_1
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(dim, dim, bias=False)  # F_2
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, L, D = tokens.shape
        h = self.heads
        channels = tokens.transpose(1, 2)  # B, D, L
        k = self.k(channels).reshape(B, h, D // h, L).transpose(-2, -1)
        q = self.q(channels).reshape(B, h, D // h, L).transpose(-2, -1)
        v = tokens.reshape(B, L, h, D // h).transpose(1, 2)
        mixed = F.scaled_dot_product_attention(k, q, v).transpose(1, 2).reshape(B, L, D)
        tokens = tokens + self.drop_path(mixed)
        return tokens + self.drop_path(self.fc2(self.act(self.fc1(tokens))))


class Projector(nn.Module):
    """Eq. 5: every pixel queries the tokens (``heads`` groups, ``W_Q`` block-diagonal) and adds
    what it reads to the map."""

    def __init__(self, dim: int, token_dim: int, heads: int, drop_path: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Conv2d(dim, dim, 1, groups=heads, bias=False)  # W_Q
        self.key = nn.Linear(token_dim, dim, bias=False)  # W_K
        self.value = nn.Linear(token_dim, dim, bias=False) if token_dim != dim else nn.Identity()  # W_V or T
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        L, h = tokens.shape[1], self.heads
        q = self.query(x).reshape(B, h, C // h, H * W).transpose(-2, -1)
        k = self.key(tokens).reshape(B, L, h, C // h).transpose(1, 2)
        v = self.value(tokens).reshape(B, L, h, C // h).transpose(1, 2)
        read = F.scaled_dot_product_attention(q, k, v)  # B, h, HW, C/h
        return x + self.drop_path(read.transpose(-2, -1).reshape(B, C, H, W))


class VisualTransformerModule(nn.Module):
    """Tokenizer, (lift,) transformer, projector. Takes a map, or ``(map, tokens)`` from the
    previous module; returns ``(map, tokens)`` for the next module, or the stage's ``output``:
    the tokens ``(B, L, CT)`` or the map."""

    def __init__(self, tokenizer: nn.Module, lift: nn.Module, transformer: TokenTransformer,
                 projector: Projector | None, output: str):
        super().__init__()
        self.tokenizer, self.lift, self.transformer, self.projector = tokenizer, lift, transformer, projector
        self.output = output

    def forward(self, x):
        x, previous = x if isinstance(x, tuple) else (x, None)
        tokens = self.transformer(self.lift(self.tokenizer(x, previous)))
        if self.projector is not None:
            x = self.projector(x, tokens)
        if self.output == "tokens":
            return tokens
        return x if self.output == "map" else (x, tokens)


@STAGES.register
class VisualTransformerStageSpec(StageSpec):
    """``block: visual_transformer``: VT modules (Wu et al. 2020) over a ``width``-channel map
    with ``tokens`` visual tokens of ``token_width`` channels, ``heads`` key/query groups, a
    ``tokenizer`` kind per module (``filter``, ``recurrent``, ``clustering``; a shorter list
    repeats its last kind), ``projector``s, and the stage's ``output`` (the last module's
    ``tokens``, or its projected ``map``)."""

    layout: ClassVar[str] = "NCHW"
    block: Literal["visual_transformer"]
    tokens: Annotated[int, Field(ge=1, le=4096)] = 16
    token_width: Channels = 1024
    heads: Size = 8
    tokenizer: Annotated[list[Tokenizer], BeforeValidator(as_list), Field(min_length=1, max_length=64)] | None = None
    kmeans_iters: Annotated[int, Field(ge=1, le=100)] = 3
    projector: bool = True
    output: Literal["tokens", "map"] = "tokens"

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "conv(widths=[16], strides=[2])", "stages": [
            {"depth": 2, "width": 16, "block": "visual_transformer", "tokens": 9, "token_width": 16, "heads": 2,
             "tokenizer": ["clustering", "recurrent"]}]},
            ("3x16x16", "3x16x24", "3x18x18"), ("input", "3x4x4"), ("stages", 0, "tokenizer"))

    def outputs_map(self) -> bool:
        return self.output == "map"

    def tokenizers(self) -> list[str]:
        """As given; by default filter-based, then recurrent (section 5.1)."""
        return self.tokenizer or ["filter", "recurrent"][:self.depth]

    def tokenizer_at(self, index: int) -> str:
        kinds = self.tokenizers()
        return kinds[min(index, len(kinds) - 1)]

    def projects(self, index: int) -> bool:
        """Whether module ``index`` has a projector: not when it is the last and the stage outputs
        its tokens."""
        return self.projector and not (index == self.depth - 1 and self.output == "tokens")

    def role(self, index: int) -> str:
        return self.output if index == self.depth - 1 else "next"

    def check_blocks(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        problems = []
        if shape.channels != self.width:
            problems.append(ShapeProblem(("width",), f"{where} receives {shape.channels} channels but its VT modules "
                                         f"keep the width {self.width}", f"set width: {shape.channels}, or add "
                                         "downsample: conv(kernel=1, stride=1) to change it"))
        for what, channels in (("width", self.width), ("token_width", self.token_width)):
            if channels % self.heads:
                common = [d for d in divisors(self.width) if self.token_width % d == 0]
                problems.append(ShapeProblem(("heads",), f"{self.heads} heads do not divide the {what} {channels}",
                                             f"valid heads (dividing width and token_width): "
                                             f"{', '.join(map(str, common))}"))
                break
        problems += self._check_tokenizers(shape, where)
        if self.output == "map" and not self.projector:
            problems.append(ShapeProblem(("output",), "output: map needs projectors: without them the VT modules "
                                         "leave the feature map unchanged",
                                         "use output: tokens, or projector: true"))
        if self.peg is not None:
            problems.append(ShapeProblem(("peg",), "VT modules pass a map and tokens from block to block; a PEG "
                                         "cannot sit between them", "remove peg from this stage"))
        return problems

    def _check_tokenizers(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        kinds = self.tokenizers()

        def at(k: int) -> tuple:
            """The path of module ``k``'s kind (the last one given stands for the later modules)."""
            return ("tokenizer",) if len(kinds) == 1 else ("tokenizer", min(k, len(kinds) - 1))

        problems = []
        if len(kinds) > self.depth:
            problems.append(ShapeProblem(("tokenizer",), f"{len(kinds)} tokenizers for {self.depth} VT modules",
                                         f"list at most {self.depth}, one per module"))
        if kinds[0] == "recurrent":
            problems.append(ShapeProblem(at(0), "the first VT module has no previous tokens for a recurrent "
                                         "tokenizer (eq. 2)", "use filter or clustering for the first module"))
        if not self.projector:
            unread = [j for j in range(self.depth - 1) if self.tokenizer_at(j + 1) != "recurrent"]
            if unread:
                j = unread[0]
                problems.append(ShapeProblem(at(j + 1), f"without projectors, VT module {j + 1}'s tokens are read "
                                             f"only by a recurrent tokenizer in module {j + 2}, which has a "
                                             f"{self.tokenizer_at(j + 1)} one: module {j + 1} would be unused",
                                             "use recurrent tokenizers after the first module, or projector: true"))
        if "clustering" in kinds:
            rows, cols = seed_grid(self.tokens, shape.height, shape.width)
            if rows > shape.height or cols > shape.width:
                problems.append(ShapeProblem(at(kinds.index("clustering")),
                                             f"the clustering tokenizer seeds its {self.tokens} centroids from "
                                             f"{rows}x{cols} cells of the map, more than the "
                                             f"{shape.height}x{shape.width} map of {where} has",
                                             "use fewer tokens or a larger input"))
        return problems

    def block_shapes(self, shape: TensorShape) -> list[TensorShape]:
        fmap = shape.with_(channels=self.width)
        last = TensorShape("NLC", self.token_width, 1, self.tokens) if self.output == "tokens" else fmap
        return [fmap] * (self.depth - 1) + [last]

    def parts(self, index: int, shape: TensorShape) -> dict[str, C.Cost]:
        """The cost of each part of module ``index`` (see the module docstring); ``block_cost``
        is their sum."""
        hw, c, ct, n, h = shape.grid, self.width, self.token_width, self.tokens, self.heads
        pool = C.attention(1, n, hw, c, c)  # logits X W and the weighted average of the pixels
        kind = self.tokenizer_at(index)
        if kind == "filter":
            tokenizer = C.Cost(n * c, 0) + pool
        elif kind == "recurrent":
            tokenizer = C.linear(n, ct, c, bias=False) + pool
        else:
            tokenizer = C.mean(hw * c) + C.Cost(0, self.kmeans_iters * 2 * hw * c * n) + pool
        parts = {"tokenizer": tokenizer,
                 "lift": C.linear(n, c, ct, bias=False) if c != ct else C.ZERO,
                 "transformer": (C.conv2d(1, n, ct, ct, 1, groups=h, bias=False) * 2
                                 + C.attention(h, n, n, ct // h, ct // h)
                                 + C.linear(n, ct, ct, bias=False) * 2)}
        if self.projects(index):
            values = C.linear(n, ct, c, bias=False) if c != ct else C.ZERO
            parts["projector"] = (C.conv2d(shape.height, shape.width, c, c, 1, groups=h, bias=False)
                                  + C.linear(n, ct, c, bias=False) + values
                                  + C.attention(h, hw, n, c // h, c // h))
        return parts

    def block_cost(self, index: int, shape: TensorShape) -> C.Cost:
        return C.total(self.parts(index, shape).values())

    def build_block(self, index: int, shape: TensorShape, drop_path: float) -> nn.Module:
        c, ct, kind = self.width, self.token_width, self.tokenizer_at(index)
        if kind == "filter":
            tokenizer = FilterTokenizer(c, self.tokens)
        elif kind == "recurrent":
            tokenizer = RecurrentTokenizer(c, ct)
        else:
            tokenizer = ClusteringTokenizer(seed_grid(self.tokens, shape.height, shape.width), self.kmeans_iters)
        lift = nn.Linear(c, ct, bias=False) if c != ct else nn.Identity()
        projector = Projector(c, ct, self.heads, drop_path) if self.projects(index) else None
        return VisualTransformerModule(tokenizer, lift, TokenTransformer(ct, self.heads, drop_path), projector,
                                       self.role(index))

    def describe(self, index: int, shape: TensorShape) -> str:
        label = f"vt({self.tokenizer_at(index)}, {self.tokens}x{self.token_width}, heads={self.heads}"
        label += ", projector)" if self.projects(index) else ")"
        return label + (" -> tokens" if self.role(index) == "tokens" else "")
