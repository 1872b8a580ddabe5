"""How each token mixer's cost grows with the token grid.

What: for each mixer below (``--mixers`` picks some), at a fixed width (64 channels), on token
grids 14x14, 28x28, 56x56 and 112x112 (``--grids``), the analytic FLOPs of one block (norm, mixer,
norm, MLP; for the Visual Transformer, one VT module with its projector) and its measured CPU
forward time at batch 1, and the growth of each per 4x tokens (one grid step).

How: a one-stage spec per mixer and grid (``patch_embed(patch=4)`` stem, one block)
goes through ``archdsl.load_design`` (FLOPs) and ``build_model``; the blocks of one mixer at all
grids are timed on random tokens in interleaved rounds (one run per grid per round, so load from
other processes falls on every grid alike), median of ``--repeats`` rounds after three warm-up
rounds.

Allocator: glibc's default malloc returns every block of more than its mmap threshold to the
system when freed, so each forward pass on a 112x112 map maps and page-faults its buffers again;
that alone made the 112x112 times 1.3-1.9x slower here (and the growth ratio from 56x56 up to
7.6x for partial attention). The script therefore re-executes itself with
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824``
(buffers stay on the heap and are reused) unless ``GLIBC_TUNABLES`` is already set;
``--system-allocator`` keeps glibc's defaults, to compare.

Reading the output: one row per mixer and grid, with the growth ratios. Linear mixers (window,
IWSA, SSA with its reduction growing with the grid as ScalableViT's stages do, partial attention,
window attention with a graft whose coarse scale keeps its windows) grow about 4x per 4x tokens in
FLOPs; global attention grows towards 16x (quadratic), and so does SSA at a fixed reduction
(``N * N / sr^2``). C-MHSA and the VT module (16 visual tokens at any grid) grow linearly. MAT's
fusion (every token attends to the ``N / 49`` abstract tokens) and EMS's G-MHSA branch (global
attention over the map pooled by 6, ``N / 36`` tokens) add terms quadratic in ``N`` with small
constants: about 4x at small grids, rising at large ones. Time ratios at small grids are
flattened by fixed per-call overheads.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

import archdsl

WIDTH = 64
MIXERS = {  # name: grid side -> the stage's options (a metaformer stage unless it names a block)
    "attention": lambda grid: {"mixer": "attention(heads=2)"},
    "window": lambda grid: {"mixer": "window(size=7, heads=2)"},
    "iwsa": lambda grid: {"mixer": "window(size=7, heads=2, lim=true)"},
    "ssa sr=7": lambda grid: {"mixer": "ssa(heads=2, sr=7)"},
    "ssa sr=grid/7": lambda grid: {"mixer": f"ssa(heads=2, sr={grid // 7})"},
    "partial": lambda grid: {"mixer": "partial(heads=2, fg=49)"},
    "window+graft": lambda grid: {"mixer": "window(size=7, heads=2)",
                                  "graft": "graft(blocks=all, scales=1, global_coarsest=false)"},
    "mat": lambda grid: {"mixer": "mat(size=7, heads=2)"},
    "cmhsa": lambda grid: {"mixer": "cmhsa(heads=2)"},
    "ems": lambda grid: {"mixer": "ems(c_heads=1, g_heads=1)"},
    "vt module": lambda grid: {"block": "visual_transformer", "tokens": 16, "token_width": WIDTH, "heads": 2,
                               "output": "map"},
}


def spec_text(stage: dict, grid: int) -> str:
    options = "".join(f"    {key}: \"{value}\"\n" if isinstance(value, str) else f"    {key}: {value}\n"
                      for key, value in stage.items())
    return (f"name: probe\ninput: 3x{4 * grid}x{4 * grid}\nstem: patch_embed(patch=4)\n"
            f"stages:\n  - depth: 1\n    width: {WIDTH}\n{options}head: {{classes: 10}}\n")


REUSING_ALLOCATOR = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824"


def measure(make, grids: list[int], repeats: int) -> list[tuple[int, float]]:
    """(FLOPs, median forward seconds) of one block, graft included, on each ``grid x grid`` map."""
    blocks, flops = [], []
    for grid in grids:
        design = archdsl.design_from_source(archdsl.read_text(spec_text(make(grid), grid)))
        flops.append(sum(d["cost"].flops for _, d in design.nodes() if d["kind"] in ("block", "branch")))
        stage = archdsl.build_model(design).stages[0]
        blocks.append((stage.blocks.eval(), stage.layout(torch.randn(1, grid * grid, WIDTH))))  # the stem's tokens
    times = [[] for _ in grids]
    with torch.inference_mode():
        for round_ in range(3 + repeats):
            for (block, x), row in zip(blocks, times):
                start = time.perf_counter()
                block(x)
                if round_ >= 3:
                    row.append(time.perf_counter() - start)
    return [(f, statistics.median(row)) for f, row in zip(flops, times)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[14, 28, 56, 112])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--mixers", nargs="+", choices=list(MIXERS), default=list(MIXERS))
    parser.add_argument("--system-allocator", action="store_true", help="keep glibc malloc's default thresholds")
    args = parser.parse_args()
    if not args.system_allocator and "GLIBC_TUNABLES" not in os.environ:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": REUSING_ALLOCATOR})
    warnings.filterwarnings("ignore", category=FutureWarning)
    print(f"width {WIDTH}, batch 1, {torch.get_num_threads()} threads, median of {args.repeats} interleaved rounds, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    print(f"{'mixer':<14} {'grid':>8} {'GFLOPs':>9} {'ms':>9} {'FLOPs x':>8} {'time x':>7}")
    for name in args.mixers:
        make = MIXERS[name]
        previous = None
        for grid, (flops, seconds) in zip(args.grids, measure(make, args.grids, args.repeats)):
            growth = ("", "") if previous is None else (f"{flops / previous[0]:.2f}", f"{seconds / previous[1]:.2f}")
            print(f"{name:<14} {grid:>4}x{grid:<3} {flops / 1e9:>9.4f} {seconds * 1e3:>9.2f} {growth[0]:>8} {growth[1]:>7}")
            previous = (flops, seconds)


if __name__ == "__main__":
    main()
