"""Forward throughput of archdsl-built models against timm's own, in one process.

What: images per second of the forward pass (eval mode, ``torch.inference_mode()``, float32 on
the CPU, batch 8 at 3x224x224 by default) of DeiT-T, Swin-T and ResNet-50 built from
``specs/*.yaml``, and of the timm models they reproduce (``timm.create_model(name)``, random init).
timm's weights are copied into the archdsl model, and the two outputs are compared, so both
compute the same thing.

How: after ``--warmup`` untimed passes of each, the two models take turns (archdsl, timm,
archdsl, timm, ...) for ``--rounds`` rounds, each turn timing ``--passes`` forward passes, so
that noise from a shared machine hits both alike. torch uses one thread per core. The
default run takes 1-3 minutes on 2 cores, depending on how busy they are.

Reading the output: one line per round, then a table with the median images/s of each model,
the ratio archdsl/timm (1.00 = as fast as timm, above = faster) and the largest absolute
difference between the two models' logits. Target: every ratio >= 0.97 (archdsl adds no
measurable overhead). On a noisy machine, rerun with more ``--rounds`` before trusting a miss.
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import timm
import torch

import archdsl
from archdsl.tools.optimize import images_per_second

SPECS = Path(__file__).resolve().parents[1] / "specs"
MODELS = [("deit_t", "deit_tiny_patch16_224"), ("swin_t", "swin_tiny_patch4_window7_224"), ("resnet50", "resnet50")]
TARGET = 0.97


def compare(spec: str, timm_name: str, args) -> dict:
    """Median images/s of the archdsl and timm models, alternating turns."""
    reference = timm.create_model(timm_name).eval()
    model = archdsl.build_model(SPECS / f"{spec}.yaml").eval()
    archdsl.load_timm_weights(model, reference)
    x = torch.randn(args.batch, 3, 224, 224)
    rates: dict[str, list[float]] = {"archdsl": [], "timm": []}
    with torch.inference_mode():
        diff = (model(x) - reference(x)).abs().max().item()
        for m in (model, reference):
            images_per_second(m, x, args.warmup)
        for r in range(args.rounds):
            for name, m in (("archdsl", model), ("timm", reference)):
                rates[name].append(images_per_second(m, x, args.passes))
            print(f"  {spec} round {r + 1}/{args.rounds}: archdsl {rates['archdsl'][-1]:6.1f}  "
                  f"timm {rates['timm'][-1]:6.1f} images/s", flush=True)
    ours, theirs = statistics.median(rates["archdsl"]), statistics.median(rates["timm"])
    return dict(model=spec, timm=timm_name, ours=ours, theirs=theirs, ratio=ours / theirs, diff=diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--rounds", type=int, default=10, help="turns of each model (default 10)")
    parser.add_argument("--passes", type=int, default=1, help="forward passes timed per turn (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes of each model first (default 1)")
    args = parser.parse_args()

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}x3x224x224, {args.rounds} rounds of {args.passes} timed pass(es), warmup {args.warmup}")
    rows = [compare(spec, timm_name, args) for spec, timm_name in MODELS]

    print(f"\n{'model':<9} {'timm model':<29} {'archdsl img/s':>13} {'timm img/s':>10} {'ratio':>6} "
          f"{'max |diff|':>10}")
    for r in rows:
        flag = "" if r["ratio"] >= TARGET else "  < target"
        print(f"{r['model']:<9} {r['timm']:<29} {r['ours']:>13.1f} {r['theirs']:>10.1f} {r['ratio']:>6.3f} "
              f"{r['diff']:>10.1e}{flag}")
    met = all(r["ratio"] >= TARGET for r in rows)
    print(f"target: every ratio archdsl/timm >= {TARGET}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
