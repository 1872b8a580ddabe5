"""What the search benchmarks share: the CPU they ran on, random architectures of a space, and a
cache of learning curves (an architecture trained once at seed 0 answers every later lookup, as a
tabular NAS benchmark does)."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import platform
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import optuna

import torch

from archdsl import DEFAULT_MAX_PARAMS, build_model
from archdsl.search.candidate import check_candidate
from archdsl.search.objectives import CustomObjective
from archdsl.search.space import suggest
from archdsl.search.training import train_accuracy


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        else:
            model = platform.processor()
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags]
        return f"{model} ({', '.join(isa) or 'no AVX2'})"
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def random_candidates(search, count: int, seed: int) -> list:
    """``count`` distinct feasible architectures drawn by Optuna's random sampler (rejections skipped)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    seen, out = set(), []
    for _ in range(200 * count):
        trial = study.ask()
        candidate = check_candidate(search, suggest(trial, search.dims), search.settings.budget, DEFAULT_MAX_PARAMS)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if candidate.feasible and candidate.arch_hash not in seen:
            seen.add(candidate.arch_hash)
            out.append((dict(trial.params), candidate))
            if len(out) == count:
                break
    return out


def data_fingerprint(data) -> str:
    """A short hash of what a data set feeds training: its split sizes and its fixed sample batch
    (``data.sample(64)``, the same images every call), so a changed generator or folder gives new keys."""
    images, labels = data.sample(64)
    digest = hashlib.sha256(f"{data.train_size}/{data.val_size}".encode())
    digest.update(images.float().contiguous().numpy().tobytes())
    digest.update(labels.contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def training_key(search, arch_hash: str, data) -> str:
    """What a cached curve depends on: the space, its data (``data_fingerprint``) and training settings
    (every data option but the proxy's and the loader's), the precision, the architecture."""
    training = search.settings.data.model_dump_json(exclude={"proxy", "proxy_batch", "workers"})
    return f"{search.name}:{training}:{data_fingerprint(data)}:{search.settings.precision}:{arch_hash}"


class CurveCache:
    """Learning curves (validation accuracy after each epoch) of architectures trained at seed 0, by
    ``training_key``, kept in a JSON file across runs. A pruned trial sees a prefix of its curve: the
    learning-rate schedule spans the full epochs whether or not the run is stopped, so the prefix is
    exactly what the pruned run would have measured."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.curves: dict[str, list[float]] = json.loads(self.path.read_text()) if self.path and self.path.exists() \
            else {}
        self.trained = 0

    def curve(self, key: str, train) -> list[float]:
        """The cached curve, or ``train(report)``'s, recorded through ``report(accuracy, epoch)``."""
        if key not in self.curves:
            curve: list[float] = []
            train(lambda accuracy, epoch: curve.append(accuracy))
            self.record(key, curve)
        return self.curves[key]

    def record(self, key: str, curve: list[float]) -> None:
        """Keep a curve trained elsewhere (e.g. in a worker process) and write the file."""
        self.curves[key] = list(curve)
        self.trained += 1
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.curves, indent=0, sort_keys=True))


def train_curve(design, data, settings, seed: int, report, device) -> float:
    """Train ``design`` built at ``seed`` as a search trial does (weights and batch order from the seed)."""
    torch.manual_seed(seed)
    model = build_model(design).to(device)
    return train_accuracy(model, data, settings.data, seed, report, device, settings.precision)


def tabular_objective(search, cache: CurveCache, with_flops: bool = False) -> CustomObjective:
    """A custom objective that trains each architecture once (seed 0 weights and batch order, the
    space's settings) and replays its curve to the pruner: every sampler, seed and pruner sees the same
    accuracy for the same architecture."""

    def replayed(model, context):
        curve = cache.curve(training_key(search, context.trial.user_attrs["arch_hash"], context.data), lambda report: train_curve(
            context.design, context.data, search.settings, 0, report, context.device))
        for epoch, accuracy in enumerate(curve, 1):
            context.report(accuracy, epoch)
        return (curve[-1], float(context.design.cost.flops)) if with_flops else curve[-1]

    if with_flops:
        return CustomObjective(replayed, ("accuracy", "flops"), ("maximize", "minimize"))
    return CustomObjective(replayed, ("accuracy",), ("maximize",))


def in_processes(function, jobs: list[tuple], workers: int):
    """``(job, function(*job))`` for every job, as they finish: in this process when ``workers`` is 1,
    else in that many spawned processes (``function`` must be importable: a module-level function)."""
    if workers == 1:
        for job in jobs:
            yield job, function(*job)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(function, *job): job for job in jobs}
        for future in as_completed(futures):
            yield futures[future], future.result()


def _cached_search(search, job: tuple, cache_path: str | None):
    """``search(*job, cache)`` in a worker process, over the cache file as it is now; the result and
    the curves it trained, for the main process to keep."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cache = CurveCache(cache_path)
    known = set(cache.curves)
    cache.path = None  # the main process writes the file
    result = search(*job, cache)
    return result, {key: curve for key, curve in cache.curves.items() if key not in known}


def cached_searches(search, jobs: list[tuple], cache: CurveCache, workers: int):
    """``(job, search(*job, cache))`` for every job, ``workers`` at once (one process and torch thread
    each; see ``in_processes``). A worker starts from the cache file as it stands and hands its new
    curves back to be recorded here, so two searches at once may train one architecture twice (both
    get the same seed-0 curve either way)."""
    if workers == 1:
        for job in jobs:
            yield job, search(*job, cache)
        return
    path = str(cache.path) if cache.path else None
    for (_, job, _), (result, curves) in in_processes(_cached_search, [(search, job, path) for job in jobs], workers):
        for key, curve in curves.items():
            if key not in cache.curves:
                cache.record(key, curve)
        yield job, result
