"""The classifier head: its schema, rules and cost (``HeadSpec``) and its module (``ClassifierHead``)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from .. import cost as C
from ..cost import TensorShape
from . import Channels, Component, Probability, ShapeProblem, nested
from .norms import Act, NormSpec, act_layer


class HeadSpec(Component):
    """The classifier: ``norm`` over the final features, ``pool`` (``avg`` over the grid,
    ``token`` = the class token), an optional ``pre_logits`` hidden layer (linear, optional
    ``pre_logits_norm``, ``pre_logits_act``) after pooling, or, with ``pre_logits_before_pool``,
    on every token before pooling (a 1x1 convolution on the final map, as MobileNetV3's head:
    the same parameters, the FLOPs times the tokens), dropout, ``classes``."""

    classes: int = Field(default=1000, ge=0, le=1_000_000)
    pool: Literal["avg", "token"] = "avg"
    norm: NormSpec | None = None
    pre_logits: Channels | None = None
    pre_logits_norm: NormSpec | None = None
    pre_logits_act: Act = "tanh"
    pre_logits_before_pool: bool = False
    dropout: Probability = 0.0

    def cost(self, shape: TensorShape) -> C.Cost:
        """Pooling (a mean over the grid) or the class token, pre-logits, classifier; the final
        ``norm`` is a node of its own."""
        width = self.pre_logits or shape.channels
        pooled = 0 if self.pool == "token" else shape.grid * (width if self.pre_logits_before_pool else shape.channels)
        cost = C.mean(pooled)
        if self.pre_logits:
            rows = shape if self.pre_logits_before_pool else TensorShape("NLC", shape.channels, 1, 1)
            cost = cost + C.linear(rows.tokens, shape.channels, self.pre_logits)
            if self.pre_logits_norm:
                cost = cost + self.pre_logits_norm.cost(rows.with_(layout="NLC", channels=self.pre_logits))
        return cost + (C.linear(1, width, self.classes) if self.classes else C.ZERO)

    def check(self, shape: TensorShape) -> list[ShapeProblem]:
        """The head's rules on the final features ``shape`` (its ``norm`` is checked as a node of its own)."""
        problems = []
        if self.pre_logits_norm:
            problems += nested(("pre_logits_norm",), self.pre_logits_norm.check(TensorShape("NLC", self.pre_logits or 1, 1, 1)))
        if self.pool == "token" and not shape.prefix:
            problems.append(ShapeProblem(("pool",), "pool: token needs a class token, and the features have none",
                                         "use pool: avg, or cls_token=true in patch_embed"))
        return problems

    def build(self, shape: TensorShape) -> "ClassifierHead":
        return ClassifierHead(self, shape)


class ClassifierHead(nn.Module):
    """Pool (mean over the grid, or the class token), optional pre-logits layer (after pooling, or
    on every token before it), dropout, linear."""

    def __init__(self, spec: HeadSpec, shape: TensorShape):
        super().__init__()
        self.pool, self.prefix, self.tokens = spec.pool, shape.prefix, shape.layout == "NLC"
        self.before_pool = bool(spec.pre_logits) and spec.pre_logits_before_pool
        self.pre_logits = nn.Identity()
        if spec.pre_logits:
            hidden = TensorShape("NLC", spec.pre_logits, 1, 1)
            norm = spec.pre_logits_norm.build(hidden) if spec.pre_logits_norm else nn.Identity()
            self.pre_logits = nn.Sequential(nn.Linear(shape.channels, spec.pre_logits), norm,
                                            act_layer(spec.pre_logits_act))
        self.num_features = spec.pre_logits or shape.channels
        self.drop = nn.Dropout(spec.dropout)
        self.fc = nn.Linear(self.num_features, spec.classes) if spec.classes else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.before_pool:
            x = self.pre_logits(x if self.tokens else x.permute(0, 2, 3, 1))
            x = x if self.tokens else x.permute(0, 3, 1, 2)
        if self.pool == "token":
            x = x[:, 0]
        elif self.tokens:
            x = x[:, self.prefix:].mean(dim=1)
        else:
            x = x.mean(dim=(2, 3))
        x = self.drop(x if self.before_pool else self.pre_logits(x))
        return x if pre_logits else self.fc(x)
