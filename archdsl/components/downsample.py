"""Downsampling between stages."""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from .. import cost as C
from ..cost import TensorShape
from ..layers.layout import map_to_tokens, tokens_to_map
from . import (
    DOWNSAMPLES,
    SMALL_GRIDS,
    Downsample,
    Example,
    ShapeProblem,
    Size,
    nested,
    plain_grid,
)
from .norms import NormSpec
from .stems import conv_out


@DOWNSAMPLES.register
class PatchMergingSpec(Downsample):
    """``patch_merging(norm=layernorm)`` (Swin, section 3.1): concatenate each 2x2 group of tokens
    (4C channels, in Swin's order x(0,0), x(1,0), x(0,1), x(1,1)), normalise, project to the
    stage's width without bias. A feature map (NCHW) is read as its tokens first; the output is
    tokens."""

    kind: Literal["patch_merging"] = "patch_merging"
    norm: NormSpec = {"kind": "layernorm"}

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=2)", "stages": [
            {"depth": 1, "width": 16, "mixer": "attention(heads=2)"},
            {"depth": 1, "width": 32, "mixer": "attention(heads=2)", "downsample": "patch_merging"}]},
            SMALL_GRIDS, ("input", "3x18x18"), ("stages", 1, "downsample"))

    def out_shape(self, shape: TensorShape, width: int) -> TensorShape:
        return TensorShape("NLC", width, shape.height // 2, shape.width // 2)

    def check(self, shape: TensorShape, width: int, where: str) -> list[ShapeProblem]:
        problems = plain_grid(shape, "patch merging")
        if shape.height % 2 or shape.width % 2:
            problems.append(ShapeProblem((), f"patch merging halves the grid, but the {shape.height}x{shape.width} "
                                         f"grid of {where} is odd", "use an input size divisible by the total stride"))
        return problems

    def cost(self, shape: TensorShape, width: int) -> C.Cost:
        out = self.out_shape(shape, width)
        merged = out.with_(channels=4 * shape.channels)
        return self.norm.cost(merged) + C.linear(out.grid, 4 * shape.channels, width, bias=False)

    def build(self, shape: TensorShape, width: int) -> nn.Module:
        out = self.out_shape(shape, width)
        return PatchMerging((shape.height, shape.width), shape.layout == "NCHW",
                            self.norm.build(out.with_(channels=4 * shape.channels)),
                            nn.Linear(4 * shape.channels, width, bias=False))


class PatchMerging(nn.Module):
    def __init__(self, grid: tuple, from_map: bool, norm: nn.Module, reduction: nn.Linear):
        super().__init__()
        self.grid, self.from_map, self.norm, self.reduction = grid, from_map, norm, reduction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.from_map:
            x = map_to_tokens(x)
        B, _, C = x.shape
        H, W = self.grid
        x = x.view(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, -1, 4 * C)
        return self.reduction(self.norm(x))


@DOWNSAMPLES.register
class ConvDownsampleSpec(Downsample):
    """``conv(kernel=3, stride=2, padding=null, norm=null)``: a strided convolution (padding
    ``kernel // 2`` unless given; ``conv(kernel=2, stride=2, padding=0)`` is PVT's non-overlapping
    patch embedding) to the stage's width, optionally normalised; tokens in, tokens out (or maps
    in, maps out)."""

    kind: Literal["conv"] = "conv"
    kernel: Size = 3
    stride: Size = 2
    padding: Annotated[int, Field(ge=0, le=1000)] | None = None
    norm: NormSpec | None = None

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4)", "stages": [
            {"depth": 1, "width": 16, "mixer": "attention(heads=2)"},
            {"depth": 1, "width": 32, "mixer": "attention(heads=2)", "downsample": "conv(kernel=3, stride=2, norm=layernorm)"}]},
            SMALL_GRIDS, ("stem", "patch_embed(patch=4, cls_token=true)"), ("stages", 1, "downsample"))

    def pad(self) -> int:
        return self.kernel // 2 if self.padding is None else self.padding

    def out_shape(self, shape: TensorShape, width: int) -> TensorShape:
        size = [conv_out(s, self.kernel, self.stride, self.pad()) for s in (shape.height, shape.width)]
        return TensorShape(shape.layout, width, *size)

    def check(self, shape: TensorShape, width: int, where: str) -> list[ShapeProblem]:
        problems = plain_grid(shape, "a conv downsample")
        if self.norm:
            problems += nested(("norm",), self.norm.check(self.out_shape(shape, width)))
        return problems

    def cost(self, shape: TensorShape, width: int) -> C.Cost:
        out = self.out_shape(shape, width)
        cost = C.conv2d(out.height, out.width, shape.channels, width, self.kernel)
        return cost + self.norm.cost(out) if self.norm else cost

    def build(self, shape: TensorShape, width: int) -> nn.Module:
        out = self.out_shape(shape, width)
        return ConvDownsample(shape, nn.Conv2d(shape.channels, width, self.kernel, self.stride, self.pad()),
                              self.norm.build(out) if self.norm else nn.Identity())


class ConvDownsample(nn.Module):
    def __init__(self, src: TensorShape, conv: nn.Conv2d, norm: nn.Module):
        super().__init__()
        self.tokens, self.grid, self.conv, self.norm = src.layout == "NLC", (src.height, src.width), conv, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            return self.norm(map_to_tokens(self.conv(tokens_to_map(x, self.grid))))
        return self.norm(self.conv(x))


