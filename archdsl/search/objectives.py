"""What a search optimises: the metrics, and objectives written in Python.

Built-in objectives (``search.objective``):

- ``train``: validation accuracy after a short training run (``training.train_accuracy``), reported
  after every epoch so the pruner can stop a poor run early;
- ``proxy``: a training-free score of the untrained network on a batch of real images
  (``data.proxy``: ``naswot``, ``synflow``, ``grad_norm`` or ``zico``; ``proxies.py``);
- ``latency``: median wall time of a forward pass at batch 1 on the search's device, in ms;
- ``flops``, ``params``: the analytic cost (what the budget is checked against).

A **custom objective** is a Python function ``fn(model, context) -> float | tuple`` given to
``archdsl.search.run(path, objective=fn)`` or named on the command line (``--objective-fn
module:function``); code is imported only when the user names it there, never from a search file.
``context`` (``TrialContext``) carries the device, precision, seed, the data (opened on first use),
the Optuna trial and ``report(value, step)`` for the pruner.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Metric:
    """A column of the results: its name and whether larger is better."""

    name: str
    direction: str  # "maximize" or "minimize"


BUILT_IN = {
    "train": Metric("accuracy", "maximize"),
    "latency": Metric("latency_ms", "minimize"),
    "flops": Metric("flops", "minimize"),
    "params": Metric("params", "minimize"),
}
ANALYTIC = {"flops", "params"}  # counted from the spec, nothing built
SEEDED = {"train", "proxy"}  # depend on the seed (weights, data order): repeated and confirmed with more seeds


def search_metrics(settings, custom: "CustomObjective | None" = None) -> list[Metric]:
    """The metrics a search reports, in its objectives' order: a custom objective's, else the
    built-in ones (``proxy`` under the name of ``data.proxy``)."""
    if custom is not None:
        return custom.metrics
    return [Metric(settings.data.proxy, "maximize") if o == "proxy" else BUILT_IN[o] for o in settings.objective]


@dataclass(frozen=True)
class CustomObjective:
    """A user's objective function with the names and directions of the values it returns."""

    fn: Callable
    names: tuple[str, ...] = ("objective",)
    directions: tuple[str, ...] = ("maximize",)

    def __post_init__(self):
        if len(self.names) != len(self.directions):
            raise ValueError(f"{len(self.names)} objective names but {len(self.directions)} directions")
        bad = [d for d in self.directions if d not in ("maximize", "minimize")]
        if bad:
            raise ValueError(f"direction {bad[0]!r} is not maximize or minimize")

    @property
    def metrics(self) -> list[Metric]:
        return [Metric(n, d) for n, d in zip(self.names, self.directions)]

    @property
    def label(self) -> str:
        """What the study fingerprint records of it: the function's module and name."""
        return f"{getattr(self.fn, '__module__', '?')}:{getattr(self.fn, '__qualname__', repr(self.fn))}"

    def values(self, result: Any) -> list[float]:
        """The function's return value as floats, one per name (a float or a tuple/list)."""
        values = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(values) != len(self.names):
            raise TypeError(f"the objective function returned {len(values)} value(s); {len(self.names)} expected "
                            f"({', '.join(self.names)})")
        try:
            return [float(v) for v in values]
        except (TypeError, ValueError):
            raise TypeError(f"the objective function returned {result!r}; a float or a tuple of floats expected") \
                from None


def load_function(reference: str) -> Callable:
    """``module:function`` (``package.module:object.attr`` works) imported now, at the user's request."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{reference!r} is not module:function")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for {reference}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{module_name} has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{reference} is not callable")
    return target


@dataclass
class TrialContext:
    """What a custom objective gets beside the model (already on ``device``)."""

    trial: Any  # the optuna.Trial (parameters, user attributes)
    design: Any  # the candidate's archdsl Design (spec, shapes, cost)
    device: torch.device
    precision: str
    seed: int
    settings: Any  # the SearchSettings
    report: Callable[[float, int], None]  # intermediate value for the pruner (raises optuna.TrialPruned)
    open_data: Callable[[], Any] = field(repr=False, default=None)
    _data: Any = field(default=None, repr=False)

    @property
    def data(self):
        """The search's ``ImageData`` at the objective's input (opened on first use)."""
        if self._data is None:
            self._data = self.open_data()
        return self._data

    def autocast(self):
        """``torch.autocast`` for the search's precision on its device."""
        from .training import autocast
        return autocast(self.device, self.precision)
