"""Free conversions between the two feature layouts: tokens ``(B, H*W, C)`` and maps
``(B, C, H, W)``."""
from __future__ import annotations

import torch


def tokens_to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, H*W, C)`` tokens -> ``(B, C, H, W)`` map."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` map -> ``(B, H*W, C)`` tokens."""
    return x.flatten(2).transpose(1, 2)
