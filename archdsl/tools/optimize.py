"""Fast CPU inference: ``optimize(model)`` prepares a built model and returns the callable to use.

What it does to an ``ArchModel`` (built by ``archdsl.build_model``):

1. Eval mode (dropout and stochastic depth off, batch norm on its running statistics).
2. ``channels_last`` memory format for the weights and the input where convolutions dominate the
   design's analytic cost (``conv_share(design) >= CONV_SHARE``, see below).
3. ``torch.compile`` (inductor) with ``freezing`` on: parameters become constants, so inductor
   folds batch norms into convolutions and pre-packs convolution and linear weights for oneDNN
   (``mkldnn._convolution_pointwise``, ``mkldnn._linear_pointwise``). The flag is set as
   ``torch._inductor.config.freezing`` around each call (``config.patch``): passed as
   ``torch.compile(options={"freezing": True})`` it does not reach the weight-packing passes in
   this torch (2.14; the linears stay ``aten::addmm``, profiled).
4. The batch dimension dynamic (``torch._dynamo.maybe_mark_dynamic`` on each input), every other
   dimension static. One graph serves every batch size, and a symbolic batch is what makes
   inductor pack linear weights for oneDNN rather than MKL: on AMD CPUs MKL keeps to AVX2 kernels
   and reaches half the fp32 GEMM rate of oneDNN's AVX-512 ones (measured here: 4096^2 product,
   MKL 193 GFLOP/s, oneDNN 452). ``dynamic=True`` would also make the image's height and width
   symbols, which adds nothing (a spec fixes its input size) and costs compile time: inductor
   simplifies every index expression symbolically (window partitions, grid reshapes), minutes per
   model against seconds.

Measured (``benchmarks/inference.py``, batch 32, 2 cores): optimized against timm eager DeiT-T
1.72x, Swin-T 1.96x, ResNet-50 1.58x.

Use: the returned callable takes an image batch and returns what the model's ``forward``
returns. It runs under ``torch.inference_mode()`` itself (freezing only applies to graphs compiled
without autograd), so its outputs are inference tensors: no gradients flow through them. Train
the ``ArchModel``, not this. The first call compiles (tens of seconds on 2 cores); later calls with
another batch size reuse the dynamic graph. The model's parameters are frozen into the compiled
graph on the first call: changing them afterwards does not change the callable's outputs.

The conv rule: ``conv_share(design)`` is the fraction of the design's analytic FLOPs
(``design.cost.flops``) spent in convolutions (``design.cost.conv_flops``: the ``cost.conv2d``
terms of every node, in stems, downsamplers, residual blocks, position encodings and mixers).
channels_last pays when most of the work is convolutions (ResNet-50, 100% conv);
where it is mostly linear layers and attention over ``(B, L, C)`` tokens (DeiT-T: 2.3% conv, its
patch embedding), the NHWC copies only add work. The shipped specs fall far on either side of
``CONV_SHARE = 0.5``: ResNets and VT-ResNets 92-100%, EMSNets 21-26%, every other spec under 10%.

Accuracy: outputs match eager within 1e-4 (max abs), fused kernels round differently. One
exception by design: partial attention ranks tokens by channel mean, so at initialisation (norms
with weight 1 and bias 0, whose outputs have channel mean exactly 0) it ranks rounding noise and
compiled and eager pick different foregrounds; with trained (or any non-trivial) norm parameters
the ranking is stable and the outputs match.

Many models in one process: dynamo compiles each model's ``forward`` separately, and after its
recompile limit (8 per code object) falls back to eager for further ``ArchModel`` instances;
call ``torch._dynamo.reset()`` between models when optimizing many (the tests do).
"""
from __future__ import annotations

import time

import torch
import torch._dynamo
from torch._inductor import config as inductor_config

from ..graph import Design

CONV_SHARE = 0.5  # channels_last when at least this fraction of the analytic FLOPs is in convolutions


def conv_share(design: Design) -> float:
    """The fraction of ``design``'s analytic FLOPs in convolutions (``cost.conv2d`` terms)."""
    cost = design.cost
    return cost.conv_flops / cost.flops if cost.flops else 0.0


def images_per_second(model, x: torch.Tensor, passes: int) -> float:
    """Images per second of ``passes`` forward passes of ``model`` on the batch ``x`` (no autograd)."""
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(passes):
            model(x)
        return passes * x.shape[0] / (time.perf_counter() - start)


class OptimizedModel:
    """The callable ``optimize`` returns: ``fast(x)`` is ``model(x)``, compiled, without autograd."""

    def __init__(self, model: torch.nn.Module, channels_last: bool, compiled):
        self.model, self.channels_last, self.compiled = model, channels_last, compiled

    def __call__(self, x: torch.Tensor):
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.compiled is not self.model:
            torch._dynamo.maybe_mark_dynamic(x, 0)
        with torch.inference_mode(), inductor_config.patch(freezing=True):
            return self.compiled(x)

    def __repr__(self) -> str:
        return f"OptimizedModel(channels_last={self.channels_last}, model={type(self.model).__name__})"


def optimize(model: torch.nn.Module, example: torch.Tensor | None = None, channels_last: bool | None = None,
             compile: bool = True) -> OptimizedModel:
    """Prepare ``model`` for CPU inference (in place: eval mode, memory format) and return the
    callable to use instead of it (see the module's docstring). ``channels_last`` overrides the
    conv rule; ``example`` (an input batch) is run once to compile now rather than on first use."""
    model.eval()
    if channels_last is None:
        design = getattr(model, "design", None)
        channels_last = design is not None and conv_share(design) >= CONV_SHARE
    if channels_last:
        model.to(memory_format=torch.channels_last)
    compiled = torch.compile(model) if compile else model
    fast = OptimizedModel(model, channels_last, compiled)
    if example is not None:
        fast(example)
    return fast
