"""No token mixer: the identity (MetaFormer's IdentityFormer, Yu et al. 2022, section 4.1).

A ``metaformer`` block with ``mixer: identity`` keeps its first norm and residual,
``x + Norm(x)``, then ``x + MLP(Norm(x))``: the "pure MLP" blocks of MAT's stages 1-2 (thesis
chapter 4, tables 4.2 and 4.12: "there is no spatial token mixer in this stage"). Decision: the
block is the MetaFormer block with an identity mixer, not an MLP alone; MAT-2 with pure MLP blocks
everywhere (table 4.9) counts 5.699M parameters, 5.698M with the first LayerNorm of each of its 16
blocks kept and 5.693M without. No parameters, no FLOPs.
"""
from __future__ import annotations

from typing import Literal

import torch.nn as nn

from ... import cost as C
from ...cost import TensorShape
from .. import MIXERS, SMALL_GRIDS, Example, Mixer, ShapeProblem


@MIXERS.register
class IdentityMixerSpec(Mixer):
    """``identity``: the tokens pass unchanged (no token mixing)."""

    kind: Literal["identity"] = "identity"

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4)", "stages": [{"depth": 2, "width": 16, "mixer": "identity"}]},
                       SMALL_GRIDS, unbreakable="the identity passes any tokens")

    def check(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        return []

    def cost(self, shape: TensorShape, index: int) -> C.Cost:
        return C.ZERO

    def build(self, shape: TensorShape, index: int) -> nn.Module:
        return nn.Identity()

    def describe(self, shape: TensorShape, index: int) -> str:
        return "identity"
