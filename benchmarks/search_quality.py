"""Does the search's sampler beat random sampling on the embedded task?

What: ``search/mixer_placement.yaml`` (one objective, validation accuracy) searched with TPE
(archdsl's default: multivariate, the budget's rejections told to it as constraints) and with random
sampling; ``search/scales.yaml`` (accuracy and FLOPs) with NSGA-II and random sampling. Each search
runs ``--trials`` trials (default 30) for each of ``--seeds`` (default 10) sampler seeds, through
archdsl's real search loop (proposals, budget, reuse), unpruned and without confirmation seeds.

How an architecture is scored: trained once at seed 0 with the space's settings (``shapes``, 8
epochs) and looked up afterwards (a custom objective over ``--cache``, as a tabular NAS benchmark
does), so every sampler and seed sees the same accuracy for the same architecture and the
comparison measures the samplers, not the training noise. (The seed noise of one architecture is
``proxy_correlation.py``'s.)

Reading the output: per space and sampler, the mean best accuracy (single objective) or the mean
hypervolume of the (accuracy, FLOPs) front (reference point: accuracy 0, the FLOPs budget) over the
seeds, with a bootstrap 95% interval, and the one-sided Mann-Whitney U test of "the model-based
sampler is better than random" (p < 0.05: it wins; otherwise: no evidence that it does).

``--workers N`` runs N searches at once (processes of one torch thread; ``common.cached_searches``).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from scipy import stats

from archdsl.search import load_search
from archdsl.search.runner import Search
from common import CurveCache, cached_searches, cpu_model, tabular_objective

ROOT = Path(__file__).resolve().parents[1]
SPACES = {"mixer_placement": ("tpe", ["train"]), "scales": ("nsga2", ["train", "flops"])}


def hypervolume(points: list[tuple[float, float]], flops_budget: float) -> float:
    """Area dominated by (accuracy up, FLOPs down) points over the reference (0, budget), FLOPs in
    units of the budget."""
    area, best = 0.0, 0.0
    for accuracy, flops in sorted(points, key=lambda p: p[1]):  # cheapest first
        if accuracy > best and flops <= flops_budget:
            area += (accuracy - best) * (1 - flops / flops_budget)
            best = accuracy
    return area


def one_search(space: str, sampler: str, seed: int, trials: int, cache: CurveCache) -> tuple[float, int]:
    """The search's quality figure (best accuracy, or front hypervolume) and the distinct
    architectures it evaluated."""
    search = load_search(ROOT / "search" / f"{space}.yaml")
    objectives = SPACES[space][1]
    search.settings = search.settings.model_copy(update={
        "sampler": sampler, "seed": seed, "trials": trials, "pruner": "none",
        "confirm": search.settings.confirm.model_copy(update={"trials": 0})})
    custom = tabular_objective(search, cache, with_flops=len(objectives) == 2)
    with tempfile.TemporaryDirectory() as out:
        outcome = Search(search, Path(out), progress=False, device="cpu", objective=custom, echo=lambda _: None).run()
    complete = [r for r in outcome.rows if r.state == "complete"]
    distinct = len({r.arch_hash for r in complete})
    if len(objectives) == 1:
        return max(r.values["accuracy"] for r in complete), distinct
    return hypervolume([(r.values["accuracy"], r.flops) for r in complete], search.settings.budget.flops), distinct


def interval(values: list[float], rng, resamples: int = 5000) -> tuple[float, float]:
    means = [float(np.mean(rng.choice(values, len(values)))) for _ in range(resamples)]
    return tuple(np.percentile(means, [2.5, 97.5]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    parser.add_argument("--cache", default="results/curves.json",
                        help="learning curves trained at seed 0 (shared with proxy_correlation.py and pruners.py)")
    parser.add_argument("--workers", type=int, default=1, help="searches run at once, one process and torch thread each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cache = CurveCache(args.cache)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, 1 thread per process, {args.workers} at once; {args.trials} trials, seeds 0..{args.seeds - 1}")
    rng = np.random.default_rng(0)
    for space in args.spaces:
        model_based = SPACES[space][0]
        figure = "best accuracy" if len(SPACES[space][1]) == 1 else "hypervolume (accuracy x FLOPs saved)"
        results: dict[str, list[float]] = {model_based: [], "random": []}
        start = time.perf_counter()
        jobs = [(space, sampler, seed, args.trials) for seed in range(args.seeds) for sampler in results]
        for (_, sampler, seed, _), (value, distinct) in cached_searches(one_search, jobs, cache, args.workers):
            results[sampler].append(value)
            print(f"  {space:<16} {sampler:<7} seed {seed:>2}: {figure} {value:.4f} ({distinct} architectures; "
                  f"{cache.trained} trained so far)", flush=True)
        print(f"{space}: {figure} over {args.seeds} seeds, {args.trials} trials each "
              f"({(time.perf_counter() - start) / 60:.1f} min)")
        for sampler, values in results.items():
            low, high = interval(values, rng)
            print(f"  {sampler:<7} mean {statistics.mean(values):.4f} [95% CI {low:.4f}, {high:.4f}], "
                  f"std {statistics.stdev(values):.4f}")
        test = stats.mannwhitneyu(results[model_based], results["random"], alternative="greater")
        verdict = "wins" if test.pvalue < 0.05 else "no evidence that it beats random"
        print(f"  Mann-Whitney U ({model_based} > random, one-sided): U = {test.statistic:.1f}, p = {test.pvalue:.3f}: "
              f"{model_based} {verdict}")


if __name__ == "__main__":
    main()
