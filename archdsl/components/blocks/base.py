"""What every stage has, whatever its blocks: depth, width, an optional downsample and PEG."""
from __future__ import annotations

import abc
from typing import ClassVar

import torch.nn as nn
from pydantic import Field

from ... import cost as C
from ...cost import TensorShape
from .. import STAGES, Channels, Component, Depth, ShapeProblem
from ..downsample import DownsampleSpec
from ..options.position import PegOption


class StageSpec(Component, abc.ABC):
    """What every stage has: ``depth`` blocks of ``width`` channels after an optional downsample; the
    contract of a stage kind.

    A block family subclasses it with a ``block: Literal[...]`` field and its ``layout`` (``NLC``
    tokens or ``NCHW`` maps; the graph converts between stages), implements the abstract methods,
    overrides the hooks it needs (``block_shapes`` if blocks change the shape, ``branches``,
    ``outputs_map``) and registers itself in ``STAGES``. The graph calls ``block_shapes``, then
    ``check_blocks`` once, then ``block_cost``, ``branches`` and ``describe`` per block; the compiler
    calls ``build_block`` per block. ``shape`` is the stage's input after its downsample (and layout
    conversion) for ``check_blocks`` and ``block_shapes``, block ``index``'s input otherwise."""

    layout: ClassVar[str]
    takes_stride: ClassVar[bool] = False  # whether a ``strided`` downsample can go on its first block
    depth: Depth
    width: Channels
    downsample: DownsampleSpec | None = None
    drop_path: float | None = Field(default=None, ge=0, lt=1)
    peg: PegOption | None = None

    @abc.abstractmethod
    def check_blocks(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        """Shape rules of the blocks, given the stage's input after its downsample; ``where`` names the
        stage for messages."""

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

    @abc.abstractmethod
    def block_cost(self, index: int, shape: TensorShape) -> C.Cost:
        """Block ``index``'s parameters and FLOPs, side branches excluded, given its input."""

    @abc.abstractmethod
    def build_block(self, index: int, shape: TensorShape, drop_path: float) -> nn.Module:
        """Block ``index``'s module (side branches included), given its input shape."""

    @abc.abstractmethod
    def describe(self, index: int, shape: TensorShape) -> str:
        """Block ``index``'s label in the build table."""


STAGES.base = StageSpec  # the registry refuses a stage kind that is not one
