"""Evaluating one trial: reuse of an evaluated architecture, repeats over seeds, and the measurements.

The trial's architecture hash is compared with the study's: a complete (or pruned) trial of the same
architecture gives its result without a new evaluation; one still running in another worker is
waited for. Otherwise the model is built, its latency measured when the budget or objective needs it
(over a latency budget: rejected, never trained), and the objectives computed on the search's device
and precision, once per seed of ``search.repeats`` (seeds ``seed, seed + 1, ...``; the trial's value
is their mean, each seed's values kept in the trial's ``seed_values``). Only the first seed reports
to the pruner. Nothing is lost: a trial that raises or whose loss turns NaN fails with its reason.
"""
from __future__ import annotations

import statistics
import time

import optuna
import torch
from optuna.trial import TrialState

from ..pipeline import build_model
from .candidate import Candidate
from .data import open_data
from .failures import TrialFailure
from .objectives import ANALYTIC, SEEDED, CustomObjective, TrialContext, search_metrics
from .proposals import Proposer, is_done
from .proxies import PROXIES, ProxyFailure
from .settings import SearchSettings
from .space import suggest
from .storage import WORKER, recover
from .training import median_latency_ms, train_accuracy

POLL_S = 1.0  # waiting for other workers' trials


class Evaluator:
    """Measures candidates of one search on one device: ``objective`` is what ``study.optimize`` calls."""

    def __init__(self, settings: SearchSettings, proposer: Proposer, storage, device: torch.device,
                 custom: CustomObjective | None = None):
        self.settings, self.proposer, self.storage, self.device, self.custom = settings, proposer, storage, device, custom
        self.metrics = search_metrics(settings, custom)
        self.seeded = custom is not None or bool(SEEDED & set(settings.objective))

    # --- the Optuna objective ------------------------------------------------------------------
    def objective(self, trial: optuna.Trial):
        try:
            return self._evaluate(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            raise

    def _evaluate(self, trial: optuna.Trial):
        study = trial.study
        trial.set_user_attr("worker", WORKER)
        candidate = self.proposer.candidate(suggest(trial, self.proposer.search.dims), trial.params)
        if candidate.design is not None:
            cost = candidate.design.cost
            trial.set_user_attr("arch_hash", candidate.arch_hash)
            trial.set_user_attr("model_params", cost.params)
            trial.set_user_attr("flops", cost.flops)
        if not candidate.feasible:  # a trial that skipped the proposal (queued by hand, or raced)
            self._reject(trial, candidate.reason(), candidate.constraints())
        ahead = sum(1 for t in study.get_trials(deepcopy=False)
                    if t.number < trial.number and (is_done(t) or t.state == TrialState.RUNNING))
        if ahead >= self.settings.trials:
            raise TrialFailure(f"surplus: the study already had {ahead} trials done or running when this one started")
        earlier = self._same_architecture(study, candidate.arch_hash, trial.number)
        if earlier is not None:
            trial.set_user_attr("reused_from", earlier.number)
            for key in ("latency_ms", "seed_values"):
                if key in earlier.user_attrs:
                    trial.set_user_attr(key, earlier.user_attrs[key])
            if earlier.state == TrialState.PRUNED:
                raise optuna.TrialPruned(f"the same architecture as trial {earlier.number}, which was pruned")
            return earlier.values if len(self.metrics) > 1 else earlier.values[0]
        seeds = [self.settings.seed + k for k in range(self.settings.repeats if self.seeded else 1)]
        per_seed = {}
        for k, seed in enumerate(seeds):
            per_seed[seed] = self.measure(candidate, seed, trial if k == 0 else None)
            if self.seeded:
                trial.set_user_attr("seed_values", {str(s): v for s, v in per_seed.items()})
        values = [statistics.fmean(v[i] for v in per_seed.values()) for i in range(len(self.metrics))]
        return values if len(values) > 1 else values[0]

    def _reject(self, trial: optuna.Trial, reason: str, constraints: dict) -> None:
        trial.set_user_attr("rejected", reason)
        for key, excess in constraints.items():
            trial.set_constraint(key, excess)
        raise optuna.TrialPruned(reason)

    def _same_architecture(self, study: optuna.Study, arch_hash: str, number: int):
        """An earlier complete or pruned trial of this architecture; one still running elsewhere is
        waited for (only those numbered lower, so two workers never wait for each other)."""
        while True:
            same = [t for t in study.get_trials(deepcopy=False)
                    if t.user_attrs.get("arch_hash") == arch_hash and t.number != number]
            finished = [t for t in same if is_done(t)]
            if finished:
                return min(finished, key=lambda t: t.number)
            if not any(t.state == TrialState.RUNNING and t.number < number for t in same):
                return None
            time.sleep(POLL_S)
            recover(study, self.storage)

    # --- measuring -----------------------------------------------------------------------------
    def data(self, candidate: Candidate):
        """The search's images at the objective's input (in-memory sets are cached by ``open_data``)."""
        image = candidate.objective_design.spec.input
        opts = self.settings.data
        return open_data(opts.dataset, image.channels, image.height, image.width, augment=opts.augment,
                         workers=opts.workers)

    def measure(self, candidate: Candidate, seed: int, trial: optuna.Trial | None = None) -> list[float]:
        """The metrics' values for one seed (``trial``: report epochs to its pruner and record
        latency and epochs trained on it; None for a repeat or a confirmation)."""
        settings = self.settings
        names = [] if self.custom else settings.objective
        cost = candidate.design.cost
        results: dict[str, float] = {"flops": cost.flops, "params": cost.params}
        if not self.custom and not (set(names) - ANALYTIC) and settings.budget.latency is None:
            return self._values(results)
        torch.manual_seed(seed)
        model = build_model(candidate.design)
        if "latency" in names or settings.budget.latency is not None:
            image = candidate.design.spec.input
            latency = median_latency_ms(model, (image.channels, image.height, image.width), self.device,
                                        settings.precision)
            results["latency"] = latency
            if trial is not None:
                trial.set_user_attr("latency_ms", latency)
                if settings.budget.latency is not None and latency > settings.budget.latency:
                    self._reject(trial, f"latency {latency:.2f} ms over the budget of {settings.budget.latency} ms",
                                 {"latency": latency / settings.budget.latency - 1})
        if not (self.custom or SEEDED & set(names)):
            return self._values(results)
        if candidate.objective_design is not candidate.design:
            torch.manual_seed(seed)
            model = build_model(candidate.objective_design)
        model.to(self.device)
        report = self._reporter(trial)
        if self.custom:
            context = TrialContext(trial=trial, design=candidate.objective_design, device=self.device,
                                   precision=settings.precision, seed=seed, settings=settings, report=report,
                                   open_data=lambda: self.data(candidate))
            return self.custom.values(self.custom.fn(model, context))
        data = self.data(candidate)
        if "proxy" in names:
            images, labels = data.sample(settings.data.proxy_batch)
            try:
                results["proxy"] = PROXIES[settings.data.proxy](model, images.to(self.device), labels.to(self.device))
            except ProxyFailure as exc:
                raise TrialFailure(str(exc)) from None
        if "train" in names:
            results["train"] = train_accuracy(model, data, settings.data, seed, report, self.device,
                                              settings.precision)
        return self._values(results)

    def _values(self, results: dict) -> list[float]:
        return [results[name] for name in self.settings.objective]

    def _reporter(self, trial: optuna.Trial | None):
        """Intermediate values to Optuna's pruner (the first seed of a single-objective trial only);
        the epochs trained are recorded on the trial as they go."""
        def report(value: float, step: int) -> None:
            if trial is None:
                return
            trial.set_user_attr("epochs_trained", step)
            if len(self.metrics) > 1:
                return
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {step} at {self.metrics[0].name} {value:.4f}")
        return report
