"""Can the embedded task rank architectures, and which training-free proxy predicts the ranking?

What: for each shipped search space (``search/*.yaml``), ``--archs`` (default 40) distinct random
architectures within its budget, each trained on the space's data (``shapes`` by default) with the
space's training settings (``search/*.yaml``: 8 epochs; AdamW, warmup, cosine decay) at seed 0, and
scored by every proxy of ``archdsl/search/proxies.py`` (NASWOT, SynFlow, grad-norm, ZiCo) on the search's proxy batch of the
untrained network (seed 0), besides analytic params and FLOPs. The first ``--noise-archs`` (default 3)
architectures drawn are trained with ``--seeds`` (default 5) seeds each for the seed noise.

Reading the output, per space:

- **spread vs noise**: max - min of the validation accuracy over the architectures, the seed
  standard deviation of each noise architecture, and the ratio of the spread to each (issue 12's
  target: >= 5), since one architecture's seed noise need not be another's;
- **correlations**: Kendall tau and Spearman rho of each score against trained accuracy, each with a
  bootstrap 95% interval (``--boot`` resamples of the architectures, percentile method), and
  whether the interval excludes 0.

``--json FILE`` writes every measurement. Trainings run in ``--workers`` processes (default 1) of one
torch thread each; proxies are scored in the main process, one thread. The CPU model is printed.
``--cache FILE`` keeps the seed-0 curves (keyed by space, data fingerprint, training settings,
precision and architecture; ``common.training_key``) for later runs and for ``search_quality.py``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import torch
from scipy import stats

from archdsl import DEFAULT_MAX_PARAMS, build_model
from archdsl.search import load_search
from archdsl.search.candidate import check_candidate
from archdsl.search.data import class_count, open_data
from archdsl.search.proxies import PROXIES
from archdsl.search.space import suggest
from archdsl.search.training import resolve_device
from common import CurveCache, cpu_model, in_processes, random_candidates, train_curve, training_key

ROOT = Path(__file__).resolve().parents[1]


def bootstrap(x, y, statistic, resamples: int, rng) -> tuple[float, float, float]:
    """The statistic on (x, y) and its 95% percentile interval over resampled pairs."""
    x, y = np.asarray(x), np.asarray(y)
    point = statistic(x, y)
    draws = []
    for _ in range(resamples):
        index = rng.integers(0, len(x), len(x))
        value = statistic(x[index], y[index])
        if np.isfinite(value):
            draws.append(value)
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (np.nan, np.nan)
    return point, float(low), float(high)


def kendall(x, y) -> float:
    with warnings.catch_warnings():  # a resample of tied values has no correlation: NaN, left out
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.kendalltau(x, y).statistic)


def spearman(x, y) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(x, y).statistic)


def prepared_search(path: Path):
    """The space at ``path`` with training as the only objective and a head for its data's classes."""
    search = load_search(path)
    search.settings = search.settings.model_copy(update={"objective": ["train"]})
    tree = search.base.tree
    tree["head"] = {**tree.get("head", {}), "classes": class_count(search.settings.data.dataset)}
    return search


def objective_data(search, candidate):
    image = candidate.objective_design.spec.input
    return open_data(search.settings.data.dataset, image.channels, image.height, image.width)


def train_job(path: Path, params: dict, seed: int, device: str) -> tuple[list[float], float]:
    """One training of the architecture ``params`` (Optuna's sampled values) of the space at ``path``:
    its learning curve and seconds. Runs in a worker process as well as in this one."""
    torch.set_num_threads(1)
    search = prepared_search(path)
    candidate = check_candidate(search, suggest(optuna.trial.FixedTrial(params), search.dims), search.settings.budget,
                                DEFAULT_MAX_PARAMS)
    curve: list[float] = []
    start = time.perf_counter()
    train_curve(candidate.objective_design, objective_data(search, candidate), search.settings, seed,
                lambda accuracy, epoch: curve.append(accuracy), resolve_device(device))
    return curve, time.perf_counter() - start


