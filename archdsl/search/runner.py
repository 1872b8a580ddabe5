"""The search loop: one worker's run over a shared study, and its results.

How one trial comes about: the worker's ``Proposer`` draws a candidate within the analytic budget
(``proposals.py``); it is added to the study as a WAITING trial with its parameters;
``study.optimize(n_trials=1)`` pops the oldest waiting trial (a retry of a lost trial first), so
Optuna runs it with its heartbeat, records exceptions as failures and prunes on reported values;
the ``Evaluator`` measures it (``evaluation.py``). The study runs until ``trials`` trials are
complete or pruned, whichever worker ran them; lost trials are recovered (``storage.py``). Then the
best trials are confirmed with more seeds and tested for ties (``noise.py``), and the results
written (``report.py``).

``run(path, ...)`` is the Python entry point (``archdsl search`` calls the same), with
``objective=fn`` for a custom objective.
"""
from __future__ import annotations

import collections
import hashlib
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from ..pipeline import DEFAULT_MAX_PARAMS
from .data import class_count
from .evaluation import POLL_S, Evaluator
from .failures import SearchStopped
from .noise import ALPHA, TEST_TEXT, confirm, pooled_std, seed_values, tie_p_value
from .objectives import ANALYTIC, BUILT_IN, SEEDED, CustomObjective, search_metrics
from .proposals import Proposer, is_done
from .pruners import make_pruner, pruning_note
from .report import TrialRow, pareto_front, plot_trials, results_table, spec_yaml, write_atomic, write_csv
from .settings import SearchFile, SearchSettings, load_search
from .space import substitute, suggest
from .storage import WORKER, open_storage, open_study, recover, register_worker, sampler_seed, with_driver
from .training import resolve_device

MAX_FAILURES = 5  # trials of this worker failing in a row stop it (a broken setup, not a bad candidate)

__all__ = ["Outcome", "Search", "SearchStopped", "run"]


@dataclass
class Outcome:
    """What ``run`` hands back: every trial, the best (or Pareto) ones and where results went."""

    rows: list[TrialRow]
    best: list[TrialRow]
    out_dir: Path
    summary: str
    table: str
    seed_noise: float | None = None  # pooled standard deviation over seeds of the primary metric
    tied: list[TrialRow] | None = None  # trials statistically tied with the best (single objective)


