"""What every stage has, whatever its blocks: depth, width, an optional downsample and PEG."""
from __future__ import annotations

from typing import ClassVar

import torch.nn as nn
from pydantic import Field

from .. import cost as C
from ..components import Channels, Component, Depth, ShapeProblem
from ..cost import TensorShape
from ..downsample import DownsampleSpec
from ..position import PegOption


class StageSpec(Component):
    """What every stage has: ``depth`` blocks of ``width`` channels after an optional downsample.

    A block family subclasses it with a ``block: Literal[...]`` field, its ``layout`` (``NLC``
    tokens or ``NCHW`` maps; the graph converts between stages) and ``check_blocks``,
    ``block_shapes`` (if blocks change the shape), ``block_cost``, ``build_block`` and
    ``describe``, and registers itself in ``STAGES``."""

    layout: ClassVar[str]
    takes_stride: ClassVar[bool] = False  # whether a ``strided`` downsample can go on its first block
    depth: Depth
    width: Channels
    downsample: DownsampleSpec | None = None
    drop_path: float | None = Field(default=None, ge=0, lt=1)
    peg: PegOption | None = None

    def check_blocks(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        """Shape rules of the blocks, given the stage's input after its downsample."""
        raise NotImplementedError

    def block_shapes(self, shape: TensorShape) -> list[TensorShape]:
        """The output shape of each block."""
        return [shape.with_(channels=self.width)] * self.depth

    def branches(self, index: int, shape: TensorShape) -> dict[str, C.Cost]:
        """The cost of each side branch of block ``index`` that merges into its output (the
        graph shows them as nodes; the block's module holds them)."""
        return {}

    def outputs_map(self) -> bool:
        """Whether the stage outputs a feature map over the image's grid (false: a set of tokens
        with no place on it, such as visual tokens; no dense-task feature, no stride)."""
        return True

    def block_cost(self, index: int, shape: TensorShape) -> C.Cost:
        """Block ``index``'s parameters and FLOPs, side branches excluded, given its input."""
        raise NotImplementedError

    def build_block(self, index: int, shape: TensorShape, drop_path: float) -> nn.Module:
        """Block ``index``'s module (side branches included), given its input shape."""
        raise NotImplementedError

    def describe(self, index: int, shape: TensorShape) -> str:
        """Block ``index``'s label in the build table."""
        raise NotImplementedError
