"""GrafT: grafting multi-scale branches onto a vision transformer (``graft`` stage option).

A graft branches off a metaformer block's input ``X^0`` (before its attention) and returns a
term added to the block's attention output before the shared FFN (eq. 4-5):

* left-right pathway (eq. 1): ``X^{b+1} = AdaptiveAvgPool(GELU(LN(X^b)))``, each scale ``ratio``
  times coarser per side, ``scales`` times;
* L-MSA at each coarse scale, coarsest first (eq. 3):
  ``Z^b = X^b + L-MSA(LN(X^b)) + T(Z^{b+1})``, window attention with Swin's relative position
  bias, global at the coarsest scale (its window is the whole map);
* right-left pathway (eq. 2): ``T(Z) = W-Bilinear(sigmoid(E_pos) * Linear(GELU(LN(Z))))``:
  channel mixing, the anti-aliasing embedding (a learned position embedding over the coarse
  grid, through a sigmoid, multiplied in), then bilinear interpolation by ``ratio`` done
  separately inside each window of the coarse scale's L-MSA (one window, a plain bilinear
  upsampling, at the coarsest scale); coarse is merged into fine by addition;
* fusion (eq. 4): ``Y = X + [L-MSA(LN(X)) + T(Z^1)]``, then the backbone's FFN. With
  ``shared_ffn=false`` (table 7) the graft has its own pre-norm FFN (as wide as the stage's) on its
  output, ``G = T(Z^1) + FFN(LN(T(Z^1)))``, and ``G`` is added after the backbone's FFN.

Options: ``blocks`` (``all_but_first``, default: "we attach GrafT to all the vertical layers above
the first layer", section 3.3; ``all``; or a list of block indices of the stage), ``scales`` (1),
``ratio`` (2, the pooling ratio per scale; "downsampling rate 2", section 2.2), ``window`` (the
L-MSA window at the intermediate scales; default the backbone's window size, 7 for a global
attention backbone; clipped to the grid, as Swin does), ``heads`` (default the backbone mixer's),
``qkv_bias``, ``rpb`` (relative position bias in the L-MSA), ``global_coarsest`` (true: the
coarsest scale's L-MSA attends over its whole map at any input size; false: it keeps the window,
so it is global only where the map is no larger than the window, which is how the paper words it,
"global-attention in the coarsest scale, as window-size becomes the same as the resolution"),
``shared_ffn``, ``anti_alias``, ``channel_mix``, ``zero_init``.

Initialisation: LayerNorms at ones and zeros, linears as PyTorch's default (Kaiming-uniform), the
anti-aliasing embedding and the relative position bias table from a normal of std 0.02. A new graft
therefore adds a term at once: on a pretrained backbone it changes the output at step 0
(``examples/graft_pretrained_swin.py`` measures it). ``zero_init=true`` starts the finest scale's
channel-mixing linear at zero, so the graft adds exactly nothing until it has learned (its linear
gets gradients at the first step, the rest of the graft from the second), and the grafted model
starts as the pretrained backbone.

Decisions (checked by parameter arithmetic against the paper's tables, DeiT-T, C = 192, one
scale, 7x7 coarse grid, per graft): down LN 384; L-MSA LN 384 + qkv 111,168 + proj 37,056 +
bias table 13x13x3 = 507; channel mixing LN 384 + Linear 37,056; anti-aliasing embedding
7x7x192 = 9,408; total 196,347. 11 grafts add 2.160M to the 5.723M window-attention DeiT-T:
7.88M (paper 7.9); 4 / 8 grafts 6.51M / 7.29M (6.5 / 7.3); no anti-aliasing 7.78M (7.8); no
channel mixing 7.47M (7.5). The L-MSA therefore has its own LN, qkv and output projection (without
the projection 11 grafts give 7.47M, not 7.9M), with the backbone's heads; ``Z`` keeps its skip
connection as eq. 3 writes it. Swin-T: the grafts sit on every block but the model's first
(stage 1 block 1 with 3 scales, 56 -> 28, 14, 7; stage 2 both blocks with 2; stage 3 all six with
1; stage 4's 7x7 grid cannot be pooled by 2) giving 33.95M (paper 34.0); with one scale everywhere
(global, being the coarsest) 33.45M, 5.01 GFLOPs (paper 33.5, 5.0). The parameters pin this
placement: a graft in stage 4 would add about 3.0M (5C^2 at C = 768), another scale in stage 3
about 0.74M per graft. The 3-scale model's 5.1 GFLOPs is not reachable: its grafts add 0.400 G to
Swin-T's 4.509 (stage 1's graft 0.062, stage 2's two 0.105, stage 3's six 0.234), 4.91 in all,
where 5.05 needs 0.54; even global L-MSA at every scale (``window`` as large as the map, which
section 2.2 rules out: intermediate scales "suffer the information discrepancy between local
regions due to local receptive field") gives 5.047. The
backbone of DeiT-T + GrafT uses Swin's unshifted window attention (section 3.1) with its relative
position bias (12 x 507), no class token and average pooling (window attention has no class
token), 5,723,116 parameters. The separate-FFN row (8.2M) is not reachable: an FFN of the
stage's width (LN 384 + 192x768 + 768x192 + biases = 296,256 per graft) gives 11.14M (and 1.87
GFLOPs against 1.2); +0.3M over 11 grafts would be an FFN about 70 wide, which no reading gives.
With separate FFNs the graft's FFN runs on its upsampled output, the tensor the shared FFN sees.
The class token, where there is one, bypasses the graft (its graft term is zero).
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BeforeValidator, Field, PlainValidator
from timm.layers import Mlp, get_act_layer

from ... import cost as C
from ...cost import TensorShape
from ...layers.windows import (
    bias_table_params,
    fitting_window_sizes,
    merge,
    partition,
    window_geometry,
)
from .. import (
    STAGE_OPTIONS,
    Example,
    ShapeProblem,
    Size,
    StageOption,
    bare_name,
)
from ..mixers.attention import check_heads
from ..mixers.window import WindowAttention


def _blocks(value):
    """One clear error for ``blocks`` instead of one per member of the union."""
    if value in ("all", "all_but_first"):
        return value
    if isinstance(value, list) and value and all(type(i) is int and 0 <= i < 100_000 for i in value):
        return value
    raise ValueError("blocks is all, all_but_first or a non-empty list of block indices (0, 1, ...)")


BlockChoice = Annotated[Literal["all_but_first", "all"] | list[int], PlainValidator(_blocks)]


@STAGE_OPTIONS.register
class GraftSpec(StageOption):
    """``graft(scales=1, ratio=2, blocks=all_but_first, shared_ffn=true, anti_alias=true,
    channel_mix=true, window=null, heads=null, zero_init=false)``: GrafT branches on a metaformer
    stage."""

    kind: Literal["graft"] = "graft"
    blocks: BlockChoice = "all_but_first"
    scales: Annotated[int, Field(ge=1, le=8)] = 1
    ratio: Annotated[int, Field(ge=2, le=16)] = 2
    window: Size | None = None
    heads: Size | None = None
    qkv_bias: bool = True
    rpb: bool = True
    global_coarsest: bool = True
    shared_ffn: bool = True
    anti_alias: bool = True
    channel_mix: bool = True
    zero_init: bool = False

    # -- layout -------------------------------------------------------------------------------
    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4)", "stages": [{"depth": 2, "width": 16, "mixer": "attention(heads=2)", "graft": "graft(scales=2)"},
                                  {"depth": 2, "width": 16, "mixer": "window(size=2, heads=2)", "graft": "graft(blocks=all, shared_ffn=false)"}]},
                       ("3x32x32", "3x32x48"), ("input", "3x36x36"), ("stages", 0, "graft"))

    def positions(self, depth: int) -> list[int]:
        if self.blocks == "all":
            return list(range(depth))
        if self.blocks == "all_but_first":
            return list(range(1, depth))
        return sorted(set(self.blocks))

    def grids(self, shape: TensorShape) -> list[tuple[int, int]]:
        """The grid of each scale, finest (the block's own grid) first; floor division."""
        grids = [(shape.height, shape.width)]
        for _ in range(self.scales):
            h, w = grids[-1]
            grids.append((h // self.ratio, w // self.ratio))
        return grids

    def heads_for(self, mixer) -> int:
        return self.heads or mixer.heads

    def window_for(self, mixer) -> int:
        return self.window or mixer.graft_window()

    def windows(self, shape: TensorShape, mixer) -> list[tuple[int, int]]:
        """The L-MSA window of each coarse scale: the whole map at the coarsest."""
        grids = self.grids(shape)[1:]
        size = self.window_for(mixer)
        windows = [window_geometry(size, h, w, False)[0] for h, w in grids]
        return windows[:-1] + [grids[-1]] if self.global_coarsest else windows

    # -- shape rules --------------------------------------------------------------------------
    def check(self, shape: TensorShape, where: str, stage) -> list[ShapeProblem]:
        """On a metaformer stage (``stage.mixer_at``): every grafted block's mixer offers a window
        (``Mixer.graft_window``), and the scales, ratio and window fit the token grid."""
        depth, mixer_at = stage.depth, stage.mixer_at
        problems = self.blocks_past(self.positions(depth), depth, "all or all_but_first")
        positions = [i for i in self.positions(depth) if i < depth]
        if not positions:
            problems.append(ShapeProblem(("blocks",), f"the graft is on no block of {where} ({depth} block(s))",
                                         "use blocks: all or list block indices"))
            return problems
        mixers = [mixer_at(i) for i in positions]
        bad = [(i, m) for i, m in zip(positions, mixers) if m.graft_window() is None]
        if bad:
            i, m = bad[0]
            problems.append(ShapeProblem((), f"a graft attaches to window or global attention, but block {i} of "
                                         f"{where} mixes with {getattr(m, 'kind', m)}",
                                         "use mixer: window(...) or attention(...), or graft other blocks"))
            return problems
        if self.heads is not None:
            problems += check_heads(self.heads, shape.channels)
        if self.zero_init and not (self.channel_mix and self.shared_ffn):
            problems.append(ShapeProblem(("zero_init",), "zero_init starts the finest scale's channel-mixing linear at "
                                         "zero, which needs channel_mix=true and shared_ffn=true (a separate FFN "
                                         "adds a term of its own even to a zero input)",
                                         "set channel_mix and shared_ffn to true, or zero_init to false"))
        h, w = shape.height, shape.width
        for b in range(1, self.scales + 1):
            if h % self.ratio or w % self.ratio or h < self.ratio or w < self.ratio:
                if b == 1:
                    ratios = [r for r in range(2, 17) if h % r == 0 and w % r == 0]
                    problems.append(ShapeProblem(
                        ("ratio",), f"pooling ratio {self.ratio} does not divide the {shape.height}x{shape.width} "
                        f"token grid of {where}", f"valid ratios: {', '.join(map(str, ratios)) or 'none'}"))
                else:
                    problems.append(ShapeProblem(
                        ("scales",), f"{self.scales} scales of ratio {self.ratio} do not fit the "
                        f"{shape.height}x{shape.width} token grid of {where}: scale {b - 1} is {h}x{w}, which "
                        f"{self.ratio} does not divide", f"valid scales: {', '.join(map(str, range(1, b)))}"))
                return problems
            h, w = h // self.ratio, w // self.ratio
        grids = self.grids(shape)[1:-1] if self.global_coarsest else self.grids(shape)[1:]
        for size in sorted({self.window_for(m) for m in mixers}):
            for b, (h, w) in enumerate(grids, start=1):
                (wh, ww), _ = window_geometry(size, h, w, False)
                if h % wh or w % ww:
                    common = fitting_window_sizes(grids)
                    problems.append(ShapeProblem(
                        ("window",), f"window {size} does not divide the {h}x{w} grid of the graft's scale {b} in "
                        f"{where}", f"valid windows for every scale: {', '.join(map(str, common))}"))
                    return problems
        return problems

    # -- cost ---------------------------------------------------------------------------------
    def cost(self, shape: TensorShape, stage, index: int) -> C.Cost:
        mixer, hidden = stage.mixer_at(index), stage.hidden()
        d, heads = shape.channels, self.heads_for(mixer)
        grids, windows = self.grids(shape), self.windows(shape, mixer)
        cost = C.ZERO
        for b in range(1, self.scales + 1):
            (H, W), (h, w), (wh, ww) = grids[b - 1], grids[b], windows[b - 1]
            fine, n = H * W * d, h * w
            cost = cost + C.layer_norm(fine, d) + C.mean(fine)                          # eq. 1
            table = bias_table_params((wh, ww), heads, self.rpb)
            cost = cost + C.layer_norm(n * d, d) + C.Cost(table, 0) + C.linear(n, d, 3 * d, self.qkv_bias)
            cost = cost + C.attention(n // (wh * ww) * heads, wh * ww, wh * ww, d // heads, d // heads)
            cost = cost + C.linear(n, d, d)                                             # eq. 3
            if self.channel_mix:
                cost = cost + C.layer_norm(n * d, d) + C.linear(n, d, d)
            if self.anti_alias:
                cost = cost + C.Cost(n * d, 0)
            cost = cost + C.Cost(0, 4 * fine)                                           # eq. 2
        if not self.shared_ffn:
            grid = shape.grid * d
            cost = cost + C.layer_norm(grid, d) + C.linear(shape.grid, d, hidden) + C.linear(shape.grid, hidden, d)
        return cost

    # -- module -------------------------------------------------------------------------------
    def build(self, shape: TensorShape, stage, index: int) -> nn.Module:
        mixer, hidden = stage.mixer_at(index), stage.hidden()
        grids, windows = self.grids(shape), self.windows(shape, mixer)
        levels = [GraftLevel(shape.channels, self.heads_for(mixer), grids[b], windows[b - 1], self.ratio,
                             self.qkv_bias, self.rpb, self.channel_mix, self.anti_alias)
                  for b in range(1, self.scales + 1)]
        ffn = None if self.shared_ffn else (nn.LayerNorm(shape.channels),
                                            Mlp(shape.channels, hidden, act_layer=get_act_layer(stage.act)))
        if self.zero_init:
            nn.init.zeros_(levels[0].mix[-1].weight)
            nn.init.zeros_(levels[0].mix[-1].bias)
        return Graft(shape, levels, ffn)

    def describe(self) -> str:
        return f"graft({self.scales} scale{'s' if self.scales > 1 else ''})"


GraftOption = Annotated[GraftSpec, BeforeValidator(bare_name)]


class GraftLevel(nn.Module):
    """One coarse scale: its downsampling (eq. 1), L-MSA (eq. 3) and upsampling (eq. 2)."""

    def __init__(self, dim: int, heads: int, grid: tuple, window: tuple, ratio: int, qkv_bias: bool, rpb: bool,
                 channel_mix: bool, anti_alias: bool):
        super().__init__()
        self.grid, self.window, self.ratio = grid, window, ratio
        self.down_norm = nn.LayerNorm(dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, grid, window, (0, 0), qkv_bias, rpb)
        self.mix = nn.Sequential(nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim)) if channel_mix else None
        if anti_alias:
            self.anti_alias = nn.Parameter(torch.zeros(grid[0], grid[1], dim))
            nn.init.trunc_normal_(self.anti_alias, std=0.02)
        else:
            self.anti_alias = None

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` at the finer scale -> ``(B, h, w, C)`` here."""
        x = F.gelu(self.down_norm(x)).permute(0, 3, 1, 2)
        return F.adaptive_avg_pool2d(x, self.grid).permute(0, 2, 3, 1)

    def process(self, x: torch.Tensor, coarser: torch.Tensor | None) -> torch.Tensor:
        B, h, w, C = x.shape
        z = x + self.attn(self.norm(x).reshape(B, h * w, C)).view(B, h, w, C)
        return z if coarser is None else z + coarser

    def upsample(self, z: torch.Tensor) -> torch.Tensor:
        """``T``: channel mixing, anti-aliasing, bilinear interpolation inside each window."""
        _, h, w, C = z.shape
        if self.mix is not None:
            z = self.mix(z)
        if self.anti_alias is not None:
            z = z * torch.sigmoid(self.anti_alias)
        wh, ww = self.window
        r = self.ratio
        windows = partition(z, self.window).transpose(1, 2).reshape(-1, C, wh, ww)
        up = F.interpolate(windows, scale_factor=r, mode="bilinear", align_corners=False)
        up = up.reshape(-1, C, wh * ww * r * r).transpose(1, 2)
        return merge(up, (wh * r, ww * r), h * r, w * r)


class Graft(nn.Module):
    """The whole branch: ``(B, prefix + H*W, C)`` block input -> the term added to the block."""

    def __init__(self, shape: TensorShape, levels: list[GraftLevel], ffn: tuple | None):
        super().__init__()
        self.prefix, self.grid = shape.prefix, (shape.height, shape.width)
        self.levels = nn.ModuleList(levels)
        if ffn is not None:
            self.ffn_norm, self.ffn = ffn
        else:
            self.ffn_norm = self.ffn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, C = x.shape
        H, W = self.grid
        maps = [x[:, self.prefix:].reshape(B, H, W, C)]
        for level in self.levels:
            maps.append(level.downsample(maps[-1]))
        z = None
        for level, fine in zip(reversed(self.levels), reversed(maps[1:])):
            z = level.upsample(level.process(fine, z))
        out = z.reshape(B, H * W, C)
        if self.ffn is not None:
            out = out + self.ffn(self.ffn_norm(out))
        if self.prefix:
            out = torch.cat([out.new_zeros(B, self.prefix, C), out], dim=1)
        return out
