"""Which pruner finds the best architecture for the same training compute?

What: ``search/mixer_placement.yaml`` searched with TPE under each pruner (``none``, ``median``,
``successive_halving``, ``hyperband``; epochs as the resource) for ``--seeds`` (default 5) sampler
seeds. Equal compute: every search gets ``--epochs-budget`` training epochs (default: what 20
unpruned trials of the space's epochs cost, 160 at its 8 epochs); a pruned search runs up to ``--trials`` trials and is cut, in trial
order, where its epochs trained reach the budget (later trials cannot change earlier ones in one
worker, so the cut is the search that budget would have bought). Architectures are trained once at
seed 0 and their learning curves replayed (``common.CurveCache``), so the pruners differ only in
what they stop.

Reading the output: per pruner, the mean over seeds of the best accuracy among the complete trials
within the budget, with a bootstrap 95% interval, the trials evaluated within the budget, and a
one-sided Mann-Whitney U test against ``none`` (p < 0.05: the pruner finds better architectures for
the same compute).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import optuna
import torch
from scipy import stats

from archdsl.search import load_search
from archdsl.search.runner import Search
from common import CurveCache, cached_searches, cpu_model, tabular_objective
from search_quality import interval

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search" / "mixer_placement.yaml"
PRUNERS = ("none", "median", "successive_halving", "hyperband")


def within_budget(rows, budget: int) -> tuple[float, int]:
    """Best complete accuracy among the trials whose epochs, summed in trial order, stay within budget."""
    spent, best, evaluated = 0, None, 0
    for row in sorted(rows, key=lambda r: r.number):
        if row.state not in ("complete", "pruned"):
            continue
        spent += (row.epochs or 0) if row.reused_from is None else 0
        if spent > budget:
            break
        evaluated += 1
        if row.state == "complete" and (best is None or row.values["accuracy"] > best):
            best = row.values["accuracy"]
    return (float("nan") if best is None else best), evaluated


def one_search(pruner: str, seed: int, trials: int, budget: int, cache: CurveCache) -> tuple[float, int]:
    search = load_search(SPACE)
    epochs = search.settings.data.epochs
    search.settings = search.settings.model_copy(update={
        "seed": seed, "pruner": pruner, "trials": budget // epochs if pruner == "none" else trials,
        "confirm": search.settings.confirm.model_copy(update={"trials": 0})})
    with tempfile.TemporaryDirectory() as out:
        outcome = Search(search, Path(out), progress=False, device="cpu", objective=tabular_objective(search, cache),
                         echo=lambda _: None).run()
    return within_budget(outcome.rows, budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs-budget", type=int, default=None,
                        help="training epochs per search (default: 20 unpruned trials of the space's epochs)")
    parser.add_argument("--trials", type=int, default=60, help="trials a pruned search may run before its cut")
    parser.add_argument("--cache", default="results/curves.json")
    parser.add_argument("--workers", type=int, default=1, help="searches run at once, one process and torch thread each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cache = CurveCache(args.cache)
    if args.epochs_budget is None:
        args.epochs_budget = 20 * load_search(SPACE).settings.data.epochs
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, 1 thread per process, {args.workers} at once; budget {args.epochs_budget} epochs per search, "
          f"seeds 0..{args.seeds - 1}")
    results = {p: [] for p in PRUNERS}
    counts = {p: [] for p in PRUNERS}
    jobs = [(pruner, seed, args.trials, args.epochs_budget) for seed in range(args.seeds) for pruner in PRUNERS]
    for (pruner, seed, _, _), (best, evaluated) in cached_searches(one_search, jobs, cache, args.workers):
        results[pruner].append(best)
        counts[pruner].append(evaluated)
        print(f"  {pruner:<18} seed {seed}: best {best:.4f} ({evaluated} trials within the budget; "
              f"{cache.trained} architectures trained so far)", flush=True)
    rng = np.random.default_rng(0)
    print(f"mixer_placement, TPE, {args.epochs_budget} epochs per search, {args.seeds} seeds:")
    for pruner in PRUNERS:
        values = results[pruner]
        low, high = interval(values, rng)
        line = (f"  {pruner:<18} best accuracy {statistics.mean(values):.4f} [95% CI {low:.4f}, {high:.4f}], "
                f"{statistics.mean(counts[pruner]):.1f} trials")
        if pruner != "none":
            test = stats.mannwhitneyu(values, results["none"], alternative="greater")
            line += f"; vs none: U = {test.statistic:.1f}, p = {test.pvalue:.3f}" + (
                " (better)" if test.pvalue < 0.05 else " (no evidence of better)")
        print(line)


if __name__ == "__main__":
    main()
