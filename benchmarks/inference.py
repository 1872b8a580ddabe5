"""CPU inference throughput: timm eager, archdsl eager and ``archdsl.optimize``, against the matmul peak.

What: images per second of the forward pass (float32 on the CPU, batch ``--batch``, 32 by
default, at 3x224x224) of DeiT-T, Swin-T and ResNet-50 built from ``specs/*.yaml`` and of the timm
models they reproduce (``deit_tiny_patch16_224``, ``swin_tiny_patch4_window7_224``, ``resnet50``;
random init, its weights copied into the archdsl model), and of two mixer specs without a timm
counterpart (``mat_2``, ``partialformer_b1``; random init with randomised norm parameters, see
``archdsl.tools.testing.perturb_norms``), in three forms: timm eager, archdsl eager
(``model.eval()`` under ``torch.inference_mode()``) and archdsl optimized (``archdsl.optimize``:
channels_last where convolutions dominate, ``torch.compile`` with inductor freezing and dynamic
shapes). Also this machine's fp32 matmul peak, measured in the same run (a ``--peak-size``
square product through MKL and through oneDNN, the larger of the two; see ``matmul_peaks``),
and the fraction of it each model reaches:
``2 x analytic multiply-adds per image x images/s / peak`` (the analytic count of
``archdsl.load_design``, fvcore's convention, doubled to FLOPs).

How: per model, one warm-up pass of each form (the optimized one compiles on it, tens of seconds
on 2 cores), then ``--rounds`` interleaved rounds (timm, eager, optimized, timm, ...), each turn
timing ``--passes`` forward passes; medians over rounds. Outputs are compared before timing: max
abs difference of archdsl eager against timm, and of optimized against archdsl eager.

Allocator: glibc's default malloc returns every freed block above its mmap threshold to the
system, so at batch 32 every forward pass maps and page-faults its activations again. The script
re-executes itself with ``GLIBC_TUNABLES`` set to large mmap and trim thresholds (as
``benchmarks/mixer_scaling.py`` does) unless ``GLIBC_TUNABLES`` is already set;
``--system-allocator`` keeps glibc's defaults, to compare.

Reading the output: a line per round, then a table: images/s of each form, the ratios
eager/timm and optimized/timm (for the mixer specs, with no timm model, optimized/eager), the
fraction of the matmul peak each archdsl form reaches, and the differences. Target: optimized at
least 1.3x timm eager on DeiT-T, Swin-T and ResNet-50. On a shared machine, report ``uptime``
with the figures and rerun with more ``--rounds`` before trusting a miss.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from archdsl.tools.optimize import images_per_second

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mixer_scaling import REUSING_ALLOCATOR  # noqa: E402

SPECS = Path(__file__).resolve().parents[1] / "specs"
MODELS = [("deit_t", "deit_tiny_patch16_224"), ("swin_t", "swin_tiny_patch4_window7_224"), ("resnet50", "resnet50"),
          ("mat_2", None), ("partialformer_b1", None)]
TARGET = 1.3


def matmul_peaks(size: int, repeats: int) -> dict[str, float]:
    """fp32 FLOP/s of a ``size`` square matrix product (median of ``repeats`` after one warm-up)
    through each CPU GEMM library torch reaches: MKL (``torch.mm``) and oneDNN (the packed linear
    that inductor's freezing emits, ``mkldnn._linear_pointwise``). On AMD CPUs MKL keeps to its
    AVX2 kernels while oneDNN runs AVX-512, so the two differ up to 2x; the machine's peak is the
    larger."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    packed = torch.ops.mkldnn._reorder_linear_weight(b, size)
    products = {"MKL torch.mm": lambda: torch.mm(a, b),
                "oneDNN linear": lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")}
    peaks = {}
    for name, product in products.items():
        times = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            product()
            if i:
                times.append(time.perf_counter() - start)
        peaks[name] = 2 * size ** 3 / statistics.median(times)
    return peaks


def measure(spec: str, timm_name: str | None, args) -> dict:
    import timm

    import archdsl
    from archdsl.tools.testing import perturb_norms

    design = archdsl.load_design(SPECS / f"{spec}.yaml")
    model = archdsl.build_model(design).eval()
    forms: dict[str, object] = {}
    x = torch.randn(args.batch, 3, 224, 224)
    if timm_name:
        reference = timm.create_model(timm_name).eval()
        archdsl.load_timm_weights(model, reference)
        forms["timm"] = reference
    else:
        perturb_norms(model)
    forms["eager"] = model
    start = time.perf_counter()
    fast = archdsl.optimize(copy.deepcopy(model))  # in place on its copy: eager keeps its memory format
    forms["optimized"] = fast
    with torch.inference_mode():
        eager_out = model(x)
        diff_timm = (eager_out - reference(x)).abs().max().item() if timm_name else None
    diff_opt = (fast(x) - eager_out).abs().max().item()  # the optimized form compiles here
    compile_seconds = time.perf_counter() - start
    rates: dict[str, list[float]] = {name: [] for name in forms}
    with torch.inference_mode():
        for name, fn in forms.items():
            images_per_second(fn, x, args.warmup)
        for r in range(args.rounds):
            for name, fn in forms.items():
                rates[name].append(images_per_second(fn, x, args.passes))
            print(f"  {spec} round {r + 1}/{args.rounds}: " + "  ".join(
                f"{name} {rates[name][r]:6.1f}" for name in rates) + " images/s", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return dict(model=spec, timm=timm_name, flops=design.cost.flops, rates=medians, diff_timm=diff_timm,
                diff_opt=diff_opt, channels_last=fast.channels_last, compile_seconds=compile_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--rounds", type=int, default=7, help="timed turns of each form (default 7)")
    parser.add_argument("--passes", type=int, default=1, help="forward passes per turn (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes of each form first (default 1)")
    parser.add_argument("--models", nargs="+", choices=[m for m, _ in MODELS], default=[m for m, _ in MODELS])
    parser.add_argument("--peak-size", type=int, default=4096, help="side of the matmul timed for the peak")
    parser.add_argument("--system-allocator", action="store_true", help="keep glibc malloc's default thresholds")
    args = parser.parse_args()
    if not args.system_allocator and "GLIBC_TUNABLES" not in os.environ:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": REUSING_ALLOCATOR})
    warnings.filterwarnings("ignore", category=FutureWarning)
    import timm

    torch.set_num_threads(os.cpu_count() or 1)
    print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}x3x224x224, {args.rounds} rounds of {args.passes} pass(es), "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}", flush=True)
    peaks = matmul_peaks(args.peak_size, 10)
    peak = max(peaks.values())
    print(f"fp32 matmul peak ({args.peak_size}^2): " + ", ".join(f"{name} {rate / 1e9:.1f}" for name, rate in peaks.items())
          + f" GFLOP/s; fractions below are of {peak / 1e9:.1f}", flush=True)
    rows = [measure(spec, timm_name, args) for spec, timm_name in MODELS if spec in args.models]
    after = matmul_peaks(args.peak_size, 10)
    print("fp32 matmul peak again after the models: " + ", ".join(f"{name} {rate / 1e9:.1f}" for name, rate in after.items())
          + " GFLOP/s")
    print(f"\n{'model':<17} {'timm img/s':>10} {'eager img/s':>11} {'opt img/s':>9} {'eager/timm':>10} "
          f"{'opt/timm':>8} {'opt/eager':>9} {'peak timm':>9} {'eager':>6} {'opt':>6} {'NHWC':>5} "
          f"{'|eager-timm|':>12} {'|opt-eager|':>11} {'compile s':>9}")
    missed = []
    for r in rows:
        rates, flops = r["rates"], 2 * r["flops"]
        timm_rate = rates.get("timm")
        frac = {name: rate * flops / peak for name, rate in rates.items()}
        if timm_rate is not None and rates["optimized"] / timm_rate < TARGET:
            missed.append(r["model"])
        cell = lambda v, fmt: format(v, fmt) if v is not None else "-"  # noqa: E731
        print(f"{r['model']:<17} {cell(timm_rate, '10.1f'):>10} {rates['eager']:>11.1f} {rates['optimized']:>9.1f} "
              f"{cell(timm_rate and rates['eager'] / timm_rate, '10.2f'):>10} "
              f"{cell(timm_rate and rates['optimized'] / timm_rate, '8.2f'):>8} "
              f"{rates['optimized'] / rates['eager']:>9.2f} {cell(frac.get('timm'), '9.1%'):>9} "
              f"{frac['eager']:>6.1%} {frac['optimized']:>6.1%} {'yes' if r['channels_last'] else 'no':>5} "
              f"{cell(r['diff_timm'], '12.1e'):>12} {r['diff_opt']:>11.1e} {r['compile_seconds']:>9.0f}")
    print(f"\ntarget: optimized >= {TARGET}x timm eager on the timm baselines: "
          + ("met" if not missed else f"missed on {', '.join(missed)}"))


if __name__ == "__main__":
    main()