class Search:
    """One worker of a search over ``search``'s space; ``run()`` works until the study has
    ``trials`` trials done (other workers on the same storage and study name share the count)."""

    def __init__(self, search: SearchFile, out_dir: Path, storage: str | None = None, study_name: str | None = None,
                 max_params: float = DEFAULT_MAX_PARAMS, progress: bool = True, echo: Callable[[str], None] = print,
                 device: str = "auto", objective: CustomObjective | None = None):
        self.search, self.settings = search, search.settings
        self.out_dir = Path(out_dir)
        self.storage_url = with_driver(storage) if storage else f"sqlite:///{(self.out_dir / 'study.db').resolve()}"
        self.study_name = study_name or search.name
        self.max_params, self.progress, self.echo = max_params, progress, echo
        self.device = resolve_device(device)
        self.custom = objective
        self.metrics = search_metrics(self.settings, objective)
        self.uses_data = objective is not None or bool(SEEDED & set(self.settings.objective))
        if self.uses_data:
            self._set_classes(class_count(self.settings.data.dataset))
        self.pruning_note = pruning_note(self.settings.pruner, list(self.settings.objective) if not objective
                                         else list(objective.names), objective is not None)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self.storage = self.worker_index = self.proposer = self.evaluator = None

    def _set_classes(self, classes: int) -> None:
        """The head classifies the data's classes (so the budget counts the head that is trained)."""
        tree = self.search.base.tree
        head = tree.get("head")
        tree["head"] = {**head, "classes": classes} if isinstance(head, dict) else {"classes": classes}

    def _fingerprint(self) -> dict:
        """What a study must have been started with to be continued: objectives, budget, space, data."""
        s = self.settings
        base = json.dumps(self.search.base.tree, sort_keys=True, default=str)
        return {"objective": [self.custom.label] if self.custom else list(s.objective),
                "budget": s.budget.model_dump(), "input": s.input.model_dump() if s.input else None,
                "data": s.data.model_dump(exclude={"workers"}) if self.uses_data else None,
                "precision": s.precision, "repeats": s.repeats,
                "space": hashlib.sha256(base.encode()).hexdigest()[:16]}

    def open_study(self) -> optuna.Study:
        """Open the storage and study, register this worker (its index seeds its sampler)."""
        if self.storage_url.startswith("sqlite:"):
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.storage = open_storage(self.storage_url)
        pruner = make_pruner("none" if self.pruning_note else self.settings.pruner, self.settings.data.epochs)
        directions = [m.direction for m in self.metrics]
        study = open_study(self.storage, self.study_name, directions, pruner, self._fingerprint())
        self.worker_index = register_worker(self.storage, self.study_name)
        seed = sampler_seed(self.settings.seed, self.worker_index)
        self.proposer = Proposer(self.search, directions, seed, self.max_params)
        self.evaluator = Evaluator(self.settings, self.proposer, self.storage, self.device, self.custom)
        return study

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> Outcome:
        study = self.open_study()
        for number in recover(study, self.storage):
            self.echo(f"trial {number} was running when its worker died: marked failed, queued again")
        bar = self._progress_bar()
        failures: list[str] = []
        try:
            while True:
                trials = study.get_trials(deepcopy=False)
                done = sum(1 for t in trials if is_done(t))
                running = sum(1 for t in trials if t.state == TrialState.RUNNING)
                self._update(bar, study, done)
                if done >= self.settings.trials:
                    break
                if done + running >= self.settings.trials:
                    time.sleep(POLL_S)  # the last trials run elsewhere; take over any that is lost
                    recover(study, self.storage)
                    continue
                if not any(t.state == TrialState.WAITING for t in trials):
                    params, distributions, candidate, sampler_attrs = self.proposer.propose(study)
                    study.add_trial(optuna.trial.create_trial(
                        state=TrialState.WAITING, params=params, distributions=distributions,
                        user_attrs={"rejections": dict(self.proposer.since_accepted),
                                    "arch_hash": candidate.arch_hash, "sampler_attrs": sampler_attrs}))
                    self.proposer.since_accepted.clear()
                study.optimize(self.evaluator.objective, n_trials=1, catch=(Exception,),
                               callbacks=[self._after_trial(bar)])
                mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == WORKER]
                last = mine[-1] if mine else None
                if last is not None and last.state == TrialState.FAIL:
                    failures.append(last.user_attrs.get("fail_reason", ""))
                    if len(failures) >= MAX_FAILURES:
                        raise SearchStopped(f"{MAX_FAILURES} trials in a row failed; the last: {failures[-1]}")
                else:
                    failures.clear()
        finally:
            if bar is not None:
                bar.close()
        return self.finish(study)

    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm
        return tqdm(total=self.settings.trials, desc=self.study_name, unit="trial", file=sys.stderr,
                    dynamic_ncols=True, mininterval=0.2)

    def _update(self, bar, study: optuna.Study, done: int) -> None:
        if bar is None:
            return
        bar.n = min(done, self.settings.trials)
        best = self._best_text(study)
        bar.set_postfix_str(f"{best}rejected {sum(self.proposer.rejections.values())}", refresh=False)
        bar.refresh()

    def _best_text(self, study: optuna.Study) -> str:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            return ""
        if len(self.metrics) > 1:
            return f"front {len(study.best_trials)} | "
        pick = max if self.metrics[0].direction == "maximize" else min
        best = pick(complete, key=lambda t: t.value)
        return f"best {self.metrics[0].name} {best.value:.4g} (#{best.number}, one run) | "

    def _after_trial(self, bar):
        def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if trial.state == TrialState.FAIL:
                message = f"trial {trial.number} failed: {trial.user_attrs.get('fail_reason', 'no reason recorded')}"
                if bar is not None:
                    bar.write(message, file=sys.stderr)
                else:
                    print(message, file=sys.stderr)
        return callback

    # --- results -------------------------------------------------------------------------------
    def primary_metric(self) -> int:
        """The index of the metric that seeds change (ties are tested on it): the first not analytic."""
        names = self.custom.names if self.custom else self.settings.objective
        return next((i for i, n in enumerate(names) if self.custom or n not in ANALYTIC | {"latency"}), 0)

    def rows(self, study: optuna.Study) -> list[TrialRow]:
        trials = study.get_trials(deepcopy=False)
        attrs = study.user_attrs
        retried = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
        names = [m.name for m in self.metrics]
        out = []
        for t in trials:
            a = t.user_attrs
            state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
                     TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}[t.state]
            reason = a.get("fail_reason", "")
            if "rejected" in a:
                state, reason = "rejected", a["rejected"]
            elif t.state == TrialState.FAIL and not reason:
                reason = "lost: no heartbeat from its worker"
            if t.number in retried:
                reason += f" (redone as trial {retried[t.number]})"
            seeds = {s: dict(zip(names, v)) for s, v in seed_values(study, t, attrs).items()} \
                if t.state == TrialState.COMPLETE else {}
            values = dict(zip(names, t.values)) if t.values else {}
            for name in names if seeds else ():
                values[name] = math.fsum(v[name] for v in seeds.values()) / len(seeds)  # mean over all its seeds
            out.append(TrialRow(
                number=t.number, state=state, values=values, params=a.get("model_params"),
                flops=a.get("flops"), latency_ms=a.get("latency_ms"), arch_hash=a.get("arch_hash", ""),
                reused_from=a.get("reused_from"), retry_of=a.get("retry_of"),
                rejections=sum(a.get("rejections", {}).values()), reason=reason,
                seconds=t.duration.total_seconds() if t.duration else None, worker=a.get("worker", ""),
                sampled=dict(t.params), seeds=seeds, epochs=a.get("epochs_trained"),
                last_intermediate=t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None))
        return out

    def _evaluated(self, rows: list[TrialRow]) -> list[TrialRow]:
        metric = self.metrics[self.primary_metric()].name
        return [r for r in rows if r.state == "complete" and r.reused_from is None
                and not math.isnan(r.values.get(metric, math.nan))]

    def best_rows(self, rows: list[TrialRow]) -> list[TrialRow]:
        """The best complete trial by its mean over seeds, or the Pareto front of several objectives."""
        complete = self._evaluated(rows)
        if not complete:
            return []
        if len(self.metrics) > 1:
            return pareto_front(complete, self.metrics)
        metric = self.metrics[0]
        pick = max if metric.direction == "maximize" else min
        return [pick(complete, key=lambda r: (r.values[metric.name], -r.number))]

    def confirm(self, study: optuna.Study) -> int:
        """Re-evaluate the best trials with the confirmation seeds (``noise.confirm``)."""
        if not self.evaluator.seeded:
            return 0
        rows = self.rows(study)
        pool = self.best_rows(rows) if len(self.metrics) > 1 else self._evaluated(rows)
        trials = [study.trials[r.number] for r in pool]
        metric = self.primary_metric()

        def measure(trial: optuna.trial.FrozenTrial, seed: int) -> list[float]:
            values = suggest(optuna.trial.FixedTrial(trial.params), self.search.dims)
            candidate = self.proposer.candidate(values, trial.params)
            return self.evaluator.measure(candidate, seed)

        return confirm(study, trials, metric, self.metrics[metric].direction == "maximize", self.settings, measure)

    def ties(self, rows: list[TrialRow], best: TrialRow) -> tuple[float | None, int, dict[int, float]]:
        """The seed noise (pooled std, degrees of freedom) of the primary metric and, for each other
        evaluated trial, the p-value of its tie test with ``best`` (empty when the noise is unknown)."""
        name = self.metrics[self.primary_metric()].name
        evaluated = self._evaluated(rows)
        series = {r.number: [v[name] for v in r.seeds.values()] or [r.values[name]] for r in evaluated}
        noise, dof = pooled_std(list(series.values()))
        p_values = {}
        for r in evaluated:
            if r.number != best.number:
                p = tie_p_value(series[best.number], series[r.number], noise)
                if p is not None:
                    p_values[r.number] = p
        return noise, dof, p_values

    def spec_of(self, study: optuna.Study, row: TrialRow) -> str:
        """A trial's architecture as a standalone spec (no search forms, no search section)."""
        trial = study.trials[row.number]
        values = suggest(optuna.trial.FixedTrial(trial.params), self.search.dims)
        tree = substitute(self.search.base, values).tree
        name = f"{tree.get('name', 'model')}_trial{row.number}"
        metrics = ", ".join(f"{m.name} {row.values[m.name]:.4g}" for m in self.metrics if m.name in row.values)
        runs = f" (mean of {len(row.seeds)} seeds)" if len(row.seeds) > 1 else ""
        header = [f"trial {row.number} of search {self.study_name!r}: {metrics}{runs}",
                  f"params {trial.user_attrs.get('model_params', 0):,}, FLOPs {trial.user_attrs.get('flops', 0):,} "
                  f"(analytic), architecture {trial.user_attrs.get('arch_hash', '')}",
                  "sampled: " + ", ".join(f"{k}={v}" for k, v in trial.params.items())]
        return spec_yaml({"name": name, **{k: v for k, v in tree.items() if k != "name"}}, header)

    def finish(self, study: optuna.Study) -> Outcome:
        confirmations = self.confirm(study)
        rows = self.rows(study)
        best = self.best_rows(rows)
        out = self.out_dir
        noise, dof, p_values, tied = None, 0, {}, []
        if best and self.evaluator.seeded:
            noise, dof, p_values = self.ties(rows, best[0])
            if len(self.metrics) == 1:
                tied = sorted((r for r in rows if p_values.get(r.number, 0) >= ALPHA), key=lambda r: -p_values[r.number])
        sampled = list(dict.fromkeys([d.name for d in self.search.dims] + [k for r in rows for k in r.sampled]))
        write_csv(out / "trials.csv", rows, self.metrics, sampled)  # nested dimensions after the top-level ones
        spec_dir = out / "best"
        spec_dir.mkdir(parents=True, exist_ok=True)
        for old in spec_dir.glob("*.yaml"):
            old.unlink(missing_ok=True)
        for row in best + tied:
            write_atomic(spec_dir / f"trial_{row.number}.yaml", self.spec_of(study, row).encode())
        metric = next((m for m in self.metrics if m.name not in ("flops", "params")), self.metrics[0])
        front = pareto_front([r for r in rows if r.state == "complete" and metric.name in r.values],
                             [metric, BUILT_IN["flops"]] if metric.name != "flops" else [metric])
        counts = collections.Counter(r.state for r in rows)
        reused = sum(1 for r in rows if r.reused_from is not None)
        kinds = self.rejection_kinds(study)
        rejected = sum(kinds.values())
        title = (f"{self.study_name}: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} "
                 f"failed, {rejected} rejected before training")
        plot_trials(out / "trials_vs_flops.png", rows, front, metric, self.settings.budget.flops, title)
        budget = self.settings.budget
        lines = [f"{self.study_name}: {counts['complete']} complete ({reused} reused a result), {counts['pruned']} "
                 f"pruned, {counts['failed']} failed; {rejected} candidates rejected before training "
                 f"({', '.join(f'{n} {k}' for k, n in kinds.most_common()) or 'none'}); budget {budget.flops / 1e6:g}M "
                 f"FLOPs" + (f", {budget.params / 1e6:g}M params" if budget.params else "")
                 + (f", {budget.latency:g} ms" if budget.latency else "")
                 + f"; device {self.device}, {self.settings.precision}"]
        lines += self._pruning_lines(rows)
        lines += self._noise_lines(best, tied, noise, dof, confirmations)
        table = results_table(best + tied, self.metrics, p_values if noise is not None and len(self.metrics) == 1
                              else None)
        return Outcome(rows, best, out, "\n".join(lines), table, noise, tied)

    def _pruning_lines(self, rows: list[TrialRow]) -> list[str]:
        if self.pruning_note:
            return [self.pruning_note]
        trained = [r.epochs for r in rows if r.epochs is not None and r.reused_from is None]
        if self.settings.pruner == "none" or not trained:
            return []
        full = self.settings.data.epochs * len(trained)
        return [f"pruner {self.settings.pruner}: {sum(trained)} epochs trained in the search's first runs, against "
                f"{full} unpruned ({sum(trained) / full:.0%}); {sum(r.state == 'pruned' for r in rows)} trials pruned"]

    def _noise_lines(self, best, tied, noise, dof, confirmations) -> list[str]:
        if not self.evaluator.seeded or not best:
            return []
        name = self.metrics[self.primary_metric()].name
        if noise is None and len(self.metrics) == 1:
            return [f"seed noise not measured (search.repeats 1, no confirmation seeds): the best {name} is one run, "
                    f"untested against the others; set search.confirm or repeats"]
        lines = []
        if confirmations:
            lines.append(f"confirmed: the best trials trained again with {self.settings.confirm.seeds} more seed(s) "
                         f"each ({confirmations} runs)")
        if noise is not None:
            lines.append(f"seed noise of {name}: std {noise:.4f} (pooled, {dof} degrees of freedom)")
        if len(self.metrics) == 1:
            lines.append(f"{len(tied)} trial(s) tied with the best ({TEST_TEXT})"
                         + (": the ranking among them is within seed noise, no single winner" if tied else
                            f": trial {best[0].number} is the best beyond seed noise"))
        return lines

    @staticmethod
    def rejection_kinds(study: optuna.Study) -> collections.Counter:
        """Rejections by kind over the whole study (``invalid``, ``flops``, ``params``, ``latency``): those
        counted by the proposals before each accepted trial, and stored rejected trials."""
        kinds: collections.Counter = collections.Counter()
        for t in study.get_trials(deepcopy=False):
            kinds.update(t.user_attrs.get("rejections", {}))
            if "rejected" in t.user_attrs:
                kinds["latency" if t.user_attrs["rejected"].startswith("latency") else "at trial"] += 1
        return kinds