@DOWNSAMPLES.register
class StridedBlockSpec(Downsample):
    """``strided(stride=2)``: the stage's first block carries the stride (ResNet's layers 2-4)."""

    kind: Literal["strided"] = "strided"
    stride: Size = 2

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "conv(widths=[16], strides=[2])", "stages": [
            {"depth": 1, "width": 16, "block": "basic"}, {"depth": 1, "width": 32, "block": "basic", "downsample": "strided"}]},
            SMALL_GRIDS, ("stages.1", {"depth": 1, "width": 16, "mixer": "identity", "downsample": "strided"}),
            ("stages", 1, "downsample"))

    def block_stride(self) -> int:
        return self.stride

    # before the first block nothing changes: the block itself strides (the graph adds no node)
    def check(self, shape: TensorShape, width: int, where: str) -> list[ShapeProblem]:
        return []

    def out_shape(self, shape: TensorShape, width: int) -> TensorShape:
        return shape

    def cost(self, shape: TensorShape, width: int) -> C.Cost:
        return C.ZERO

    def build(self, shape: TensorShape, width: int) -> nn.Module:
        return nn.Identity()


@DOWNSAMPLES.register
class BilinearPESpec(Downsample):
    """``bilinear(kernel=3, stride=2)``: MAT's Bilinear PE (Vo 2023, thesis section 4.3.2, figure 4.3,
    table 4.12): a ``kernel x kernel`` depth-wise convolution with ``stride``, a 1x1 convolution to
    the stage's width, then bilinear sampling of that map at a regular grid of reference points
    (its pixel centres) moved by offsets predicted from it by a 1x1 convolution (2 channels, in
    output pixels, initialised to zero so sampling starts on the regular grid).

    Decisions: table 4.12 lists the layers in this order, with the depth-wise convolution at the
    input width and the 1x1 at the stage's width, so the sampling comes last and samples the
    stage-width map (sampling the input would leave the width unchanged); figure 4.3 has the
    offsets learned through the depth-wise and 1x1 convolutions, conditioned on the input, here
    by the 2-channel 1x1 offset head on their output (``2 C_out + 2`` parameters). All
    convolutions have a bias; no norm, no activation (none listed). Zero padding outside the map.
    Parameters: ``k^2 C_in + C_in + C_in C_out + C_out + 2 C_out + 2`` (MAT-2's three: 46,598; the
    pure-MLP ablation's 5.699M, table 4.9, is met with these to 100 parameters)."""

    kind: Literal["bilinear"] = "bilinear"
    kernel: Size = 3
    stride: Size = 2

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4)", "stages": [
            {"depth": 1, "width": 16, "mixer": "identity"}, {"depth": 1, "width": 32, "mixer": "identity", "downsample": "bilinear"}]},
            SMALL_GRIDS, ("stem", "patch_embed(patch=4, cls_token=true)"), ("stages", 1, "downsample"))

    def out_shape(self, shape: TensorShape, width: int) -> TensorShape:
        size = [conv_out(s, self.kernel, self.stride, self.kernel // 2) for s in (shape.height, shape.width)]
        return TensorShape(shape.layout, width, *size)

    def check(self, shape: TensorShape, width: int, where: str) -> list[ShapeProblem]:
        return plain_grid(shape, "bilinear patch embedding")

    def cost(self, shape: TensorShape, width: int) -> C.Cost:
        out = self.out_shape(shape, width)
        c = shape.channels
        return (C.conv2d(out.height, out.width, c, c, self.kernel, groups=c) + C.conv2d(out.height, out.width, c, width, 1)
                + C.conv2d(out.height, out.width, width, 2, 1) + C.grid_sample(out.numel))

    def build(self, shape: TensorShape, width: int) -> nn.Module:
        out = self.out_shape(shape, width)
        return BilinearPE(shape, width, (out.height, out.width), self.kernel, self.stride)


def reference_points(height: int, width: int) -> torch.Tensor:
    """``(1, height, width, 2)``: the pixel centres as ``grid_sample`` coordinates ``(x, y)`` in
    [-1, 1] (``align_corners=False``)."""
    ys = (2 * torch.arange(height) + 1) / height - 1
    xs = (2 * torch.arange(width) + 1) / width - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0)


class BilinearPE(nn.Module):
    def __init__(self, src: TensorShape, width: int, out_grid: tuple, kernel: int, stride: int):
        super().__init__()
        c = src.channels
        self.tokens, self.grid = src.layout == "NLC", (src.height, src.width)
        self.dwconv = nn.Conv2d(c, c, kernel, stride, kernel // 2, groups=c)
        self.pwconv = nn.Conv2d(c, width, 1)
        self.offset = nn.Conv2d(width, 2, 1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        height, out_width = out_grid
        self.register_buffer("reference", reference_points(height, out_width), persistent=False)
        self.register_buffer("pixel", torch.tensor([2 / out_width, 2 / height]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            x = tokens_to_map(x, self.grid)
        y = self.pwconv(self.dwconv(x))
        points = self.reference + self.offset(y).permute(0, 2, 3, 1) * self.pixel
        out = F.grid_sample(y, points, mode="bilinear", padding_mode="zeros", align_corners=False)
        return map_to_tokens(out) if self.tokens else out


DownsampleSpec = DOWNSAMPLES.union()
