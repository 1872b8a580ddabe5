"""Helpers for checking a built model against another runtime (exported, compiled) without trained weights."""
from __future__ import annotations

import torch
import torch.nn as nn


def perturb_norms(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every LayerNorm and BatchNorm2d trained-looking parameters, in place; returns ``model``.

    Gains uniform in [0.5, 1.5] and biases normal (std 0.2) instead of timm's 1 and 0; batch norms
    also get running statistics (means normal with std 0.1, variances uniform in [0.5, 1.5]) for an
    optimizer to fold. Why: at initialisation a LayerNorm's output has channel mean exactly 0 for
    every token, so partial attention's foreground ranking (by channel mean, ``mixers/partial.py``)
    ranks rounding noise, and any runtime that rounds differently (fused kernels, ONNX) picks other
    tokens. With non-trivial norms, as in a trained model, the scores are apart and the pick is the
    model's own."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0.0, 0.2, generator=generator)
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.normal_(0.0, 0.1, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
    return model
