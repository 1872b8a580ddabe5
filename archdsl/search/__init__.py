"""``archdsl search``: budgeted architecture search over a space written in the spec language.

The pipeline, one job per module: ``settings`` reads a search file (a model spec with
``choice``/``int``/``float`` forms plus a ``search:`` section), ``space`` samples it, ``candidate``
validates, costs and hashes a sample, ``proposals`` draws candidates within the budget, ``storage``
holds the shared Optuna study (worker index, recovery), ``evaluation`` measures a trial (repeats,
custom objectives) with ``training`` (device, precision), ``proxies`` (training-free scores) and
``data`` (``shapes`` from ``shapes``, digits, image folders), ``pruners`` stops poor trials,
``noise`` confirms the best and tests ties, ``runner`` drives the loop and ``report`` writes the
results. ``archdsl validate`` imports only ``settings`` and ``space`` (no Optuna, no torch training).

``archdsl.search.run(path, objective=fn, ...)`` runs a search from Python (``runner.run``).
"""
from .settings import SearchFile, SearchSettings, load_search

__all__ = ["SearchFile", "SearchSettings", "load_search", "run"]


def __getattr__(name: str):
    if name == "run":  # imported on use: Optuna and torch only for a search
        from .runner import run
        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
