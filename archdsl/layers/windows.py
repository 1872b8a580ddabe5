"""Windows, shared by window attention, MAT and GrafT: the effective window and shift on a grid and
the window-divides-grid rule, Swin's relative position bias (Liu et al. 2021, eq. 4: its table size,
index and gather), the shifted-window mask (figure 4) and window partition and merge."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..components import ShapeProblem
from ..cost import TensorShape

MASKED = -100.0  # Swin's additive mask for token pairs from different shifted regions


def window_geometry(size: int, height: int, width: int, shifted: bool) -> tuple[tuple, tuple]:
    """Effective window and shift per dimension: ``((wh, ww), (sh, sw))``."""
    window = (min(size, height), min(size, width))
    shift = tuple(w // 2 if shifted and g > w else 0 for g, w in zip((height, width), window))
    return window, shift


def fitting_window_sizes(grids: list[tuple[int, int]]) -> list[int]:
    """Window sizes valid on every grid: each dimension is divided by the window, or is no larger
    than it (then the window shrinks to it)."""
    largest = max(max(g) for g in grids)
    return [s for s in range(1, largest + 1) if all(h % min(s, h) == 0 and w % min(s, w) == 0 for h, w in grids)]


def window_divides(size: int, window: tuple[int, int], shape: TensorShape, where: str, field: tuple = ("size",),
                   grid: str = "token grid") -> list[ShapeProblem]:
    """The window rule: the effective ``window`` (from ``window_geometry``) divides the grid of ``shape``."""
    if shape.height % window[0] or shape.width % window[1]:
        fits = fitting_window_sizes([(shape.height, shape.width)])
        return [ShapeProblem(field, f"window {size} does not divide the {shape.height}x{shape.width} {grid} of {where}",
                             f"valid sizes: {', '.join(map(str, fits))}")]
    return []


def bias_table_params(window: tuple[int, int], heads: int, enabled: bool = True) -> int:
    """Parameters of Swin's relative position bias table (eq. 4): ``(2wh-1)(2ww-1)`` per head."""
    return (2 * window[0] - 1) * (2 * window[1] - 1) * heads if enabled else 0


def relative_position_index(wh: int, ww: int) -> torch.Tensor:
    """Index into the ``(2wh-1)(2ww-1)`` bias table for each pair of tokens of a window (eq. 4)."""
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + wh - 1) * (2 * ww - 1) + rel[..., 1] + ww - 1


def add_position_bias(module: nn.Module, window: tuple, heads: int, enabled: bool) -> None:
    """Swin's relative position bias (eq. 4) on ``module``: a ``(2wh-1)(2ww-1) x heads`` table drawn
    from a normal of std 0.02 and its index buffer; the table is ``None`` when not ``enabled``."""
    if not enabled:
        module.relative_position_bias_table = None
        return
    module.relative_position_bias_table = nn.Parameter(torch.zeros(bias_table_params(window, 1), heads))
    nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)
    module.register_buffer("relative_position_index", relative_position_index(*window), persistent=False)


def relative_bias(module: nn.Module) -> torch.Tensor:
    """``(heads, N, N)``: the bias between the ``N`` tokens of a window, from ``add_position_bias``."""
    return module.relative_position_bias_table[module.relative_position_index].permute(2, 0, 1)


def shifted_window_mask(height: int, width: int, window: tuple, shift: tuple) -> torch.Tensor:
    """``(num_windows, N, N)``: 0 within a region, ``MASKED`` across regions of a shifted window."""
    region = torch.zeros(height, width)
    cuts_h = ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None))
    cuts_w = ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None))
    label = 0
    for h0, h1 in cuts_h:
        for w0, w1 in cuts_w:
            region[h0:h1, w0:w1] = label
            label += 1
    regions = partition(region[None, :, :, None], window).squeeze(-1)
    differ = regions[:, :, None] != regions[:, None, :]
    return torch.zeros(differ.shape).masked_fill(differ, MASKED)


def partition(x: torch.Tensor, window: tuple) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * num_windows, wh * ww, C)``, windows in row-major order."""
    B, H, W, C = x.shape
    wh, ww = window
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def merge(windows: torch.Tensor, window: tuple, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`partition`."""
    wh, ww = window
    C = windows.shape[-1]
    x = windows.view(-1, height // wh, width // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, C)
