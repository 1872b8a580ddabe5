"""Proposals: candidates drawn by the sampler in memory and checked against the budget before a
trial is stored.

The sampler (TPE by default) runs on an in-memory *proposal study* that mirrors the finished
trials of the real study. It samples a candidate define-by-run (one ``suggest_*`` per dimension,
named by its field path); the candidate is validated and costed analytically; one over the budget
or breaking a shape rule is told to the proposal study as pruned with Optuna constraints
(``Trial.set_constraint``: its relative excess), so the sampler learns to avoid it, and another is
drawn, up to ``max_rejections`` in a row. Nothing is built and nothing is written to the storage for
a rejection (a stored trial costs ~100 ms in SQLite; a proposal about 2 ms).

What a sampler records on the trial it samples (``system_attrs``: NSGA-II's generation number) goes
with the accepted proposal to the real study's trial (user attribute ``sampler_attrs``) and comes back
when that trial is mirrored, since a sampler that keeps state on its trials needs it on the finished
ones: NSGA-II counts a finished trial in a generation only by that attribute, and without it stays in
its first, random generation for the whole search. (Trials proposed by other workers carry the
generation their own proposal studies gave them.)
"""
from __future__ import annotations

import collections

import optuna
from optuna.trial import TrialState

from ..errors import format_path
from .candidate import Candidate, check_candidate
from .failures import SearchStopped
from .settings import SearchFile
from .space import spec_text, suggest

MAX_DUPLICATES = 50  # proposals of known architectures skipped before one is accepted (and reuses a result)


def is_done(trial: optuna.trial.FrozenTrial) -> bool:
    """Complete, or pruned by the pruner (a latency rejection is pruned too, but not done)."""
    return trial.state == TrialState.COMPLETE or (trial.state == TrialState.PRUNED and "rejected" not in trial.user_attrs)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=10)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


class Proposer:
    """One worker's proposals: its sampler (seeded for this worker), the candidates it has checked,
    and its rejection counts."""

    def __init__(self, search: SearchFile, directions: list[str], seed: int, max_params: float):
        self.search, self.settings, self.max_params = search, search.settings, max_params
        self.candidates: dict[tuple, Candidate] = {}
        self.rejections: collections.Counter = collections.Counter()  # by kind, this worker's whole run
        self.since_accepted: collections.Counter = collections.Counter()
        self.cheapest: Candidate | None = None  # the valid rejected candidate nearest the budget
        self.invalid_example: Candidate | None = None
        self.mirrored: set[int] = set()
        self.study = optuna.create_study(directions=directions, sampler=make_sampler(self.settings.sampler, seed))

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
            self.study.add_trial(optuna.trial.create_trial(
                state=t.state, values=t.values, params=t.params, distributions=t.distributions,
                intermediate_values=t.intermediate_values,
                system_attrs={**t.user_attrs.get("sampler_attrs", {}), **constraints}))

    def propose(self, study: optuna.Study) -> tuple[dict, dict, Candidate, dict]:
        """A candidate within the analytic budget, preferably of an architecture the study has not
        seen (``MAX_DUPLICATES`` known ones are skipped, then one is taken and reuses its result):
        its params, distributions, candidate and what the sampler recorded on it (``sampler_attrs``)."""
        self._mirror(study)
        known = {t.user_attrs.get("arch_hash") for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL}
        duplicates = 0
        for _ in range(self.settings.max_rejections):
            trial = self.study.ask()
            candidate = self.candidate(suggest(trial, self.search.dims), trial.params)
            if candidate.feasible:
                self.study.tell(trial, state=TrialState.FAIL)  # its result arrives through the real study
                if candidate.arch_hash in known and duplicates < MAX_DUPLICATES:
                    duplicates += 1
                    continue
                recorded = self.study.get_trials(deepcopy=False)[trial.number].system_attrs
                return trial.params, trial.distributions, candidate, dict(recorded)
            for key, excess in candidate.constraints().items():
                trial.set_constraint(key, excess)
            self.study.tell(trial, state=TrialState.PRUNED)
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
