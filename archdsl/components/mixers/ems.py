"""C-MHSA and the EMS token mixer (EMSNet; Vo, PhD thesis 2023, chapter 3, sections 3.3.1-3.3.3).

**C-MHSA** (section 3.3.2, eq. 3.9-3.10, figure 3.4), on a ``c x H x W`` map with ``h`` heads, a
``k x k`` window and stride ``s``:

1. attention map (eq. 3.9): a 3x3 depth-wise convolution with stride ``s`` (padding 1) shrinks the
   map to ``L = ceil(H/s) x ceil(W/s)`` positions; ``M`` (``c -> k^2 * k^2 * h``, a 1x1 conv with
   bias) gives each position and head a ``k^2 x k^2`` map; softmax over the ``k x k`` window
   (the last ``k^2``): ``A[l, i, j]`` is how much window position ``j`` feeds position ``i``;
2. values (eq. 3.10): ``Unfold`` (kernel ``k``, stride ``s``, padding ``k // 2``: the same ``L``
   windows), the linear projection ``N`` (``c -> c`` with bias) applied to every unfolded column, as
   ``MM(N, Unfold(X))`` reads; per head ``A @ V`` (``k^2 x k^2`` by ``k^2 x c/h``); ``Fold`` sums the
   overlapping windows back into the ``H x W`` map.

Decisions for C-MHSA: no softmax scale and no output projection (eq. 3.9-3.10 have none; inside
EMS the fusion conv of eq. 3.8 follows); ``k`` odd (``Unfold`` and the 3x3 convolution then give
the same ``L`` at every size, any ``H, W >= 1``); ``s <= k`` (else ``Fold`` leaves pixels no window
covers); ``h`` divides ``c``.

**EMS mixer** (section 3.3.1, eq. 3.1-3.8, figure 3.3), on a ``C x H x W`` map. A slice gives the
static part ``X_s`` (``C_s`` channels) and the dynamic part ``X_d`` (``C_d = C - C_s``); the mixer's
output is ``Concat(Y_s, Y_d)``.

* Static (eq. 3.1-3.5): whitening ``X_w = Conv1x1(X_s) - mean(Conv1x1(X_s))``; a ``dw_kernel``
  depth-wise conv gives ``X_m``, split ``split`` (default 1/4 : 1/2 : 1/4, appendix 3.7.4) into
  ``X_m1, X_m2, X_m3``; ``Y_m1 = Prop(CoordDW(PE_1(X_m1)))`` and ``Y_m2 = Prop(CoordDW(PE_2(X_m3)))``
  with PE = max-pool ``p`` + a 1x1 conv "to map the input to a higher dimension" (``c -> d =
  pe_ratio * c``), CoordDW = depth-wise ``1 x k_d`` then ``k_d x 1``, Prop = depth-wise transposed
  conv with kernel = stride = ``p`` (both on ``d`` channels); ``Y_c = Conv1x1(Concat(Y_m1, X_m2,
  Y_m2))``, ``d_1 + C_s/2 + d_2 -> C_s``; gated aggregation ``Y_s = Conv1x1(X_s) * sigmoid(Y_c)``.
* Dynamic (eq. 3.6-3.8): ``X_d`` halves; ``Y_d1 = Prop(C-MHSA(PE_3(X_d1)))``,
  ``Y_d2 = Prop(G-MHSA(PE_4(X_d2)))`` with PE = adaptive average pooling + 1x1 conv (``C_d/2 -> e
  = pe_ratio * C_d/2``, the ``C_1`` of section 3.3.2), C-MHSA and G-MHSA (global multi-head
  self-attention, qkv and output projections as ViT) and Prop on ``e`` channels; ``Y_d = Conv1x1(
  Concat(Y_d1, Y_d2))``, ``2e -> C_d``.

Decisions where the thesis is silent (table 3.1 is checked in ``specs/emsnet_*.yaml``):

* ``C_s = static_ratio * C``, default 1/2 (the thesis never gives ``C_s : C_d``); ``C_d`` must be
  even (``C_d/2`` each for C-MHSA and G-MHSA). The tables agree with 1/2 at ``pe_ratio=2``:
  3/8 gives XXTiny 2.66M (106%) and Tiny 5.67M (105%), 5/8 2.39M (96%) and 5.09M (94%).
* Whitening subtracts the mean of each channel over all pixels (``whiten=spatial``, default):
  appendix 3.7.1 defines it with ``mu = mean over the set of all pixels`` and motivates it by
  removing the global (zero-frequency) component, figure 3.8; the literal "mean along the channel
  axis" of eq. 3.1, a mean over the channels of each pixel, is ``whiten=channel``; ``whiten=none``
  drops the whitening, conv and mean (table 3.5's rows before "+Whiten").
* The projection ``Conv1x1(X_s)`` of eq. 3.5 is its own ``C_s x C_s`` conv, not the whitening
  conv of eq. 3.1 (both are written ``Conv1x1(X_s)``): table 3.5 adds parameters both for
  "+Whiten" (0.15M) and for "+Gated Aggregation" (0.30M), which a shared conv would not.
  ``gate=false`` (table 3.5) drops the projection and the sigmoid: ``Y_s = Y_c``.
* Kernel sizes of the static operators ("analyzed in Appendices", which give none):
  ``dw_kernel=3`` (the thesis' only depth-wise kernel, C-MHSA's) and ``coord_kernel=7``
  (appendix eq. 3.11 argues coordinate DWConv for ``k_d > 1``; the sparse maps are 2-4x coarser).
  Both odd ("same" padding). Each costs ``k`` parameters per channel: they move no table figure.
* The dynamic PEs' "adaptive pooling" averages (PyTorch's adaptive average pooling; the static
  PEs name max-pooling).
* **PE width** (``pe_ratio``, default 2): section 3.3.1 has each PE's 1x1 conv "map the input to a
  higher dimension" and 3.3.2 gives the embedded C-MHSA input a new width ``C_1``, so the conv
  widens its part; the text never says by how much. Every conv after it up to the fusion is
  depth-wise or attention, so it stays at the new width, and the fusion convs of eq. 3.4 and 3.8
  map the concatenations back to ``C_s`` and ``C_d``. The tables pick the size. Table 3.7 prices
  the static split: moving XXTiny from ``1/4:1/2:1/4`` to ``1/2:1/4:1/4`` or ``1/4:1/4:1/2``
  costs +0.03M (2.56 -> 2.59). With ``d = r * c`` the PE gains ``r (C_s/2)^2 - r (C_s/4)^2`` and
  the fusion input ``(r/4 - 1/4) C_s``, so the change is ``(7r/16 - 1/4) C_s^2`` summed over the
  blocks (``sum C_s^2 = 37,376``), plus the wider CoordDW/Prop. Measured: r = 1 +10,000
  (2.57), **r = 2 +29,344 / +32,608** (2.59), r = 3 +48,688, r = 4 +68,032; widening every PE to
  its branch's width (``C_s``, ``C_d``) changes nothing (PE +``C_s^2/4``, fusion ``-C_s^2/4``),
  and to the block's width ``C`` gives +9,344. Only r = 2 gives the +0.03M. Table 3.1 agrees:
  r = 2 gives XXTiny 2,498,442 (2.5M) and Tiny 5,319,807 (5.4M, 98.5%), while r = 1 gives 86%
  and 84%, r = 3 117% and 116%, and the block's width ``C`` on all four PEs 143% and 143% (its
  G-MHSA alone is ``4C^2`` per block). ``pe_ratio=1`` is the previous reading (every PE keeps the
  width of its part); it is kept for ablations.
* Patch sizes ``patches=[p1, p2, p3, p4]``, default ``[2, 4, 4, 6]`` (section 3.3.3), any size at any
  grid: a grid not divisible by ``p`` is covered by ``ceil(H/p) x ceil(W/p)`` patches -- max-pooling
  with ``ceil_mode`` (the last row/column of patches is partial), adaptive average pooling to that
  size (the last windows overlap their neighbours) -- and the propagation's ``ceil(H/p) * p`` rows
  and columns are cropped to ``H x W`` (top-left aligned). At 224x224 this is needed: stage 4's 7x7
  grid is covered by grids of 4x4, 2x2, 2x2 and 2x2 patches, stage 3's 14x14 by 7x7, 4x4, 4x4, 3x3. So no
  grid size is refused; ``check`` refuses channel counts the slices cannot make (with the widths
  that work), PE widths that are not whole, heads that do not divide their widened part, even
  kernels and ``stride > k``.
* All 1x1 and depth-wise convs have a bias; no norm or activation inside the mixer (none is named).

Cost (fvcore convention; max-pool, slices, crops, unfold/fold, softmax, sigmoid and products cost
0; ``aten::mean`` and ``adaptive_avg_pool2d`` 1 per input element; a transposed conv ``c p^2`` per
input pixel). With ``N = HW``, ``n_i`` the pixels of the ``p_i``-pooled grid, ``L`` the C-MHSA
positions on ``n_3``'s grid, ``c_1, c_2, c_3`` the static parts, ``d_1 = r c_1``, ``d_2 = r c_3``
and ``e = r C_d/2`` the PE widths::

    C-MHSA(c, h, k):   L*c*9 (DWConv) + L*c*k^4*h (M) + L*k^2*c^2 (N) + L*k^4*c (A @ V)
    static:  N*C_s^2 + N*C_s (whiten)  + N*C_s*k_dw^2  + N*(d_1 + c_2 + d_2)*C_s (fusion)
             + N*C_s^2 (projection) + sum over (c_1, d_1, p_1), (c_3, d_2, p_2): n*c*d + 2*n*d*k_d + n*d*p^2
    dynamic: N*C_d (pooling) + (n_3 + n_4)*(C_d/2)*e (PE) + C-MHSA(e) + n_3*e*p3^2
             + MHSA(n_4 tokens, e) + n_4*e*p4^2 + N*2e*C_d (fusion)

with ``MHSA(n, c) = 4*n*c^2 + 2*n^2*c``. Parameters: each conv ``c_in/g * k_h * k_w * c_out + c_out``.

**Against table 3.1** (``pe_ratio=2``, heads as in the specs: ``C/32`` per stage, 16 channels
per head after the PE; analytic = fvcore trace, 224x224):

=========  ===========================  ===============================  ======================
model      params (paper)               GFLOPs (paper)                   measured / paper
=========  ===========================  ===============================  ======================
XXTiny     2,498,442 (2.5; 2.56 in      0.471 (0.5; 0.54 in table 3.5)   99.9% / 94.2% (97.6%
           table 3.5)                                                    / 87.2% of 2.56/0.54)
XTiny      2,262,375 (3.0)              0.610 (0.7)                      75.4% / 87.1%
Tiny       5,319,807 (5.4)              1.663 (1.9)                      98.5% / 87.5%
=========  ===========================  ===============================  ======================

XXTiny meets table 3.1 (params within 0.1%, FLOPs within the printed rounding) and Tiny's params are
within 5%; Tiny's and XTiny's FLOPs and XTiny's params are not reachable by any reading found.

Per module, params / MFLOPs, XXTiny | XTiny | Tiny. Outside the mixer (1,805,832 / 422.1 |
1,583,944 / 543.8 | 3,778,280 / 1501.8): channel MLPs (fixed by table 3.1) 1,284,160 / 337.2 |
1,253,856 / 465.6 | 3,011,552 / 1271.7; classifier 193,000 | 129,000 | 257,000; 3x3 stride-2
downsamplings 313,728 / 39.7 | 184,608 / 30.7 | 461,280 / 79.5; stem 10,208 / 40.7 | 10,208 / 40.7 |
38,848 / 139.3; block and final norms 4,736 / 4.2 | 6,272 / 6.5 | 9,600 / 11.1. EMS mixers
692,610 / 48.9 | 678,431 / 65.8 | 1,541,527 / 160.8: whitening 37,920 / 7.5 | 35,824 / 10.1 |
84,848 / 25.2; DWConv 5,440 / 1.9 | 7,520 / 2.9 | 11,360 / 5.0; p_1 and p_2 patch mixers 24,576 /
1.0 | 29,824 / 1.4 | 52,736 / 2.8; static fusion 56,608 / 11.0 | 53,360 / 14.6 | 126,704 / 37.0;
gate projection 37,920 / 7.3 | 35,824 / 9.7 | 84,848 / 24.7; C-MHSA branches 263,810 / 2.9 |
255,775 / 4.0 | 588,055 / 9.1 (``M`` alone 191,970 on XXTiny); G-MHSA branches 191,040 / 2.6 |
189,408 / 3.5 | 424,416 / 7.6; dynamic fusion 75,296 / 14.7 | 70,896 / 19.5 | 168,560 / 49.4.
Head counts are not given; ``M`` grows with them: one head per 8 channels after the PE would give
XXTiny 2.69M (108%) and Tiny 5.75M (106%), one per 32 2.40M (96%) and 5.10M (94%); the specs keep one
head per 8 channels of the sliced part, as before the PE was widened.

Why the rest is not reached: (1) FLOPs. All three fall short by the same amount per block:
68.9M | 90.4M | 237.4M is 2.35 | 2.32 | 2.40 times ``F = sum over blocks of H W C^2`` (29.3M |
38.9M | 98.7M), i.e. what 2.3-2.4 more full-resolution ``C x C`` 1x1 convs per block would cost.
But the parameters already match (XXTiny, Tiny), and such convs would add 2.35 ``sum C^2``
(0.35M | 0.33M | 0.80M, to 114% | 86% | 113%); no equation of section 3.3 has them (the text
slices the input instead of projecting it, section 3.3.1). Widening further does not help either:
r = 4 reaches 0.505 | 0.653 | 1.77 GFLOPs only at 138% of the parameters. (2) Table 3.5's baseline,
XXTiny with an identity mixer, is 2.09M / 0.48G; here the model without its mixers is 1.81M /
0.42G, 1.48M of it the MLPs and classifier the table fixes. The excess, 0.284M / 57.9M, is again
1.9 ``sum C^2`` / 2.0 ``F``: again what a pair of full-resolution ``C x C`` convs per block
would cost, now outside the mixer, where the text has only the 3x3 stem, the downsamplings
and the MLPs, none of which can hold it.
With it table 3.5 would sum to 2.78M at r = 2 against its own 2.56M. Its other rows do not price
operators consistently under any reading (whitening +0.15M = ``sum C^2`` and gated aggregation
+0.30M = 2 ``sum C^2``, while eq. 3.1 and 3.5 each add one ``C_s x C_s`` conv, 37,920 here; the
p=4 row and the G-MHSA row lower the count), so they fix no width. (3) XTiny's row cannot hold
together with XXTiny's under any reading: its table-fixed parts (MLPs, classifier) are 0.09M
smaller than XXTiny's and its blocks' ``sum C^2`` is smaller (140,288 against 149,504), so every part growing with the
width is smaller too (its mixers 678,431 against 692,610), yet the table gives it 0.5M more; only
parameters growing with depth alone (~60k per block) could do that, and no operator does.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from ... import cost as C
from ...cost import TensorShape
from ...layers.layout import map_to_tokens, tokens_to_map
from .. import (
    MIXERS,
    SMALL_GRIDS,
    Example,
    Mixer,
    ShapeProblem,
    Size,
    divisors,
    plain_grid,
)
from .attention import MultiHeadAttention, mhsa_cost

Fraction = Annotated[float, Field(gt=0, lt=1)]
Expansion = Annotated[float, Field(ge=1, le=16)]


def _pooled(size: int, patch: int) -> int:
    """Patches per side covering ``size`` pixels (the last one partial)."""
    return -(-size // patch)


def _positions(size: int, stride: int) -> int:
    """C-MHSA window positions per side: a 3x3/stride conv with padding 1, or an odd-k unfold."""
    return (size - 1) // stride + 1


def _odd(value: int, name: str, what: str) -> list[ShapeProblem]:
    if value % 2 == 0:
        return [ShapeProblem((name,), f"{what} {value} is even, so no padding keeps the map's size",
                             f"use an odd size: {value - 1} or {value + 1}")]
    return []


def _heads(heads: int, channels: int, name: str, part: str) -> list[ShapeProblem]:
    if channels % heads:
        return [ShapeProblem((name,), f"{heads} heads do not divide the {channels} channels of {part}",
                             f"valid {name}: {', '.join(map(str, divisors(channels)))}")]
    return []


# ----------------------------------------------------------------------------------------- C-MHSA


class ConvMultiHeadAttention(nn.Module):
    """C-MHSA (eq. 3.9-3.10) on a ``(B, c, H, W)`` map."""

    def __init__(self, dim: int, heads: int, kernel: int = 3, stride: int = 2):
        super().__init__()
        self.heads, self.kernel, self.stride = heads, kernel, stride
        self.shrink = nn.Conv2d(dim, dim, 3, stride, 1, groups=dim)  # DWConv 3x3, stride s
        self.attn = nn.Conv2d(dim, kernel ** 4 * heads, 1)  # M
        self.value = nn.Linear(dim, dim)  # N

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """``A``: ``(B, h, L, k^2, k^2)``, softmax over the window (eq. 3.9)."""
        B, k2 = x.shape[0], self.kernel ** 2
        logits = self.attn(self.shrink(x))
        return logits.reshape(B, self.heads, k2, k2, -1).permute(0, 1, 4, 2, 3).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, c, H, W = x.shape
        h, k, k2 = self.heads, self.kernel, self.kernel ** 2
        cols = F.unfold(x, k, padding=k // 2, stride=self.stride)  # B, c*k^2, L
        L = cols.shape[-1]
        v = self.value(cols.view(B, c, k2, L).permute(0, 2, 3, 1))  # N on every unfolded column
        v = v.reshape(B, k2, L, h, c // h).permute(0, 3, 2, 1, 4)  # B, h, L, k^2, c/h
        out = torch.matmul(self.attention(x), v)  # B, h, L, k^2, c/h
        out = out.permute(0, 1, 4, 3, 2).reshape(B, c * k2, L)
        return F.fold(out, (H, W), k, padding=k // 2, stride=self.stride)


def cmhsa_cost(channels: int, height: int, width: int, heads: int, kernel: int, stride: int) -> C.Cost:
    """C-MHSA's parameters and FLOPs on a ``channels x height x width`` map."""
    lh, lw = _positions(height, stride), _positions(width, stride)
    L, k2 = lh * lw, kernel ** 2
    return (C.conv2d(lh, lw, channels, channels, 3, groups=channels)
            + C.conv2d(lh, lw, channels, k2 * k2 * heads, 1)
            + C.linear(L * k2, channels, channels)
            + C.Cost(0, L * k2 * k2 * channels))


