"""From the inferred graph to an ``nn.Module`` with timm's model interface."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .cost import TensorShape
from .graph import Design
from .layers.layout import map_to_tokens, tokens_to_map


class ToLayout(nn.Module):
    """A free conversion between ``(B, C, H, W)`` maps and ``(B, H*W, C)`` tokens."""

    def __init__(self, src: TensorShape, out: TensorShape):
        super().__init__()
        self.to_tokens, self.grid = out.layout == "NLC", (src.height, src.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return map_to_tokens(x) if self.to_tokens else tokens_to_map(x, self.grid)


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module, layout: nn.Module, blocks: list[nn.Module], out: TensorShape):
        super().__init__()
        self.downsample, self.layout, self.blocks = downsample, layout, nn.Sequential(*blocks)
        self.out_shape = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.layout(self.downsample(x)))


class ArchModel(nn.Module):
    """A model compiled from a spec: ``stem``, ``stages``, ``norm``, ``head``, with timm's
    interface (``forward_features``, ``forward_head``, ``reset_classifier``, ``feature_info``).

    With ``features_only=True`` the forward returns the ``out_indices`` stages' outputs as NCHW
    maps (class tokens dropped), as timm's feature extractors do, and there is no norm or head.
    """

    def __init__(self, design: Design, features_only: bool = False, out_indices: Sequence[int] | None = None):
        super().__init__()
        self.design, self.spec = design, design.spec
        g = design.graph
        stem = g.nodes["stem"]
        self.stem = stem["component"].build(stem["in_shape"], stem["width"])
        stages = []
        for i, _ in enumerate(self.spec.stages):
            parts = {kind: g.nodes[f"stages.{i}.{kind}"] for kind in ("downsample", "layout")
                     if f"stages.{i}.{kind}" in g}
            ds = parts.get("downsample")
            lay = parts.get("layout")
            sequence = [d for _, d in design.nodes() if d["stage"] == i and d["kind"] in ("block", "peg")]
            stages.append(Stage(
                ds["component"].build(ds["in_shape"], ds["out_shape"].channels) if ds else nn.Identity(),
                ToLayout(lay["in_shape"], lay["out_shape"]) if lay else nn.Identity(),
                [d["component"].build_block(d["index"], d["in_shape"], d["drop_path"]) if d["kind"] == "block"
                 else d["component"].build(d["in_shape"], self.spec.stages[i], d["index"]) for d in sequence],
                sequence[-1]["out_shape"]))
        self.stages = nn.Sequential(*stages)
        image = g.nodes["input"]["out_shape"]
        maps = [i for i, stage in enumerate(self.spec.stages) if stage.outputs_map()]
        info = {i: dict(num_chs=stages[i].out_shape.channels, reduction=image.height // stages[i].out_shape.height,
                        module=f"stages.{i}") for i in maps}
        self.feature_info = list(info.values())
        self.features_only = features_only
        n = len(stages)
        self.out_indices = tuple(i % n for i in (out_indices if out_indices is not None else maps))
        if features_only:
            tokens_only = [i for i in self.out_indices if i not in info]
            if tokens_only:
                raise ValueError(f"stage {tokens_only[0] + 1} outputs tokens, not a feature map; stages with maps "
                                 f"(out_indices): {', '.join(map(str, maps))}")
            self.feature_info = [info[i] for i in self.out_indices]
            return
        final = g.nodes["head"]["in_shape"]
        self.norm = g.nodes["norm"]["component"].build(final) if "norm" in g else nn.Identity()
        self.head = self.spec.head.build(final)
        self.num_classes = self.spec.head.classes
        self.num_features = self.head_hidden_size = self.head.num_features
        self.default_cfg = self.pretrained_cfg = dict(input_size=(image.channels, image.height, image.width),
                                                      num_classes=self.num_classes, architecture=self.spec.name)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage in ``out_indices``, as NCHW maps."""
        out = []
        x = self.stem(x)
        last = max(self.out_indices)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                out.append(to_map(x, stage.out_shape))
            if i == last:
                break
        return out

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_stages(x)
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        if global_pool is not None:
            if global_pool not in ("avg", "token") or (global_pool == "token" and not self.head.prefix):
                valid = "'avg' or 'token'" if self.head.prefix else "'avg' (there is no class token)"
                raise ValueError(f"global_pool must be {valid}, got {global_pool!r}")
            self.head.pool = global_pool
        self.num_classes = num_classes
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


def to_map(x: torch.Tensor, shape: TensorShape) -> torch.Tensor:
    """Tokens ``(B, prefix + H*W, C)`` to a ``(B, C, H, W)`` map; maps pass through."""
    if shape.layout == "NCHW":
        return x
    return tokens_to_map(x[:, shape.prefix:], (shape.height, shape.width))
