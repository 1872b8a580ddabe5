"""The search loop: Optuna study, budget-checked proposals, evaluation, recovery, results.

How one trial comes about:

1. **Proposal, in memory.** The sampler (TPE by default) runs on an in-memory *proposal study* that
   mirrors the finished trials of the real study. It samples a candidate define-by-run (one
   ``suggest_*`` per dimension, named by its field path); the candidate is validated and costed
   analytically; one over the budget or breaking a shape rule is told to the proposal study as
   pruned with Optuna constraints (its relative excess), so the sampler learns to avoid it, and
   another is drawn, up to ``max_rejections`` in a row. Nothing is built and nothing is written to
   the storage for a rejection (a stored trial costs ~100 ms in SQLite; a proposal about 2 ms).
2. **Trial, in the storage.** The accepted candidate is added to the real study as a WAITING trial
   with its parameters; ``study.optimize(n_trials=1)`` pops the oldest waiting trial (a retry of a
   lost trial first), so Optuna runs it with its heartbeat, records exceptions as failures and
   prunes on reported values.
3. **Evaluation.** The trial's architecture hash is compared with the study's: a complete (or
   pruned) trial of the same architecture gives its result without a new evaluation; one still
   running in another worker is waited for. Otherwise the model is built, its latency measured when
   the budget or objective needs it (over a latency budget: rejected, never trained), and the
   objectives computed.

Nothing is lost: a trial that raises or whose loss turns NaN fails with its reason stored; a
RUNNING trial whose worker died (a process of this host that is gone, or no heartbeat for
``GRACE_S`` seconds from anywhere) is marked FAIL and its parameters queued again; the study runs
until ``trials`` trials are complete or pruned, whichever worker ran them.
"""
from __future__ import annotations

import collections
import json
import hashlib
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
import torch
from optuna.trial import TrialState

from .. import DEFAULT_MAX_PARAMS, build_model
from ..errors import format_path
from .candidate import Candidate, check_candidate
from .data import class_count, load_images
from .objectives import METRICS, TrialFailure, median_latency_ms, naswot_score, train_accuracy
from .report import TrialRow, pareto_front, plot_trials, results_table, spec_yaml, write_atomic, write_csv
from .settings import SearchFile
from .space import spec_text, substitute, suggest

HEARTBEAT_S = 5  # a running trial records a heartbeat this often
GRACE_S = 30  # ... and is taken as lost after this long without one
POLL_S = 1.0  # waiting for other workers' trials
MAX_FAILURES = 5  # trials of this worker failing in a row stop it (a broken setup, not a bad candidate)
MAX_DUPLICATES = 50  # proposals of known architectures skipped before one is accepted (and reuses a result)
DATA_OBJECTIVES = {"train", "proxy"}


class SearchStopped(Exception):
    """The search cannot go on (no feasible candidate, a study started with other settings)."""


@dataclass
class Outcome:
    """What ``run`` hands back: every trial, the best (or Pareto) ones and where results went."""

    rows: list[TrialRow]
    best: list[TrialRow]
    out_dir: Path
    summary: str
    table: str


def _start_ticks(pid: int) -> str:
    """A process's start time in clock ticks since boot (Linux), to tell a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


WORKER = f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def _worker_is_dead(worker: str) -> bool:
    """True for a worker of this host whose process is gone (other hosts: the heartbeat decides)."""
    host, pid, ticks = worker.rsplit(":", 2)
    return host == socket.gethostname() and bool(ticks) and _start_ticks(int(pid)) != ticks


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a lost trial's parameters again (a WAITING trial, which workers pop first)."""
    if trial.params:
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=trial.params,
                                                  distributions=trial.distributions,
                                                  user_attrs={"retry_of": trial.number}))


