"""Positional encodings placed between blocks."""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn as nn
from pydantic import BeforeValidator, Field

from ... import cost as C
from ...cost import TensorShape
from ...layers.layout import map_to_tokens, tokens_to_map
from .. import (
    SMALL_GRIDS,
    STAGE_OPTIONS,
    Example,
    ShapeProblem,
    Size,
    StageOption,
    bare_name,
)


@STAGE_OPTIONS.register
class PegSpec(StageOption):
    """``peg(kernel=3, blocks=first, place=after)``: CPVT's positional encoding generator (Chu et
    al. 2023, section 3.2): ``x + DWConv_k(x)`` (with bias) on the token map, class tokens passing
    unchanged; ``place``d ``after`` or ``before`` the stage's ``first`` block (CPVT, ScalableViT:
    after), ``all`` blocks (PartialFormer: before each, figure 5.3), or the listed block indices."""

    kind: Literal["peg"] = "peg"
    kernel: Size = 3
    blocks: Literal["first", "all"] | list[Annotated[int, Field(ge=0)]] = "first"
    place: Literal["after", "before"] = "after"

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4)", "stages": [{"depth": 2, "width": 16, "mixer": "attention(heads=2)", "peg": "peg(blocks=all, place=before)"},
                                  {"depth": 2, "width": 16, "mixer": "identity", "peg": "peg(kernel=5, blocks=[1])"}]},
                       SMALL_GRIDS, ("stages.1.peg", "peg(blocks=[2])"), ("stages", 1, "peg"))

    def positions(self, depth: int) -> list[int]:
        if self.blocks == "first":
            return [0]
        return list(range(depth)) if self.blocks == "all" else sorted(set(self.blocks))

    def check(self, shape: TensorShape, where: str, stage) -> list[ShapeProblem]:
        return self.blocks_past(self.positions(stage.depth), stage.depth, "first or all")

    def cost(self, shape: TensorShape, stage, index: int) -> C.Cost:
        return C.conv2d(shape.height, shape.width, shape.channels, shape.channels, self.kernel, groups=shape.channels)

    def build(self, shape: TensorShape, stage, index: int) -> nn.Module:
        return PositionalEncodingGenerator(shape, self.kernel)

    def describe(self) -> str:
        return f"peg({self.kernel}x{self.kernel})"


PegOption = Annotated[PegSpec, BeforeValidator(bare_name)]


class PositionalEncodingGenerator(nn.Module):
    """``x + DWConv(x)`` over the ``H x W`` map of tokens ``(B, prefix + H*W, C)`` or a map."""

    def __init__(self, shape: TensorShape, kernel: int):
        super().__init__()
        self.tokens, self.prefix, self.grid = shape.layout == "NLC", shape.prefix, (shape.height, shape.width)
        self.proj = nn.Conv2d(shape.channels, shape.channels, kernel, padding=kernel // 2, groups=shape.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.tokens:
            return x + self.proj(x)
        prefix, grid = x[:, :self.prefix], x[:, self.prefix:]
        return torch.cat([prefix, grid + map_to_tokens(self.proj(tokens_to_map(grid, self.grid)))], dim=1)
