"""Tensor shapes and the analytic cost model, in fvcore's convention (a multiply-add is one FLOP).

These formulas mirror what ``archdsl.tools.trace`` counts on the built model: fvcore's handles for
linear, conv, matmul and norm layers, plus archdsl's handles for
``scaled_dot_product_attention`` and ``mean``. Element-wise ops (add, GELU, softmax) cost 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Layout = Literal["NCHW", "NLC"]


@dataclass(frozen=True)
class TensorShape:
    """A feature map per image: ``NCHW`` maps, or ``NLC`` tokens over an ``height x width`` grid
    after ``prefix`` extra tokens (a class token)."""

    layout: Layout
    channels: int
    height: int
    width: int
    prefix: int = 0

    @property
    def grid(self) -> int:
        return self.height * self.width

    @property
    def tokens(self) -> int:
        return self.grid + self.prefix

    @property
    def numel(self) -> int:
        return self.tokens * self.channels

    def with_(self, **changes) -> "TensorShape":
        fields = dict(layout=self.layout, channels=self.channels, height=self.height, width=self.width,
                      prefix=self.prefix)
        fields.update(changes)
        return TensorShape(**fields)

    def __str__(self) -> str:
        extra = f"+{self.prefix}" if self.prefix else ""
        return f"{self.layout} {self.channels}x{self.height}x{self.width}{extra}"


@dataclass(frozen=True)
class Cost:
    """Parameters and FLOPs (multiply-adds) of one image's forward pass; ``conv_flops`` is the part
    of ``flops`` spent in convolutions (``conv2d`` terms), which ``optimize`` reads to choose the
    memory format."""

    params: int = 0
    flops: int = 0
    conv_flops: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.params + other.params, self.flops + other.flops, self.conv_flops + other.conv_flops)

    def __mul__(self, times: int) -> "Cost":
        return Cost(self.params * times, self.flops * times, self.conv_flops * times)


ZERO = Cost()


def total(costs) -> Cost:
    out = ZERO
    for c in costs:
        out = out + c
    return out


def linear(tokens: int, c_in: int, c_out: int, bias: bool = True) -> Cost:
    """``nn.Linear`` over ``tokens`` rows: fvcore counts in*out per row, the bias is free."""
    return Cost(c_in * c_out + (c_out if bias else 0), tokens * c_in * c_out)


def conv2d(out_h: int, out_w: int, c_in: int, c_out: int, kernel: int | tuple, groups: int = 1,
           bias: bool = True) -> Cost:
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    per_out = (c_in // groups) * kh * kw
    flops = out_h * out_w * c_out * per_out
    return Cost(c_out * per_out + (c_out if bias else 0), flops, conv_flops=flops)


def layer_norm(numel: int, channels: int, affine: bool = True) -> Cost:
    """fvcore: 5 FLOPs per element with an affine transform, 4 without."""
    return Cost(2 * channels if affine else 0, numel * (5 if affine else 4))


def batch_norm(numel: int, channels: int, affine: bool = True) -> Cost:
    """fvcore, eval mode: 2 FLOPs per element with an affine transform, 1 without."""
    return Cost(2 * channels if affine else 0, numel * (2 if affine else 1))


def attention(batch_heads: int, q_tokens: int, kv_tokens: int, qk_dim: int, v_dim: int) -> Cost:
    """``softmax(q k^T) v``: the two matrix products (archdsl's handle for SDPA)."""
    return Cost(0, batch_heads * q_tokens * kv_tokens * (qk_dim + v_dim))


def mean(numel: int) -> Cost:
    """A mean over tokens or pixels: one FLOP per input element (as fvcore's adaptive pooling)."""
    return Cost(0, numel)


def grid_sample(out_numel: int) -> Cost:
    """Bilinear sampling (``F.grid_sample``): fvcore's ``aten::grid_sampler`` handle counts 4 FLOPs
    per output element."""
    return Cost(0, 4 * out_numel)