def with_driver(url: str) -> str:
    """``postgresql://`` through psycopg2 (the driver archdsl installs; SQLAlchemy 2.1 defaults to psycopg 3)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url[len(scheme):]
    return url


def is_done(trial: optuna.trial.FrozenTrial) -> bool:
    """Complete, or pruned by the pruner (a latency rejection is pruned too, but not done)."""
    return trial.state == TrialState.COMPLETE or (trial.state == TrialState.PRUNED and "rejected" not in trial.user_attrs)


class Search:
    """One worker of a search over ``search``'s space; ``run()`` works until the study has
    ``trials`` trials done (other workers on the same storage and study name share the count)."""

    def __init__(self, search: SearchFile, out_dir: Path, storage: str | None = None, study_name: str | None = None,
                 max_params: float = DEFAULT_MAX_PARAMS, progress: bool = True, echo: Callable[[str], None] = print):
        self.search, self.settings = search, search.settings
        self.metrics = [METRICS[name] for name in self.settings.objective]
        self.out_dir = Path(out_dir)
        self.storage_url = with_driver(storage) if storage else f"sqlite:///{(self.out_dir / 'study.db').resolve()}"
        self.study_name = study_name or search.name
        self.max_params, self.progress, self.echo = max_params, progress, echo
        self.uses_data = bool(DATA_OBJECTIVES & set(self.settings.objective))
        if self.uses_data:
            self._set_classes(class_count(self.settings.data.dataset))
        self.candidates: dict[tuple, Candidate] = {}
        self.rejections: collections.Counter = collections.Counter()  # by kind, this worker's whole run
        self.since_accepted: collections.Counter = collections.Counter()
        self.cheapest: Candidate | None = None  # the valid rejected candidate nearest the budget
        self.invalid_example: Candidate | None = None
        self.mirrored: set[int] = set()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self.proposals = optuna.create_study(directions=[m.direction for m in self.metrics], sampler=self._sampler())

    # --- setting up ----------------------------------------------------------------------------
    def _set_classes(self, classes: int) -> None:
        """The head classifies the data's classes (so the budget counts the head that is trained)."""
        tree = self.search.base.tree
        head = tree.get("head")
        tree["head"] = {**head, "classes": classes} if isinstance(head, dict) else {"classes": classes}

    def _sampler(self) -> optuna.samplers.BaseSampler:
        seed = self.settings.seed
        if self.settings.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.settings.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=10)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)

    def _fingerprint(self) -> dict:
        """What a study must have been started with to be continued: objectives, budget, space."""
        base = json.dumps(self.search.base.tree, sort_keys=True, default=str)
        return {"objective": list(self.settings.objective), "budget": self.settings.budget.model_dump(),
                "input": self.settings.input.model_dump() if self.settings.input else None,
                "dataset": self.settings.data.dataset if self.uses_data else None,
                "space": hashlib.sha256(base.encode()).hexdigest()[:16]}

    def open_study(self) -> optuna.Study:
        """Create or load the study (retrying while another worker creates the same tables)."""
        if self.storage_url.startswith("sqlite:"):
            self.out_dir.mkdir(parents=True, exist_ok=True)
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
                  if self.settings.objective == ["train"] and self.settings.data.pruner == "median"
                  else optuna.pruners.NopPruner())
        engine = {"connect_args": {"timeout": 60}} if self.storage_url.startswith("sqlite:") else {}
        for attempt in range(5):
            try:
                storage = optuna.storages.RDBStorage(self.storage_url, engine_kwargs=engine,
                                                     heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                                     heartbeat_stale_trial_callback=requeue)
                study = optuna.create_study(storage=storage, study_name=self.study_name, load_if_exists=True,
                                            directions=[m.direction for m in self.metrics], pruner=pruner,
                                            sampler=optuna.samplers.RandomSampler(seed=self.settings.seed))
                break
            except Exception as exc:  # noqa: BLE001 - filtered below
                racing = (type(exc).__module__.startswith("sqlalchemy")  # tables created by another worker
                          or isinstance(exc, optuna.exceptions.DuplicatedStudyError))
                if attempt == 4 or not racing:
                    raise
                time.sleep(1 + attempt)
        stored = study.user_attrs.get("search")
        if stored is None:
            study.set_user_attr("search", self._fingerprint())
        elif stored != self._fingerprint():
            raise SearchStopped(f"study {self.study_name!r} was started with other settings ({stored}); continue it "
                                f"with those, or give another --study or --out")
        return study

    # --- recovering lost trials ----------------------------------------------------------------
    def recover(self, study: optuna.Study) -> list[int]:
        """Fail the RUNNING trials whose worker is gone and queue them again; the trial numbers."""
        failed = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = trial.user_attrs.get("worker")
            if worker and worker != WORKER and _worker_is_dead(worker):
                pid = worker.rsplit(":", 2)[1]
                try:
                    study._storage.set_trial_user_attr(trial._trial_id, "fail_reason",
                                                       f"its worker (pid {pid}) died while it ran; redone")
                    if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                        requeue(study, trial)
                        failed.append(trial.number)
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue  # another worker got there first
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return failed

    # --- proposing -----------------------------------------------------------------------------
    def candidate(self, values: dict, params: dict) -> Candidate:
        key = tuple(sorted(params.items()))
        if key not in self.candidates:
            self.candidates[key] = check_candidate(self.search, values, self.settings.budget, self.max_params)
        return self.candidates[key]

    def _mirror(self, study: optuna.Study) -> None:
        """Copy the real study's newly finished trials into the proposal study."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if t.number in self.mirrored:
                continue
            self.mirrored.add(t.number)
            constraints = {k: v for k, v in t.system_attrs.items() if k.startswith("constraints")}
            self.proposals.add_trial(optuna.trial.create_trial(
                state=t.state, values=t.values, params=t.params, distributions=t.distributions,
                intermediate_values=t.intermediate_values, system_attrs=constraints))

    def propose(self, study: optuna.Study) -> tuple[dict, dict, Candidate]:
        """A candidate within the analytic budget, preferably of an architecture the study has not
        seen (``MAX_DUPLICATES`` known ones are skipped, then one is taken and reuses its result)."""
        self._mirror(study)
        known = {t.user_attrs.get("arch_hash") for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL}
        duplicates = 0
        for _ in range(self.settings.max_rejections):
            trial = self.proposals.ask()
            candidate = self.candidate(suggest(trial, self.search.dims), trial.params)
            if candidate.feasible:
                self.proposals.tell(trial, state=TrialState.FAIL)  # its result arrives through the real study
                if candidate.arch_hash in known and duplicates < MAX_DUPLICATES:
                    duplicates += 1
                    continue
                return trial.params, trial.distributions, candidate
            for key, excess in candidate.constraints().items():
                trial.set_constraint(key, excess)
            self.proposals.tell(trial, state=TrialState.PRUNED)
            self.rejections[candidate.rejection] += 1
            self.since_accepted[candidate.rejection] += 1
            if candidate.design is None:
                self.invalid_example = self.invalid_example or candidate
            elif self.cheapest is None or candidate.budget_ratio() < self.cheapest.budget_ratio():
                self.cheapest = candidate
        raise SearchStopped(self.no_feasible_message(study))

    def no_feasible_message(self, study: optuna.Study) -> str:
        """Why no candidate was found: the cheapest one seen, per stage, against the budget."""
        budget = self.settings.budget
        done = sum(1 for t in study.get_trials(deepcopy=False) if is_done(t))
        lead = (f"the search space has no candidate within the budget: {self.settings.max_rejections} candidates in a "
                f"row were rejected" if not done else
                f"{self.settings.max_rejections} candidates in a row were rejected after {done} trials; stopping")
        counts = ", ".join(f"{n} {kind}" for kind, n in self.rejections.most_common())
        lines = [f"{lead} ({counts})"]
        if self.cheapest is None:
            example = self.invalid_example
            lines.append("no sampled candidate is a valid model" + (f"; for example {example.problem}" if example else ""))
            return "\n".join(lines)
        design = self.cheapest.design
        lines.append("cheapest candidate seen: "
                     + ", ".join(f"{format_path(p)}={spec_text(v)}" for p, v in self.cheapest.values.items()))
        lines.append(f"  {'part':<8} {'params':>12} {'FLOPs':>14}")
        for part in design.parts():
            cost = design.part_cost(part)
            lines.append(f"  {part:<8} {cost.params:>12,} {cost.flops:>14,}")
        cost = design.cost
        lines.append(f"  {'total':<8} {cost.params:>12,} {cost.flops:>14,}")
        lines.append(f"  {'budget':<8} {budget.params or 0:>12,} {budget.flops:>14,}" if budget.params else
                     f"  {'budget':<8} {'-':>12} {budget.flops:>14,}")
        lines.append(f"{self.cheapest.reason()}; raise the budget or shrink the space (smaller widths, depths, "
                     f"inputs)")
        return "\n".join(lines)

    # --- evaluating ----------------------------------------------------------------------------
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
        candidate = self.candidate(suggest(trial, self.search.dims), trial.params)
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
            for key in ("latency_ms",):
                if key in earlier.user_attrs:
                    trial.set_user_attr(key, earlier.user_attrs[key])
            if earlier.state == TrialState.PRUNED:
                raise optuna.TrialPruned(f"the same architecture as trial {earlier.number}, which was pruned")
            return earlier.values if len(self.metrics) > 1 else earlier.values[0]
        return self._measure(trial, candidate)

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
            self.recover(study)

    def _measure(self, trial: optuna.Trial, candidate: Candidate):
        settings, seed = self.settings, self.settings.seed
        names = settings.objective
        results: dict[str, float] = {"flops": candidate.design.cost.flops, "params": candidate.design.cost.params}
        if not (set(names) - {"flops", "params"}) and settings.budget.latency is None:
            return self._values(results)
        torch.manual_seed(seed)
        model = build_model(candidate.design)
        if "latency" in names or settings.budget.latency is not None:
            image = candidate.design.spec.input
            latency = median_latency_ms(model, (image.channels, image.height, image.width))
            trial.set_user_attr("latency_ms", latency)
            results["latency"] = latency
            if settings.budget.latency is not None and latency > settings.budget.latency:
                self._reject(trial, f"latency {latency:.2f} ms over the budget of {settings.budget.latency} ms",
                             {"latency": latency / settings.budget.latency - 1})
        if self.uses_data:
            if candidate.objective_design is not candidate.design:
                torch.manual_seed(seed)
                model = build_model(candidate.objective_design)
            image = candidate.objective_design.spec.input
            data = load_images(settings.data.dataset, image.channels, image.height, image.width)
            if "proxy" in names:
                results["proxy"] = naswot_score(model, data.train_x[:settings.data.proxy_batch])
            if "train" in names:
                results["train"] = train_accuracy(model, data, settings.data, seed, self._reporter(trial))
        return self._values(results)

    def _values(self, results: dict):
        values = [results[name] for name in self.settings.objective]
        return values if len(values) > 1 else values[0]

    def _reporter(self, trial: optuna.Trial):
        """Intermediate validation accuracy to Optuna's pruner (single-objective studies only)."""
        def report(accuracy: float, epoch: int) -> None:
            if len(self.metrics) > 1:
                return
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch} at accuracy {accuracy:.4f}")
        return report

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> Outcome:
        study = self.open_study()
        for number in self.recover(study):
            self.echo(f"trial {number} was running when its worker died: marked failed, queued again")
        bar = self._progress_bar(study)
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
                    self.recover(study)
                    continue
                if not any(t.state == TrialState.WAITING for t in trials):
                    params, distributions, candidate = self.propose(study)
                    study.add_trial(optuna.trial.create_trial(
                        state=TrialState.WAITING, params=params, distributions=distributions,
                        user_attrs={"rejections": dict(self.since_accepted), "arch_hash": candidate.arch_hash}))
                    self.since_accepted.clear()
                study.optimize(self.objective, n_trials=1, catch=(Exception,), callbacks=[self._after_trial(bar)])
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

    def _progress_bar(self, study: optuna.Study):
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
        bar.set_postfix_str(f"{best}rejected {sum(self.rejections.values())}", refresh=False)
        bar.refresh()

    def _best_text(self, study: optuna.Study) -> str:
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not complete:
            return ""
        if len(self.metrics) > 1:
            return f"front {len(study.best_trials)} | "
        pick = max if self.metrics[0].direction == "maximize" else min
        best = pick(complete, key=lambda t: t.value)
        return f"best {self.metrics[0].name} {best.value:.4g} (#{best.number}) | "

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
    def rows(self, study: optuna.Study) -> list[TrialRow]:
        retried = {t.user_attrs["retry_of"]: t.number for t in study.get_trials(deepcopy=False)
                   if "retry_of" in t.user_attrs}
        out = []
        for t in study.get_trials(deepcopy=False):
            attrs = t.user_attrs
            state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
                     TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}[t.state]
            reason = attrs.get("fail_reason", "")
            if "rejected" in attrs:
                state, reason = "rejected", attrs["rejected"]
            elif t.state == TrialState.FAIL and not reason:
                reason = "lost: no heartbeat from its worker"
            if t.number in retried:
                reason += f" (redone as trial {retried[t.number]})"
            values = dict(zip((m.name for m in self.metrics), t.values)) if t.values else {}
            out.append(TrialRow(
                number=t.number, state=state, values=values, params=attrs.get("model_params"),
                flops=attrs.get("flops"), latency_ms=attrs.get("latency_ms"), arch_hash=attrs.get("arch_hash", ""),
                reused_from=attrs.get("reused_from"), retry_of=attrs.get("retry_of"),
                rejections=sum(attrs.get("rejections", {}).values()), reason=reason,
                seconds=t.duration.total_seconds() if t.duration else None, worker=attrs.get("worker", ""),
                sampled=dict(t.params),
                last_intermediate=t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None))
        return out

    def best_rows(self, rows: list[TrialRow]) -> list[TrialRow]:
        """The best complete trial, or the Pareto front of several objectives."""
        complete = [r for r in rows if r.state == "complete" and r.reused_from is None]
        if not complete:
            return []
        if len(self.metrics) > 1:
            return pareto_front(complete, self.metrics)
        metric = self.metrics[0]
        finite = [r for r in complete if not math.isnan(r.values[metric.name])]
        pick = max if metric.direction == "maximize" else min
        return [pick(finite, key=lambda r: (r.values[metric.name], -r.number))] if finite else []

    def spec_of(self, study: optuna.Study, number: int) -> str:
        """A trial's architecture as a standalone spec (no search forms, no search section)."""
        trial = study.trials[number]
        values = suggest(optuna.trial.FixedTrial(trial.params), self.search.dims)
        tree = substitute(self.search.base, values).tree
        name = f"{tree.get('name', 'model')}_trial{number}"
        metrics = ", ".join(f"{m.name} {v:.4g}" for m, v in zip(self.metrics, trial.values))
        header = [f"trial {number} of search {self.study_name!r}: {metrics}",
                  f"params {trial.user_attrs.get('model_params', 0):,}, FLOPs {trial.user_attrs.get('flops', 0):,} "
                  f"(analytic), architecture {trial.user_attrs.get('arch_hash', '')}",
                  "sampled: " + ", ".join(f"{k}={v}" for k, v in trial.params.items())]
        return spec_yaml({"name": name, **{k: v for k, v in tree.items() if k != "name"}}, header)

    def finish(self, study: optuna.Study) -> Outcome:
        rows = self.rows(study)
        best = self.best_rows(rows)
        out = self.out_dir
        sampled = list(dict.fromkeys([d.name for d in self.search.dims] + [k for r in rows for k in r.sampled]))
        write_csv(out / "trials.csv", rows, self.metrics, sampled)  # nested dimensions after the top-level ones
        spec_dir = out / "best"
        spec_dir.mkdir(parents=True, exist_ok=True)
        for old in spec_dir.glob("*.yaml"):
            old.unlink(missing_ok=True)
        for row in best:
            write_atomic(spec_dir / f"trial_{row.number}.yaml", self.spec_of(study, row.number).encode())
        metric = next((m for m in self.metrics if m.name not in ("flops", "params")), self.metrics[0])
        front = pareto_front([r for r in rows if r.state == "complete" and metric.name in r.values],
                             [metric, METRICS["flops"]] if metric.name != "flops" else [metric])
        counts = collections.Counter(r.state for r in rows)
        reused = sum(1 for r in rows if r.reused_from is not None)
        kinds = self.rejection_kinds(study)
        rejected = sum(kinds.values())
        title = (f"{self.study_name}: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} "
                 f"failed, {rejected} rejected before training")
        plot_trials(out / "trials_vs_flops.png", rows, front, metric, self.settings.budget.flops, title)
        summary = (f"{self.study_name}: {counts['complete']} complete ({reused} reused a result), {counts['pruned']} "
                   f"pruned, {counts['failed']} failed; {rejected} candidates rejected before training "
                   f"({', '.join(f'{n} {k}' for k, n in kinds.most_common()) or 'none'}); budget {self.settings.budget.flops / 1e6:g}M FLOPs"
                   + (f", {self.settings.budget.params / 1e6:g}M params" if self.settings.budget.params else "")
                   + (f", {self.settings.budget.latency:g} ms" if self.settings.budget.latency else ""))
        table = results_table(best, self.metrics)
        return Outcome(rows, best, out, summary, table)

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
