"""One sampled architecture: validated, costed and hashed before anything is built."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import Problem, SpecError
from ..graph import Design
from ..pipeline import design_from_source
from ..source import Source
from .settings import Budget, SearchFile
from .space import Dimension, extremes, substitute


@dataclass
class Candidate:
    """A point of the space. ``design`` is None when the spec breaks a rule (``problem`` says
    which); ``over`` maps each exceeded budget (``flops``, ``params``) to ``(cost, limit)``."""

    values: dict
    design: Design | None = None
    objective_design: Design | None = None  # at the objective's input (the same one without search.input)
    problem: str = ""
    arch_hash: str = ""
    over: dict = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return self.design is not None and not self.over

    @property
    def rejection(self) -> str:
        """The kind of rejection for the counts: ``invalid``, ``flops``, ``params``; empty if feasible."""
        return "invalid" if self.design is None else ",".join(self.over)

    def reason(self) -> str:
        if self.design is None:
            return f"invalid: {self.problem}"
        return "; ".join(f"{key} {value:,} over the budget of {limit:,}" for key, (value, limit) in self.over.items())

    def constraints(self) -> dict[str, float]:
        """Optuna constraint values (feasible when every one is <= 0): the relative excess over each
        budget, 1 for a spec that breaks a rule."""
        if self.design is None:
            return {"valid": 1.0}
        return {key: value / limit - 1 for key, (value, limit) in self.over.items()}

    def budget_ratio(self) -> float:
        """The largest cost-to-budget ratio (the cheapest infeasible candidate minimises it)."""
        return max([value / limit for value, limit in self.over.values()] or [0.0])


def canonical_spec(design: Design) -> dict:
    """The resolved spec with every default filled in, name and description left out, and each
    stage's mixer list written out block by block (``[a, b]`` over 4 blocks = ``[a, b, a, b]``):
    two spellings of one architecture give one canonical spec."""
    spec = design.spec.model_dump(mode="json", exclude={"name", "description"})
    for stage in spec["stages"]:
        mixers = stage.get("mixer")
        if isinstance(mixers, list) and isinstance(stage.get("depth"), int):
            stage["mixer"] = [mixers[j % len(mixers)] for j in range(stage["depth"])]
    return spec


def architecture_hash(design: Design) -> str:
    """SHA-256 of the canonical spec (sorted keys): equal for equal architectures, however written."""
    text = json.dumps(canonical_spec(design), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_candidate(search: SearchFile, values: dict[tuple, Any], budget: Budget, max_params: float) -> Candidate:
    """Validate the spec a sample resolves to, count it and compare it with the analytic budget."""
    candidate = Candidate(values)
    try:
        design = design_from_source(substitute(search.base, values), max_params)
        objective_design = design
        if search.settings.input is not None:
            at_input = substitute(search.base, {**values, ("input",): search.settings.input.model_dump()})
            objective_design = design_from_source(at_input, max_params)
    except SpecError as exc:
        candidate.problem = str(exc.problems[0]) + (f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1
                                                    else "")
        return candidate
    candidate.design, candidate.objective_design = design, objective_design
    candidate.arch_hash = architecture_hash(design)
    cost = design.cost
    for key, value in (("flops", cost.flops), ("params", cost.params)):
        limit = getattr(budget, key)
        if limit is not None and value > limit:
            candidate.over[key] = (value, limit)
    return candidate


def option_problems(source: Source, dims: list[Dimension], max_params: float) -> list[Problem]:
    """What ``archdsl validate`` checks of a space: each option of each dimension (a range at its two
    ends) with every other dimension at its first value, validated and shape-checked; the distinct
    problems found, in the order found."""
    problems: dict[str, Problem] = {}
    for dim in dims:
        for option in extremes(dim.form):
            values = {path: option if other is dim else extremes(other.form)[0] for other in dims for path in other.paths}
            try:
                design_from_source(substitute(source, values), max_params)
            except SpecError as exc:
                for p in exc.problems:
                    problems.setdefault(str(p), p)
    return list(problems.values())
