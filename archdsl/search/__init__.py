"""``archdsl search``: budgeted architecture search over a space written in the spec language.

``settings`` reads a search file (a model spec with ``choice``/``int``/``float`` forms plus a
``search:`` section), ``space`` samples it, ``candidate`` validates, costs and hashes a sample,
``objectives`` measures a built one, ``runner`` drives the Optuna study and ``report`` writes the
results. This package imports Optuna only in ``runner`` (``archdsl validate`` needs none of it).
"""
from .settings import SearchFile, SearchSettings, load_search

__all__ = ["SearchFile", "SearchSettings", "load_search"]
