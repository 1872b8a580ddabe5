"""The traced count: fvcore's FlopCountAnalysis on the built model, plus handles for the ops
fvcore skips that matter here, and a list of every op that was still not counted.

fvcore (and torch's FlopCountMode on the CPU) do not count ``scaled_dot_product_attention``;
archdsl counts its two matrix products, as the analytic model does (``cost.attention``), and a
``mean`` as one FLOP per input element (as fvcore counts adaptive average pooling). Element-wise
ops (add, GELU, softmax, ...) are not counted, by fvcore's convention; they are listed.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from math import prod

import torch
import torch.nn as nn


def _shape(value) -> list[int]:
    return value.type().sizes()


def sdpa_flops(inputs, outputs) -> int:
    """``softmax(q k^T) v``: ``q`` is ``(..., L, E)``, ``k`` ``(..., S, E)``, ``v`` ``(..., S, Ev)``."""
    q, k, v = (_shape(t) for t in inputs[:3])
    return prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def mean_flops(inputs, outputs) -> int:
    return prod(_shape(inputs[0]))


EXTRA_HANDLES = {"aten::scaled_dot_product_attention": sdpa_flops, "aten::mean": mean_flops}


@dataclass
class TraceReport:
    """FLOPs of one image counted on the built model, by top-level part, and what was not counted."""

    flops: int
    params: int
    by_module: dict[str, int] = field(default_factory=dict)
    uncounted: Counter = field(default_factory=Counter)


def traced_cost(model: nn.Module, input_shape: tuple[int, int, int]) -> TraceReport:
    """Trace ``model`` (in eval mode) on one random image of ``input_shape`` (C, H, W)."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, torch.randn(1, *input_shape))
            analysis.set_op_handle(**EXTRA_HANDLES)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            total = int(analysis.total())
            by_module = {k: int(v) for k, v in analysis.by_module().items()}
            uncounted = Counter(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return TraceReport(total, params, by_module, uncounted)