def measure_space(path: Path, archs: int, seeds: int, noise_archs: int, device: str, cache: CurveCache,
                  proxies: list[str], workers: int) -> dict:
    search = prepared_search(path)
    start = time.perf_counter()
    drawn = random_candidates(search, archs, seed=1)
    keys = [training_key(search, candidate.arch_hash, objective_data(search, candidate)) for _, candidate in drawn]

    def key(index: int, seed: int) -> str:  # seed 0 under the key search_quality.py and pruners.py share
        return keys[index] if seed == 0 else f"{keys[index]}@seed{seed}"

    # the noise architectures (drawn first) with all their seeds first; every curve is cached, so an
    # interrupted run resumes where it stopped
    jobs = [(path, params, seed, device) for index, (params, _) in enumerate(drawn)
            for seed in (range(seeds) if index < noise_archs else [0]) if key(index, seed) not in cache.curves]
    seconds = {}
    for done, ((_, params, seed, _), (curve, elapsed)) in enumerate(in_processes(train_job, jobs, workers), 1):
        index = next(i for i, (p, _) in enumerate(drawn) if p == params)
        cache.record(key(index, seed), curve)
        seconds[index, seed] = elapsed
        print(f"  {done:>3}/{len(jobs)} {drawn[index][1].arch_hash} seed {seed}: acc {curve[-1]:.4f} ({elapsed:.1f} s)",
              flush=True)
    rows, target = [], resolve_device(device)
    for index, (params, candidate) in enumerate(drawn):
        data = objective_data(search, candidate)
        images, labels = data.sample(search.settings.data.proxy_batch)
        scores = {}
        for name in proxies:
            torch.manual_seed(0)
            model = build_model(candidate.objective_design).to(target)
            try:
                scores[name] = PROXIES[name](model, images.to(target), labels.to(target))
            except Exception as exc:  # noqa: BLE001 - a proxy that cannot score this one is recorded
                scores[name] = float("nan")
                print(f"  {name} failed on {candidate.arch_hash}: {exc}", file=sys.stderr)
        rows.append({"arch": candidate.arch_hash, "params": candidate.design.cost.params,
                     "flops": candidate.design.cost.flops, "accuracy": cache.curves[keys[index]][-1],
                     "seconds": seconds.get((index, 0)), "sampled": params, **scores})
    noise = {drawn[i][1].arch_hash: [cache.curves[key(i, s)][-1] for s in range(seeds)]
             for i in range(min(noise_archs, len(drawn)))}
    for arch, values in noise.items():
        print(f"  seeds of {arch}: {', '.join(f'{a:.4f}' for a in values)}", flush=True)
    return {"space": path.stem, "dataset": search.settings.data.dataset, "rows": rows, "seed_accuracies": noise,
            "minutes": (time.perf_counter() - start) / 60, "proxies": proxies, "workers": workers}


def report(result: dict, resamples: int) -> None:
    rows = result["rows"]
    accuracy = [r["accuracy"] for r in rows]
    spread = max(accuracy) - min(accuracy)
    print(f"\n{result['space']} ({result['dataset']}, {len(rows)} architectures, {result['minutes']:.1f} min)")
    print(f"  accuracy {min(accuracy):.4f} .. {max(accuracy):.4f}: spread {spread:.4f}")
    by_hash = {r["arch"]: r for r in rows}
    for arch, values in result["seed_accuracies"].items():
        noise = statistics.stdev(values)
        ratio = spread / noise if noise else float("inf")
        print(f"  seed std of {arch} ({by_hash[arch]['flops'] / 1e6:.2f}M FLOPs) over {len(values)} seeds: {noise:.4f} "
              f"({', '.join(f'{a:.3f}' for a in values)}); spread / seed std = {ratio:.1f} "
              f"(target >= 5: {'met' if ratio >= 5 else 'NOT met'})")
    rng = np.random.default_rng(0)
    print(f"  {'score':<10} {'Kendall tau [95% CI]':>28} {'Spearman rho [95% CI]':>28}")
    for name in [*result.get("proxies", PROXIES), "params", "flops"]:
        pairs = [(r[name], r["accuracy"]) for r in rows if np.isfinite(r[name])]
        if len(pairs) < 5:
            print(f"  {name:<10} too few finite scores ({len(pairs)})")
            continue
        x, y = zip(*pairs)
        cells = []
        for statistic in (kendall, spearman):
            point, low, high = bootstrap(x, y, statistic, resamples, rng)
            mark = "*" if low > 0 or high < 0 else " "
            cells.append(f"{point:+.2f} [{low:+.2f}, {high:+.2f}]{mark}")
        print(f"  {name:<10} {cells[0]:>28} {cells[1]:>28}")
    print("  (* the interval excludes 0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--noise-archs", type=int, default=3, help="architectures trained with --seeds seeds")
    parser.add_argument("--boot", type=int, default=2000)
    parser.add_argument("--spaces", nargs="+", default=None, help="space names (default: every search/*.yaml)")
    parser.add_argument("--proxies", nargs="*", default=list(PROXIES), choices=list(PROXIES),
                        help="the proxies scored (default: all; the flag alone: none, only the spread, the seed noise, params and FLOPs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="training processes (one torch thread each)")
    parser.add_argument("--json", help="write the measurements here")
    parser.add_argument("--cache", help="a JSON file of accuracies trained at seed 0, read and extended (search_quality.py "
                        "shares it)")
    parser.add_argument("--from-json", help="report measurements written earlier instead of measuring")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, 1 thread")
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        paths = sorted((ROOT / "search").glob("*.yaml"))
        if args.spaces:
            paths = [p for p in paths if p.stem in args.spaces]
        results = []
        for path in paths:
            print(f"{path.stem}:", flush=True)
            results.append(measure_space(path, args.archs, args.seeds, args.noise_archs, args.device,
                                         CurveCache(args.cache), args.proxies, args.workers))
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
    for result in results:
        report(result, args.boot)


if __name__ == "__main__":
    main()
