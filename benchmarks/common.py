"""What the search benchmarks share: the CPU they ran on, random architectures of a space, and a
cache of learning curves (an architecture trained once at seed 0 answers every later lookup, as a
tabular NAS benchmark does)."""
from __future__ import annotations

import json
import platform
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


def training_key(search, arch_hash: str) -> str:
    """What a cached curve depends on: the space, its data and training settings (every data option but
    the proxy's and the loader's), the precision, the architecture."""
    training = search.settings.data.model_dump_json(exclude={"proxy", "proxy_batch", "workers"})
    return f"{search.name}:{training}:{search.settings.precision}:{arch_hash}"


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
            self.curves[key] = curve
            self.trained += 1
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text(json.dumps(self.curves, indent=0, sort_keys=True))
        return self.curves[key]


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
        curve = cache.curve(training_key(search, context.trial.user_attrs["arch_hash"]), lambda report: train_curve(
            context.design, context.data, search.settings, 0, report, context.device))
        for epoch, accuracy in enumerate(curve, 1):
            context.report(accuracy, epoch)
        return (curve[-1], float(context.design.cost.flops)) if with_flops else curve[-1]

    if with_flops:
        return CustomObjective(replayed, ("accuracy", "flops"), ("maximize", "minimize"))
    return CustomObjective(replayed, ("accuracy",), ("maximize",))
