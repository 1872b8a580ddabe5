"""Speed of archdsl's analytic cost model against building and tracing the model.

What: the wall time of ``archdsl.load_design("specs/swin_t.yaml")``, which reads the YAML,
parses the expressions, validates the schema, infers every shape and sums the analytic
params/FLOPs (everything an architecture search does per candidate), against the time of
``build_model(design)`` followed by ``traced_cost(model, (3, 224, 224))`` (fvcore's count on the
built model), the way one would get the cost without the analytic model.

How: each is run once untimed (imports, lark's parser), then ``--repeats`` times for the
analytic path and ``--trace-repeats`` times for build + trace; the medians are compared. The
expression parse cache is cleared before every analytic run, so each run parses its spec from
scratch as a new candidate would.

Reading the output: both medians in ms, the speed-up (build + trace / analytic), each target
(analytic under 20 ms; at least 20x faster than build + trace) with met / NOT met, and a sanity
line with the analytic and traced params/FLOPs, which should agree.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import archdsl
from archdsl.expr import parse
from archdsl.tools.trace import traced_cost

SPEC = Path(__file__).resolve().parents[1] / "specs" / "swin_t.yaml"
MAX_ANALYTIC_MS = 20.0
MIN_SPEEDUP = 20.0


def median_ms(fn, repeats: int):
    """Median wall time of ``fn()`` in ms after one untimed call, and its last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, result


def analytic():
    parse.cache_clear()
    return archdsl.load_design(SPEC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed runs of load_design (default 50)")
    parser.add_argument("--trace-repeats", type=int, default=5, help="timed runs of build + trace (default 5)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")  # from importing fvcore

    analytic_ms, design = median_ms(analytic, args.repeats)
    trace_ms, report = median_ms(lambda: traced_cost(archdsl.build_model(design), (3, 224, 224)), args.trace_repeats)
    speedup = trace_ms / analytic_ms

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"spec: {SPEC.name}")
    print(f"analytic (load_design), median of {args.repeats}: {analytic_ms:9.2f} ms   "
          f"target < {MAX_ANALYTIC_MS:g} ms: {verdict(analytic_ms < MAX_ANALYTIC_MS)}")
    print(f"build + trace (fvcore), median of {args.trace_repeats}: {trace_ms:9.2f} ms")
    print(f"speed-up: {speedup:.0f}x   target >= {MIN_SPEEDUP:g}x: {verdict(speedup >= MIN_SPEEDUP)}")
    cost = design.cost
    print(f"sanity: analytic {cost.params:,} params, {cost.flops / 1e9:.4f} GFLOPs; "
          f"traced {report.params:,} params, {report.flops / 1e9:.4f} GFLOPs "
          f"(FLOPs differ by {(cost.flops - report.flops) / report.flops:+.3%})")


if __name__ == "__main__":
    main()
