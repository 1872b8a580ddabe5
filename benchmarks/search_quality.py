"""Does the search's sampler beat random sampling? Best validation accuracy on digits.

What: ``search/scales.yaml`` (widths, depths and MLP ratios of a three-stage backbone on 16x16
digits, 1,296 points, under its FLOPs and parameter budget) searched with the ``train`` objective
alone (three epochs, median pruning), once with TPE (archdsl's default: multivariate, with the
budget's rejections told to it as constraints) and once with random sampling, for each seed; the
same budget, the same trial count, the same training and data split for both.

How: ``--trials`` trials (default 30) per search, ``--seeds`` (default 0 1 2), one torch thread,
each search in a fresh temporary SQLite study.

Reading the output: one line per search (sampler, seed, best accuracy, trials pruned, candidates
rejected before training, minutes), then the mean best accuracy of each sampler over the seeds.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from archdsl.search import load_search
from archdsl.search.runner import Search

ROOT = Path(__file__).resolve().parents[1]


def best_accuracy(sampler: str, seed: int, trials: int) -> tuple[float, int, int, float]:
    """Best accuracy, trials pruned, candidates rejected, minutes."""
    search = load_search(ROOT / "search" / "scales.yaml")
    search.settings = search.settings.model_copy(update={"sampler": sampler, "seed": seed, "trials": trials,
                                                         "objective": ["train"]})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        outcome = Search(search, Path(out), progress=False).run()
    best = outcome.best[0].values["accuracy"]
    pruned = sum(r.state == "pruned" for r in outcome.rows)
    rejected = sum(r.rejections for r in outcome.rows)
    return best, pruned, rejected, (time.perf_counter() - start) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, list[float]] = {"tpe": [], "random": []}
    print(f"{'sampler':<7} {'seed':>4} {'best acc':>9} {'pruned':>7} {'rejected':>9} {'min':>6}")
    for seed in args.seeds:
        for sampler in results:
            best, pruned, rejected, minutes = best_accuracy(sampler, seed, args.trials)
            results[sampler].append(best)
            print(f"{sampler:<7} {seed:>4} {best:>9.4f} {pruned:>7} {rejected:>9} {minutes:>6.1f}", flush=True)
    for sampler, bests in results.items():
        spread = f" +- {statistics.stdev(bests):.4f}" if len(bests) > 1 else ""
        print(f"{sampler}: mean best accuracy {statistics.mean(bests):.4f}{spread} over seeds {args.seeds}, "
              f"{args.trials} trials each")


if __name__ == "__main__":
    main()
