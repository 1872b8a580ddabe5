"""MetaFormer blocks (Yu et al. 2022, eq. 1-2): norm, token mixer, residual, norm, MLP, residual."""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import BeforeValidator, Field
from timm.layers import DropPath, LayerScale, Mlp, get_act_layer

from ... import cost as C
from ...cost import TensorShape
from .. import (
    MIXERS,
    SMALL_GRIDS,
    STAGES,
    Example,
    Ratio,
    ShapeProblem,
    as_list,
    mixers,  # noqa: F401  (registers the mixers before the union below is made)
    nested,
)
from ..norms import Act, NormSpec
from ..options.graft import GraftOption
from .base import StageSpec

MixerSpec = MIXERS.union()



@STAGES.register
class MetaFormerStageSpec(StageSpec):
    """``block: metaformer`` with a token ``mixer``, an MLP of ``mlp_ratio`` x width hidden units,
    pre-norms ``norm``, optional LayerScale (``layer_scale`` = initial value; CaiT) and optional
    GrafT branches (``graft``, archdsl/components/options/graft.py) on some of its blocks."""

    layout: ClassVar[str] = "NLC"
    block: Literal["metaformer"] = "metaformer"
    mixer: Annotated[list[MixerSpec], BeforeValidator(as_list), Field(min_length=1, max_length=64)]
    mlp_ratio: Ratio = 4.0
    norm: NormSpec = {"kind": "layernorm"}
    act: Act = "gelu"
    layer_scale: float | None = Field(default=None, gt=0, le=10)
    graft: GraftOption | None = None

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4)", "stages": [
            {"depth": 2, "width": 16, "mixer": ["attention(heads=2)", "identity"], "layer_scale": 1e-5, "drop_path": 0.1},
            {"depth": 1, "width": 16, "mixer": "identity", "mlp_ratio": 2, "act": "relu"}]},
            SMALL_GRIDS, ("stages.1.width", 24), ("stages", 1, "width"))

    def check_blocks(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        problems = []
        if shape.channels != self.width:
            problems.append(ShapeProblem(("width",), f"{where} receives {shape.channels} channels but its blocks "
                                         f"are {self.width} wide and nothing changes the width",
                                         f"set width: {shape.channels} or add a downsample"))
            return problems
        problems += nested(("norm",), self.norm.check(shape))
        for k, mixer in enumerate(self.mixer):
            problems += nested(("mixer",) if len(self.mixer) == 1 else ("mixer", k), mixer.check(shape, where))
        if self.graft is not None and not problems:
            problems += nested(("graft",), self.graft.check(shape, where, self))
        return problems

    def grafted(self, index: int) -> bool:
        return self.graft is not None and index in self.graft.positions(self.depth)

    def branches(self, index: int, shape: TensorShape) -> dict[str, C.Cost]:
        """The graft, on the blocks it is attached to."""
        if not self.grafted(index):
            return {}
        return {"graft": self.graft.cost(shape, self, index)}

    def mixer_at(self, index: int):
        """Block ``index``'s mixer: a list of mixers repeats block by block (ScalableViT)."""
        return self.mixer[index % len(self.mixer)]

    def hidden(self) -> int:
        return int(self.width * self.mlp_ratio)

    def block_cost(self, index: int, shape: TensorShape) -> C.Cost:
        d, hidden = shape.channels, self.hidden()
        cost = self.norm.cost(shape) * 2 + self.mixer_at(index).cost(shape, index)
        cost = cost + C.linear(shape.tokens, d, hidden) + C.linear(shape.tokens, hidden, d)
        return cost + (C.Cost(2 * d, 0) if self.layer_scale else C.ZERO)

    def build_block(self, index: int, shape: TensorShape, drop_path: float) -> nn.Module:
        graft = self.graft.build(shape, self, index) if self.grafted(index) else None
        return MetaFormerBlock(self.norm.build(shape), self.mixer_at(index).build(shape, index), self.norm.build(shape),
                               Mlp(shape.channels, self.hidden(), act_layer=get_act_layer(self.act)),
                               self.layer_scale, drop_path, graft, self.graft is None or self.graft.shared_ffn)

    def describe(self, index: int, shape: TensorShape) -> str:
        label = self.mixer_at(index).describe(shape, index)
        return f"{label} + {self.graft.describe()}" if self.grafted(index) else label


class MetaFormerBlock(nn.Module):
    """``x = x + DropPath(LS(mixer(norm1(x))))``; ``x = x + DropPath(LS(mlp(norm2(x))))``.

    With a ``graft`` (GrafT, eq. 4-5) its term ``graft(x)`` of the block input is added to the
    mixer's output before the FFN (``shared_ffn``), or, when the graft has its own FFN, added to
    the block's output after the FFN."""

    def __init__(self, norm1: nn.Module, mixer: nn.Module, norm2: nn.Module, mlp: nn.Module,
                 layer_scale: float | None, drop_path: float, graft: nn.Module | None = None,
                 shared_ffn: bool = True):
        super().__init__()
        dim = mlp.fc1.in_features
        self.norm1, self.mixer = norm1, mixer
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2, self.mlp = norm2, mlp
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.graft, self.shared_ffn = graft, shared_ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.graft is None:
            x = x + self.drop_path1(self.ls1(self.mixer(self.norm1(x))))
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        grafted = self.graft(x)
        mixed = self.mixer(self.norm1(x))
        if self.shared_ffn:
            x = x + self.drop_path1(self.ls1(mixed + grafted))
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        x = x + self.drop_path1(self.ls1(mixed))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x + self.drop_path2(grafted)
