"""Stems: the layers that turn the image into the first feature map or token grid."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field
from timm.layers import PatchEmbed, trunc_normal_

from .. import cost as C
from ..cost import TensorShape
from . import (
    SMALL_GRIDS,
    STEMS,
    Channels,
    Example,
    ShapeProblem,
    Size,
    Stem,
    divisors,
    nested,
)
from .norms import Act, NormSpec, act_layer


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling window (PyTorch's floor rule)."""
    return (size + 2 * padding - kernel) // stride + 1


@STEMS.register
class PatchEmbedSpec(Stem):
    """``patch_embed(patch=16, norm=null, cls_token=false, pos_embed=false)`` (ViT, section 3.1):
    a ``patch x patch`` convolution with stride ``patch`` to tokens, optionally normalised, with a
    class token prepended and learned absolute position embeddings (over all tokens) added."""

    kind: Literal["patch_embed"] = "patch_embed"
    patch: Size = 16
    width: Channels | None = None
    norm: NormSpec | None = None
    cls_token: bool = False
    pos_embed: bool = False

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4, norm=layernorm, cls_token=true, pos_embed=true)",
                        "stages": [{"depth": 1, "width": 16, "mixer": "attention(heads=2)"}],
                        "head": {"norm": "layernorm", "pool": "token", "classes": 4}},
                       SMALL_GRIDS, ("input", "3x18x18"), ("stem",))

    def channels(self, first_stage_width: int) -> int:
        """The stem's output width: its own ``width``, else the first stage's."""
        return self.width or first_stage_width

    def out_shape(self, image: TensorShape, width: int) -> TensorShape:
        return TensorShape("NLC", width, image.height // self.patch, image.width // self.patch,
                           1 if self.cls_token else 0)

    def check(self, image: TensorShape, width: int) -> list[ShapeProblem]:
        if image.height % self.patch or image.width % self.patch:
            common = [d for d in divisors(image.height) if image.width % d == 0]
            return [ShapeProblem(("patch",), f"patch {self.patch} does not divide the input "
                                 f"{image.height}x{image.width}", f"valid patches: {', '.join(map(str, common))}")]
        return nested(("norm",), self.norm.check(self.out_shape(image, width))) if self.norm else []

    def cost(self, image: TensorShape, width: int) -> C.Cost:
        out = self.out_shape(image, width)
        cost = C.conv2d(out.height, out.width, image.channels, width, self.patch)
        if self.norm:
            cost = cost + self.norm.cost(out.with_(prefix=0))
        extra = C.Cost((out.prefix * width) + (out.tokens * width if self.pos_embed else 0), 0)
        return cost + extra

    def build(self, image: TensorShape, width: int) -> nn.Module:
        return PatchEmbedStem(self, image, width)


class PatchEmbedStem(nn.Module):
    def __init__(self, spec: PatchEmbedSpec, image: TensorShape, width: int):
        super().__init__()
        out = spec.out_shape(image, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if spec.cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, out.tokens, width)) if spec.pos_embed else None
        norm = (lambda dim, **_: spec.norm.build(out.with_(prefix=0))) if spec.norm else None
        self.patch_embed = PatchEmbed((image.height, image.width), spec.patch, image.channels, width,
                                      norm_layer=norm)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return x


@STEMS.register
class ResNetStemSpec(Stem):
    """``resnet(width=64)`` (He et al. 2016, table 1): 7x7 conv stride 2, BN, ReLU, 3x3 max-pool
    stride 2."""

    kind: Literal["resnet"] = "resnet"
    width: Channels | None = None
    act: Act = "relu"

    channels = PatchEmbedSpec.channels

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "resnet", "stages": [{"depth": 1, "width": 16, "block": "basic"}]},
                       ("3x32x32", "3x32x48", "3x36x36"), unbreakable="the ResNet stem takes any image")

    def out_shape(self, image: TensorShape, width: int) -> TensorShape:
        h, w = (conv_out(conv_out(s, 7, 2, 3), 3, 2, 1) for s in (image.height, image.width))
        return TensorShape("NCHW", width, h, w)

    def check(self, image: TensorShape, width: int) -> list[ShapeProblem]:
        return []

    def cost(self, image: TensorShape, width: int) -> C.Cost:
        h, w = conv_out(image.height, 7, 2, 3), conv_out(image.width, 7, 2, 3)
        return C.conv2d(h, w, image.channels, width, 7, bias=False) + C.batch_norm(h * w * width, width)

    def build(self, image: TensorShape, width: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(image.channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), act_layer(self.act),
            nn.MaxPool2d(3, 2, 1))


