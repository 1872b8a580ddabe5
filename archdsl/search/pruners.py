"""Multi-fidelity: Optuna's pruners with training epochs as the resource, and what they saved.

``search.pruner`` (or ``--pruner``) picks one; every epoch's validation accuracy is reported to it
and a trial it stops is PRUNED at that epoch (its last accuracy kept, shown, and taught to the
sampler). Pruning needs one objective to compare trials on, so a multi-objective study, or one
whose objectives train nothing, runs unpruned (``pruning_note`` says why).

- ``median``: ``MedianPruner(n_startup_trials=5, n_warmup_steps=1)``: stop a trial whose accuracy
  is below the median of earlier trials at the same epoch (never before 5 trials are done);
- ``successive_halving``: asynchronous successive halving (Li et al. 2020, "A System for Massively
  Parallel Hyperparameter Tuning", MLSys), ``min_resource=1``, ``reduction_factor=3``: at epochs 1,
  3, 9, ... only the top third of the trials that reached that rung go on;
- ``hyperband``: Hyperband (Li et al. 2018, JMLR) over successive-halving brackets with
  ``min_resource=1``, ``max_resource`` = the training epochs, ``reduction_factor=3``.
"""
from __future__ import annotations

import optuna

REDUCTION = 3


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner ``name`` stands for, with epochs as its resource."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=REDUCTION)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; pruners: hyperband, successive_halving, median, none")


def pruning_note(pruner: str, objectives: list[str], custom: bool) -> str:
    """Why the named pruner cannot act on this study ('' when it can)."""
    if pruner == "none":
        return ""
    if len(objectives) > 1:
        return f"pruner {pruner} off: pruning needs a single objective ({len(objectives)} here)"
    if not custom and objectives[0] != "train":
        return f"pruner {pruner} off: the {objectives[0]} objective trains nothing"
    return ""