class MapMixer(nn.Module):
    """Runs a map module ``(B, C, H, W) -> same`` on ``(B, H*W, C)`` tokens of a fixed grid."""

    def __init__(self, grid: tuple[int, int], inner: nn.Module):
        super().__init__()
        self.grid, self.inner = grid, inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return map_to_tokens(self.inner(tokens_to_map(x, self.grid)))


class TokenMixerOnMap(nn.Module):
    """Runs a token module ``(B, N, C) -> same`` on a ``(B, C, H, W)`` map."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tokens_to_map(self.inner(map_to_tokens(x)), x.shape[-2:])


ON_A_MAP = "works on a token map"

@MIXERS.register
class ConvMultiHeadAttentionSpec(Mixer):
    """``cmhsa(heads=2, k=3, stride=2)``: EMSNet's convolution-based MHSA on the whole token map
    (attention over overlapping ``k x k`` windows every ``stride`` pixels, eq. 3.9-3.10)."""

    kind: Literal["cmhsa"] = "cmhsa"
    heads: Size = 1
    k: Size = 3
    stride: Size = 2

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4)", "stages": [{"depth": 2, "width": 16, "mixer": "cmhsa(heads=2, k=3, stride=2)"}]},
                       SMALL_GRIDS, ("stem", "patch_embed(patch=4, cls_token=true)"), ("stages", 0, "mixer"))

    def check(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        problems = plain_grid(shape, "C-MHSA", where, needs=ON_A_MAP) + _odd(self.k, "k", "window")
        if self.stride > self.k:
            problems.append(ShapeProblem(("stride",), f"stride {self.stride} is larger than the {self.k}x{self.k} "
                                         "window, so some pixels are in no window", f"use stride <= {self.k}"))
        return problems + _heads(self.heads, shape.channels, "heads", where)

    def cost(self, shape: TensorShape, index: int) -> C.Cost:
        return cmhsa_cost(shape.channels, shape.height, shape.width, self.heads, self.k, self.stride)

    def build(self, shape: TensorShape, index: int) -> nn.Module:
        return MapMixer((shape.height, shape.width),
                        ConvMultiHeadAttention(shape.channels, self.heads, self.k, self.stride))

    def describe(self, shape: TensorShape, index: int) -> str:
        lh, lw = _positions(shape.height, self.stride), _positions(shape.width, self.stride)
        return f"cmhsa({self.k}x{self.k} windows at {lh}x{lw}, heads={self.heads})"


# -------------------------------------------------------------------------------------- EMS mixer


class Propagation(nn.Module):
    """Depth-wise transposed conv, kernel = stride = ``p``, cropped to ``size`` (eq. 3.2-3.3, 3.6-3.7).

    Where one patch covers the whole map (``size`` at most ``p`` per side, so the pooled map is 1x1)
    the transposed conv is one product per channel, ``y[b, c] = x[b, c] * w[c] + bias[c]``, and is
    computed as that einsum with the conv's own parameters: the same values and the same count
    (fvcore counts the einsum's ``c p^2`` multiply-adds as it counts the conv's), while torch 2.14's
    inductor, with freezing, miscompiles a depth-wise transposed conv on a 1x1 map (its stride
    assertion fails; found by the conformance suite at a 4x4 grid)."""

    def __init__(self, dim: int, patch: int, size: tuple[int, int]):
        super().__init__()
        self.size, self.whole = size, size[0] <= patch and size[1] <= patch
        self.conv = nn.ConvTranspose2d(dim, dim, patch, stride=patch, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.whole:
            y = torch.einsum("bc,cpq->bcpq", x.flatten(1), self.conv.weight[:, 0]) + self.conv.bias[:, None, None]
        else:
            y = self.conv(x)
        return y[..., :self.size[0], :self.size[1]]


class PatchMixer(nn.Module):
    """One static multi-scale branch (eq. 3.2-3.3): PE (max-pool ``p`` + 1x1 conv from the part's
    ``dim_in`` channels to the higher ``dim``), coordinate DWConv (``1 x k`` then ``k x 1``),
    propagation, all three on ``dim`` channels."""

    def __init__(self, dim_in: int, dim: int, patch: int, kernel: int, size: tuple[int, int]):
        super().__init__()
        self.pool = nn.MaxPool2d(patch, patch, ceil_mode=True)
        self.proj = nn.Conv2d(dim_in, dim, 1)
        self.conv_h = nn.Conv2d(dim, dim, (1, kernel), padding=(0, kernel // 2), groups=dim)
        self.conv_v = nn.Conv2d(dim, dim, (kernel, 1), padding=(kernel // 2, 0), groups=dim)
        self.prop = Propagation(dim, patch, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prop(self.conv_v(self.conv_h(self.proj(self.pool(x)))))


class StaticBranch(nn.Module):
    """Eq. 3.1-3.5: whitening, DWConv, multi-scale patch mixers, fusion, gated aggregation."""

    def __init__(self, dim: int, parts: tuple[int, int, int], expanded: tuple[int, int], patches: tuple[int, int],
                 dw_kernel: int, coord_kernel: int, whiten: str, gate: bool, size: tuple[int, int]):
        super().__init__()
        self.parts, self.whiten = parts, whiten
        self.whiten_conv = nn.Conv2d(dim, dim, 1) if whiten != "none" else None
        self.dwconv = nn.Conv2d(dim, dim, dw_kernel, padding=dw_kernel // 2, groups=dim)
        self.mix1 = PatchMixer(parts[0], expanded[0], patches[0], coord_kernel, size)
        self.mix2 = PatchMixer(parts[2], expanded[1], patches[1], coord_kernel, size)
        self.fuse = nn.Conv2d(expanded[0] + parts[1] + expanded[1], dim, 1)
        self.value = nn.Conv2d(dim, dim, 1) if gate else None

    def whitened(self, x: torch.Tensor) -> torch.Tensor:
        """``X_w`` (eq. 3.1)."""
        if self.whiten_conv is None:
            return x
        y = self.whiten_conv(x)
        return y - y.mean(dim=(2, 3) if self.whiten == "spatial" else 1, keepdim=True)

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """``Y_c`` (eq. 3.2-3.4)."""
        m1, m2, m3 = self.dwconv(self.whitened(x)).split(self.parts, dim=1)
        return self.fuse(torch.cat([self.mix1(m1), m2, self.mix2(m3)], dim=1))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """``sigmoid(Y_c)``, the gate of eq. 3.5."""
        return torch.sigmoid(self.fused(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fused(x)
        return y if self.value is None else self.value(x) * torch.sigmoid(y)


class PooledMixer(nn.Module):
    """A dynamic branch (eq. 3.6-3.7): PE (adaptive average pooling to ``ceil(H/p) x ceil(W/p)`` +
    1x1 conv from ``dim_in`` to the higher ``dim``), a mixer on the pooled ``dim``-channel map,
    propagation."""

    def __init__(self, dim_in: int, dim: int, patch: int, size: tuple[int, int], mixer: nn.Module):
        super().__init__()
        self.pooled = (_pooled(size[0], patch), _pooled(size[1], patch))
        self.proj = nn.Conv2d(dim_in, dim, 1)
        self.mixer = mixer
        self.prop = Propagation(dim, patch, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prop(self.mixer(self.proj(F.adaptive_avg_pool2d(x, self.pooled))))


class DynamicBranch(nn.Module):
    """Eq. 3.6-3.8: C-MHSA and G-MHSA branches on the two halves (each widened to ``expanded`` by its
    PE), fused back to ``dim`` channels by a 1x1 conv."""

    def __init__(self, dim: int, expanded: int, patches: tuple[int, int], c_heads: int, g_heads: int, k: int,
                 stride: int, size: tuple[int, int], qkv_bias: bool):
        super().__init__()
        half, e = dim // 2, expanded
        self.local = PooledMixer(half, e, patches[0], size, ConvMultiHeadAttention(e, c_heads, k, stride))
        self.glob = PooledMixer(half, e, patches[1], size, TokenMixerOnMap(MultiHeadAttention(e, g_heads, qkv_bias)))
        self.fuse = nn.Conv2d(2 * e, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return self.fuse(torch.cat([self.local(x1), self.glob(x2)], dim=1))


class EMSMixer(nn.Module):
    """The EMS block's token mixer on a ``(B, C, H, W)`` map: ``Concat(Y_s, Y_d)`` of the static
    branch on the first ``C_s`` channels and the dynamic branch on the rest."""

    def __init__(self, static_channels: int, static: StaticBranch, dynamic: DynamicBranch):
        super().__init__()
        self.static_channels, self.static, self.dynamic = static_channels, static, dynamic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cs = self.static_channels
        return torch.cat([self.static(x[:, :cs]), self.dynamic(x[:, cs:])], dim=1)


@MIXERS.register
class EMSSpec(Mixer):
    """``ems(c_heads=1, g_heads=1, static_ratio=0.5, split=[0.25, 0.5, 0.25], patches=[2, 4, 4, 6],
    pe_ratio=2, dw_kernel=3, coord_kernel=7, whiten=spatial, gate=true, k=3, stride=2, qkv_bias=true)``:
    the EMS block's multi-scale spatial interaction (eq. 3.1-3.8); ``pe_ratio`` is how much each patch
    embedding's 1x1 conv widens its part (1 keeps the width); ``c_heads``/``k``/``stride`` are C-MHSA's,
    ``g_heads``/``qkv_bias`` G-MHSA's, both on the widened parts. Decisions in the module docstring."""

    kind: Literal["ems"] = "ems"
    c_heads: Size = 1
    g_heads: Size = 1
    static_ratio: Fraction = 0.5
    split: Annotated[list[Fraction], Field(min_length=3, max_length=3)] = [0.25, 0.5, 0.25]
    patches: Annotated[list[Size], Field(min_length=4, max_length=4)] = [2, 4, 4, 6]
    pe_ratio: Expansion = 2
    dw_kernel: Size = 3
    coord_kernel: Size = 7
    whiten: Literal["spatial", "channel", "none"] = "spatial"
    gate: bool = True
    k: Size = 3
    stride: Size = 2
    qkv_bias: bool = True

    @classmethod
    def example(cls) -> Example:
        return Example({"stem": "patch_embed(patch=4)", "stages": [{"depth": 2, "width": 32, "mixer": "ems(patches=[2, 4, 4, 6])"}]},
                       SMALL_GRIDS, ("stages.0.width", 30), ("stages", 0, "mixer"))

    def widths(self, channels: int) -> tuple[int, tuple[int, int, int], int] | None:
        """``(C_s, (c_m1, c_m2, c_m3), C_d)``, or None where the slices are not whole channels or
        ``C_d`` is odd."""
        cs = channels * self.static_ratio
        parts = [cs * r for r in self.split]
        whole = [round(v) for v in [cs, *parts]]
        if any(abs(v - w) > 1e-6 or w < 1 for v, w in zip([cs, *parts], whole)) or sum(whole[1:]) != whole[0]:
            return None
        cd = channels - whole[0]
        return (whole[0], tuple(whole[1:]), cd) if cd >= 2 and cd % 2 == 0 else None

    def expanded(self, channels: int) -> tuple[int, int, int] | None:
        """The patch embeddings' output widths ``(d_1, d_2, d_3)``: ``pe_ratio`` times the parts
        ``X_m1``, ``X_m3`` (static) and ``C_d / 2`` (each dynamic half); None where not whole."""
        sizes = self.widths(channels)
        if sizes is None:
            return None
        (_, (c1, _, c3), cd) = sizes
        wide = [c * self.pe_ratio for c in (c1, c3, cd // 2)]
        whole = [round(v) for v in wide]
        return tuple(whole) if all(abs(v - w) < 1e-6 for v, w in zip(wide, whole)) else None

    def valid_widths(self, channels: int) -> list[int]:
        """Widths near ``channels`` that every slice, the PE widths and both head counts accept."""
        ok = [w for w in range(1, 2 * channels + 65) if (wide := self.expanded(w))
              and wide[2] % self.c_heads == 0 and wide[2] % self.g_heads == 0]
        return sorted(ok, key=lambda w: (abs(w - channels), w))[:6]

    def check(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        problems = plain_grid(shape, "the EMS mixer", where, needs=ON_A_MAP)
        problems += _odd(self.dw_kernel, "dw_kernel", "DWConv kernel") + _odd(self.coord_kernel, "coord_kernel",
                                                                              "coordinate DWConv kernel")
        problems += _odd(self.k, "k", "C-MHSA window")
        if self.stride > self.k:
            problems.append(ShapeProblem(("stride",), f"C-MHSA stride {self.stride} is larger than its {self.k}x"
                                         f"{self.k} window, so some pixels are in no window", f"use stride <= {self.k}"))
        if abs(sum(self.split) - 1) > 1e-6:
            problems.append(ShapeProblem(("split",), f"the static split {':'.join(f'{r:g}' for r in self.split)} "
                                         f"sums to {sum(self.split):g}", "use fractions summing to 1, e.g. "
                                         "[0.25, 0.5, 0.25]"))
            return problems
        d = shape.channels
        sizes = self.widths(d)
        valid = ", ".join(map(str, sorted(self.valid_widths(d)))) or "none"
        if sizes is None:
            cs = d * self.static_ratio
            parts = ", ".join(f"{cs * r:g}" for r in self.split)
            if abs(cs - round(cs)) > 1e-6 or not 1 <= round(cs) <= d - 2 or (d - round(cs)) % 2:
                problems.append(ShapeProblem(("static_ratio",), f"static_ratio {self.static_ratio:g} of the width "
                                             f"{d} of {where} gives {cs:g} static channels and {d - cs:g} dynamic "
                                             "ones; both must be whole, the dynamic ones even (C-MHSA and G-MHSA "
                                             "halves)", f"widths that work: {valid}"))
            else:
                problems.append(ShapeProblem(("split",), f"the static split {':'.join(f'{r:g}' for r in self.split)}"
                                             f" of {round(cs)} static channels (width {d} of {where}) gives {parts} "
                                             "channels, not whole ones", f"widths that work: {valid}"))
            return problems
        wide = self.expanded(d)
        if wide is None:
            c1, _, c3 = sizes[1]
            problems.append(ShapeProblem(("pe_ratio",), f"pe_ratio {self.pe_ratio:g} widens the parts of {c1}, {c3} "
                                         f"and {sizes[2] // 2} channels (width {d} of {where}) to "
                                         + ", ".join(f"{c * self.pe_ratio:g}" for c in (c1, c3, sizes[2] // 2))
                                         + " channels, not whole ones", f"widths that work: {valid}"))
            return problems
        for name, heads, part in (("c_heads", self.c_heads, "C-MHSA"), ("g_heads", self.g_heads, "G-MHSA")):
            problems += _heads(heads, wide[2], name, f"its {part} part after the patch embedding ({where}, width {d})")
        return problems

    def parts(self, shape: TensorShape) -> dict[str, C.Cost]:
        """The cost of each part of the mixer (see the module docstring); ``cost`` is their sum."""
        H, W = shape.height, shape.width
        cs, (c1, c2, c3), cd = self.widths(shape.channels)
        d1, d2, e = self.expanded(shape.channels)
        half = cd // 2
        p1, p2, p3, p4 = self.patches

        def patch_mixer(c: int, d: int, p: int) -> C.Cost:
            h, w = _pooled(H, p), _pooled(W, p)
            return (C.conv2d(h, w, c, d, 1) + C.conv2d(h, w, d, d, (1, self.coord_kernel), groups=d)
                    + C.conv2d(h, w, d, d, (self.coord_kernel, 1), groups=d) + C.conv2d(h, w, d, d, p, groups=d))

        def pooled(p: int, mixer) -> C.Cost:
            h, w = _pooled(H, p), _pooled(W, p)
            return (C.mean(H * W * half) + C.conv2d(h, w, half, e, 1) + mixer(h, w)
                    + C.conv2d(h, w, e, e, p, groups=e))

        whiten = C.conv2d(H, W, cs, cs, 1) + C.mean(H * W * cs) if self.whiten != "none" else C.ZERO
        return {
            "whiten": whiten,
            "dwconv": C.conv2d(H, W, cs, cs, self.dw_kernel, groups=cs),
            "patch_mixer_1": patch_mixer(c1, d1, p1),
            "patch_mixer_2": patch_mixer(c3, d2, p2),
            "static_fusion": C.conv2d(H, W, d1 + c2 + d2, cs, 1),
            "gate_projection": C.conv2d(H, W, cs, cs, 1) if self.gate else C.ZERO,
            "cmhsa_branch": pooled(p3, lambda h, w: cmhsa_cost(e, h, w, self.c_heads, self.k, self.stride)),
            "gmhsa_branch": pooled(p4, lambda h, w: mhsa_cost(1, h * w, e, self.g_heads, self.qkv_bias)),
            "dynamic_fusion": C.conv2d(H, W, 2 * e, cd, 1),
        }

    def cost(self, shape: TensorShape, index: int) -> C.Cost:
        return C.total(self.parts(shape).values())

    def build(self, shape: TensorShape, index: int) -> nn.Module:
        size = (shape.height, shape.width)
        cs, parts, cd = self.widths(shape.channels)
        d1, d2, e = self.expanded(shape.channels)
        static = StaticBranch(cs, parts, (d1, d2), tuple(self.patches[:2]), self.dw_kernel, self.coord_kernel,
                              self.whiten, self.gate, size)
        dynamic = DynamicBranch(cd, e, tuple(self.patches[2:]), self.c_heads, self.g_heads, self.k, self.stride,
                                size, self.qkv_bias)
        return MapMixer(size, EMSMixer(cs, static, dynamic))

    def describe(self, shape: TensorShape, index: int) -> str:
        cs, _, _ = self.widths(shape.channels)
        e = self.expanded(shape.channels)[2]
        p3, p4 = self.patches[2:]
        g = f"{_pooled(shape.height, p4)}x{_pooled(shape.width, p4)}"
        return (f"ems(static {cs} p{self.patches[0]}/p{self.patches[1]}, C-MHSA {e}x{self.c_heads}h p{p3}, "
                f"G-MHSA {e}x{self.g_heads}h on {g})")