@STEMS.register
class ConvStemSpec(Stem):
    """``conv(widths=[32, 64], kernel=3, strides=[2, 2], groups=null, norm=batchnorm, act=relu)``: a
    stack of conv-norm-act layers (padding ``kernel // 2``); ``groups`` gives each layer's groups
    (a layer whose groups equal its input and output width is depth-wise, e.g. MAT's stem, thesis
    table 4.12); the last layer has no activation when ``last_act=false``; the convolutions have a
    bias when ``bias=true`` (default: only without a norm)."""

    kind: Literal["conv"] = "conv"
    widths: list[Channels] = Field(min_length=1, max_length=16)
    kernel: Size = 3
    strides: list[Size] | None = None
    groups: list[Size] | None = None
    norm: NormSpec | None = {"kind": "batchnorm"}
    act: Act = "relu"
    last_act: bool = True
    bias: bool | None = None

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "conv(widths=[8, 16], strides=[2, 2], groups=[1, 8])", "stages": [{"depth": 1, "width": 16, "block": "basic"}]},
                       SMALL_GRIDS, ("stem", "conv(widths=[8, 16], strides=[2, 2], groups=[1, 3])"), ("stem",))

    def conv_bias(self) -> bool:
        return self.norm is None if self.bias is None else self.bias

    def layers(self, image: TensorShape):
        """(in shape, out shape, stride, groups) of each conv layer."""
        strides = self.strides or [2] * len(self.widths)
        shape = image
        for width, stride, groups in zip(self.widths, strides, self.groups or [1] * len(self.widths)):
            out = TensorShape("NCHW", width, *(conv_out(s, self.kernel, stride, self.kernel // 2)
                                                for s in (shape.height, shape.width)))
            yield shape, out, stride, groups
            shape = out

    def out_shape(self, image: TensorShape, width: int) -> TensorShape:
        return list(self.layers(image))[-1][1]

    def channels(self, first_stage_width: int) -> int:
        return self.widths[-1]

    def check(self, image: TensorShape, width: int) -> list[ShapeProblem]:
        for name in ("strides", "groups"):
            given = getattr(self, name)
            if given is not None and len(given) != len(self.widths):
                return [ShapeProblem((name,), f"{len(given)} {name} for {len(self.widths)} layers",
                                     f"give one {name[:-1]} per width")]
        problems = []
        for i, (src, out, _, groups) in enumerate(self.layers(image)):
            if src.channels % groups or out.channels % groups:
                common = [d for d in divisors(src.channels) if out.channels % d == 0]
                problems.append(ShapeProblem(("groups", i), f"layer {i + 1}: {groups} groups do not divide its "
                                             f"{src.channels} input and {out.channels} output channels",
                                             f"valid groups: {', '.join(map(str, common))}"))
        return problems

    def cost(self, image: TensorShape, width: int) -> C.Cost:
        total = C.ZERO
        for src, out, _, groups in self.layers(image):
            total = total + C.conv2d(out.height, out.width, src.channels, out.channels, self.kernel, groups,
                                     bias=self.conv_bias())
            if self.norm:
                total = total + self.norm.cost(out)
        return total

    def build(self, image: TensorShape, width: int) -> nn.Module:
        layers: list[nn.Module] = []
        convs = list(self.layers(image))
        for i, (src, out, stride, groups) in enumerate(convs):
            layers.append(nn.Conv2d(src.channels, out.channels, self.kernel, stride, self.kernel // 2,
                                    groups=groups, bias=self.conv_bias()))
            if self.norm:
                layers.append(self.norm.build(out))
            if self.last_act or i < len(convs) - 1:
                layers.append(act_layer(self.act))
        return nn.Sequential(*layers)


StemSpec = STEMS.union()
