"""ResNet's ``basic`` and ``bottleneck`` blocks (He et al. 2016, figure 5; stride on the 3x3
convolution, as timm and torchvision)."""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn as nn
from timm.layers import DropPath

from ... import cost as C
from ...cost import TensorShape
from .. import SMALL_GRIDS, STAGES, Example, ShapeProblem, nested
from ..norms import Act, NormSpec, act_layer
from ..stems import conv_out
from .base import StageSpec


class ResidualStageSpec(StageSpec):
    """ResNet stages: conv-norm-act blocks with an identity or projection shortcut."""

    layout: ClassVar[str] = "NCHW"
    takes_stride: ClassVar[bool] = True
    expansion: ClassVar[int]
    convs: ClassVar[list]  # (kernel, width divisor) per conv
    norm: NormSpec = {"kind": "batchnorm"}
    act: Act = "relu"

    def stride(self) -> int:
        return self.downsample.block_stride() if self.downsample is not None else 1

    def mid(self) -> int:
        return self.width // self.expansion

    def check_blocks(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        problems = []
        if self.width % self.expansion:
            problems.append(ShapeProblem(("width",), f"a {self.block} block's width must be a multiple of its "
                                         f"expansion {self.expansion}, got {self.width}",
                                         f"try {max(self.expansion, self.width // self.expansion * self.expansion)}"))
        problems += nested(("norm",), self.norm.check(shape))
        return problems

    def block_shapes(self, shape: TensorShape) -> list[TensorShape]:
        s = self.stride()
        first = TensorShape("NCHW", self.width, conv_out(shape.height, 3, s, 1), conv_out(shape.width, 3, s, 1))
        return [first] * self.depth

    def layer_shapes(self, index: int, shape: TensorShape) -> list[tuple[int, int, int, int, int, int]]:
        """``(c_in, c_out, kernel, stride, out_h, out_w)`` of the block's convolutions."""
        stride = self.stride() if index == 0 else 1
        c_in, h, w = shape.channels, shape.height, shape.width
        layers = []
        for i, kernel in enumerate(self.kernels()):
            s = stride if kernel == 3 else 1  # the first 3x3 convolution carries the stride
            stride = 1 if kernel == 3 else stride
            h, w = conv_out(h, kernel, s, kernel // 2), conv_out(w, kernel, s, kernel // 2)
            c_out = self.width if i == len(self.kernels()) - 1 else self.mid()
            layers.append((c_in, c_out, kernel, s, h, w))
            c_in = c_out
        return layers

    def has_projection(self, index: int, shape: TensorShape) -> bool:
        return index == 0 and (self.stride() != 1 or shape.channels != self.width)

    def block_cost(self, index: int, shape: TensorShape) -> C.Cost:
        cost = C.ZERO
        for c_in, c_out, k, _, h, w in self.layer_shapes(index, shape):
            cost = cost + C.conv2d(h, w, c_in, c_out, k, bias=False) + self.norm.cost(TensorShape("NCHW", c_out, h, w))
        return cost

    def branches(self, index: int, shape: TensorShape) -> dict[str, C.Cost]:
        """The projection shortcut (1x1 conv with the block's stride, norm) where shapes change."""
        if not self.has_projection(index, shape):
            return {}
        out = self.block_shapes(shape)[0]
        return {"shortcut": C.conv2d(out.height, out.width, shape.channels, self.width, 1, bias=False)
                + self.norm.cost(out)}

    def build_block(self, index: int, shape: TensorShape, drop_path: float) -> nn.Module:
        layers = []
        for c_in, c_out, k, s, h, w in self.layer_shapes(index, shape):
            layers += [nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False),
                       self.norm.build(TensorShape("NCHW", c_out, h, w))]
        shortcut = None
        if self.has_projection(index, shape):
            out = self.block_shapes(shape)[0]
            shortcut = nn.Sequential(nn.Conv2d(shape.channels, self.width, 1, self.stride(), bias=False),
                                     self.norm.build(out))
        return ResidualBlock(layers, shortcut, self.act, drop_path)

    def describe(self, index: int, shape: TensorShape) -> str:
        return f"{self.block}({'x'.join(str(k) for k in self.kernels())})"


@STAGES.register
class BasicStageSpec(ResidualStageSpec):
    """``block: basic``: two 3x3 convolutions."""

    expansion: ClassVar[int] = 1
    block: Literal["basic"]

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "conv(widths=[16], strides=[2])", "stages": [
            {"depth": 2, "width": 16, "block": "basic"}, {"depth": 1, "width": 24, "block": "basic", "downsample": "strided"}]},
            SMALL_GRIDS, unbreakable="basic blocks take any map and any width (expansion 1)")

    @staticmethod
    def kernels() -> tuple:
        return (3, 3)


@STAGES.register
class BottleneckStageSpec(ResidualStageSpec):
    """``block: bottleneck``: 1x1 down to ``width / expansion``, 3x3, 1x1 up to ``width``."""

    expansion: ClassVar[int] = 4
    block: Literal["bottleneck"]

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "conv(widths=[16], strides=[2])", "stages": [
            {"depth": 2, "width": 32, "block": "bottleneck"}, {"depth": 1, "width": 64, "block": "bottleneck", "downsample": "strided"}]},
            SMALL_GRIDS, ("stages.0.width", 30), ("stages", 0, "width"))

    @staticmethod
    def kernels() -> tuple:
        return (1, 3, 1)


class ResidualBlock(nn.Module):
    """``act(shortcut(x) + DropPath(convs(x)))`` with an activation after every conv-norm pair
    but the last; the last norm's scale starts at zero (timm's ``zero_init_last``)."""

    def __init__(self, layers: list[nn.Module], shortcut: nn.Module | None, act: str, drop_path: float):
        super().__init__()
        self.pairs = len(layers) // 2
        for i in range(self.pairs):
            self.add_module(f"conv{i + 1}", layers[2 * i])
            self.add_module(f"bn{i + 1}", layers[2 * i + 1])
            self.add_module(f"act{i + 1}", act_layer(act))
        last_norm = layers[-1]
        if getattr(last_norm, "weight", None) is not None:
            nn.init.zeros_(last_norm.weight)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.downsample = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        for i in range(1, self.pairs + 1):
            x = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))
            if i < self.pairs:
                x = getattr(self, f"act{i}")(x)
        return getattr(self, f"act{self.pairs}")(shortcut + self.drop_path(x))