def run(path: str | Path, objective: Callable | CustomObjective | None = None, *, names: tuple[str, ...] = ("objective",),
        directions: tuple[str, ...] = ("maximize",), out: str | Path | None = None, storage: str | None = None,
        study: str | None = None, device: str = "auto", progress: bool = False, max_params: float = DEFAULT_MAX_PARAMS,
        echo: Callable[[str], None] = print, **settings) -> Outcome:
    """Search the space of the search file at ``path``; ``settings`` override its ``search:`` section
    (``trials=6, pruner="hyperband", precision="bf16", seed=1, data={"dataset": "digits"}``).

    ``objective``: a function ``fn(model, context) -> float | tuple`` (see ``objectives.TrialContext``)
    measured instead of the file's objectives, its values named ``names`` and optimised in
    ``directions``; results go to ``out`` (default ``results/<study>``)."""
    search = load_search(path)
    merged = search.settings.model_dump()
    for key, value in settings.items():
        merged[key] = {**merged[key], **value} if isinstance(merged.get(key), dict) and isinstance(value, dict) \
            else value
    search.settings = SearchSettings.model_validate(merged)
    if objective is not None and not isinstance(objective, CustomObjective):
        objective = CustomObjective(objective, tuple(names), tuple(directions))
    folder = Path(out) if out else Path("results") / (study or search.name)
    return Search(search, folder, storage=storage, study_name=study, max_params=max_params, progress=progress,
                  echo=echo, device=device, objective=objective).run()
