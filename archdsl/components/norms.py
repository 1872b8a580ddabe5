"""Normalisation layers and activations, as spec components."""
from __future__ import annotations

from typing import Literal

import torch.nn as nn
from timm.layers import LayerNorm2d, get_act_layer

from .. import cost as C
from ..cost import TensorShape
from . import NORMS, SMALL_GRIDS, Eps, Example, Norm, ShapeProblem

Act = Literal["gelu", "relu", "silu", "hard_swish", "tanh", "sigmoid", "identity"]


def act_layer(name: Act) -> nn.Module:
    """An activation module by name (timm's factory; ``gelu`` is the exact, erf form)."""
    return get_act_layer(name)()


@NORMS.register
class LayerNormSpec(Norm):
    """LayerNorm over channels: of each token (NLC) or of each pixel (NCHW, timm's LayerNorm2d)."""

    kind: Literal["layernorm"] = "layernorm"
    eps: Eps = 1e-5
    affine: bool = True

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4, norm=layernorm)", "stages": [
            {"depth": 1, "width": 16, "mixer": "identity", "norm": "layernorm(eps=1e-6)"},
            {"depth": 1, "width": 16, "block": "basic", "norm": "layernorm"}]},
            SMALL_GRIDS, unbreakable="a LayerNorm takes tokens and maps of any size")

    def check(self, shape: TensorShape) -> list[ShapeProblem]:
        return []

    def cost(self, shape: TensorShape) -> C.Cost:
        return C.layer_norm(shape.numel, shape.channels, self.affine)

    def build(self, shape: TensorShape) -> nn.Module:
        if shape.layout == "NLC":
            return nn.LayerNorm(shape.channels, eps=self.eps, elementwise_affine=self.affine)
        return LayerNorm2d(shape.channels, eps=self.eps, affine=self.affine)


@NORMS.register
class BatchNormSpec(Norm):
    """BatchNorm2d over a NCHW feature map."""

    kind: Literal["batchnorm"] = "batchnorm"
    eps: Eps = 1e-5
    momentum: float = 0.1
    affine: bool = True

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "conv(widths=[16], strides=[4])", "stages": [{"depth": 1, "width": 16, "block": "basic"}]},
                       SMALL_GRIDS, ("stages.0", {"depth": 1, "width": 16, "mixer": "identity", "norm": "batchnorm"}),
                       ("stages", 0, "norm"))

    def check(self, shape: TensorShape) -> list[ShapeProblem]:
        if shape.layout != "NCHW":
            return [ShapeProblem((), "batchnorm needs a NCHW feature map, but here the features are tokens",
                                 "use layernorm on tokens")]
        return []

    def cost(self, shape: TensorShape) -> C.Cost:
        return C.batch_norm(shape.numel, shape.channels, self.affine)

    def build(self, shape: TensorShape) -> nn.Module:
        return nn.BatchNorm2d(shape.channels, eps=self.eps, momentum=self.momentum, affine=self.affine)


NormSpec = NORMS.union()
