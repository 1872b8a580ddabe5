"""A search space written in the spec language: its forms, their sampling, and the spec they resolve to.

Every ``choice``/``int``/``float`` left in a read spec is a dimension, named by its field path
(``stages[1].mixer``, ``stages[0].depth``). A form reached through a ``$reference`` stands at every
place that refers to it and is sampled once for all of them. A form inside a choice option
(``choice(window(size=choice(4, 8)), attention)``) is sampled only when that option is chosen, under
the name ``OUTER:INDEX.PATH`` (``stages[1].mixer:0.size``), so each option keeps its own dimensions.

Nothing here imports Optuna: ``suggest`` takes any object with ``suggest_categorical``,
``suggest_int`` and ``suggest_float`` (an Optuna trial), and ``archdsl validate`` uses the rest.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from ..errors import format_path
from ..expr import Choice, FloatRange, IntRange, is_search_form, thaw
from ..source import Source
from ..spec import search_forms

PRIMITIVE = (type(None), bool, int, float, str)
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Dimension:
    """One search form and every path it stands at in the tree."""

    name: str
    paths: tuple
    form: Any  # Choice | IntRange | FloatRange


def dimensions(tree: Any, prefix: str = "") -> list[Dimension]:
    """The forms of a tree in tree order, one dimension per form object (a form reached through a
    reference appears at several paths but is one dimension)."""
    found: dict[int, tuple[str, list, Any]] = {}
    for path, form in search_forms(tree):
        text = format_path(path)
        name = prefix + ("." if prefix and path and not text.startswith("[") else "") + (text if path else "")
        entry = found.setdefault(id(form), (name, [], form))
        entry[1].append(path)
    return [Dimension(name, tuple(paths), form) for name, paths, form in found.values()]


def spec_text(value: Any) -> str:
    """A value written in the spec language: ``window(size=7, heads=3)``, ``[1, 2]``, ``true``."""
    if isinstance(value, dict):
        options = ", ".join(f"{k}={spec_text(v)}" for k, v in value.items() if k != "kind")
        return f"{value['kind']}({options})" if "kind" in value else "{" + options + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(spec_text(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value if IDENTIFIER.fullmatch(value) else "'" + value + "'"
    if is_search_form(value):
        return str(value)
    return repr(value)


def suggest(trial, dims: list[Dimension]) -> dict[tuple, Any]:
    """Sample every dimension with ``trial.suggest_*`` (define-by-run); the value at every path."""
    values: dict[tuple, Any] = {}
    for dim in dims:
        value = _suggest_one(trial, dim)
        for path in dim.paths:
            values[path] = value
    return values


def _suggest_one(trial, dim: Dimension) -> Any:
    form = dim.form
    if isinstance(form, IntRange):
        return trial.suggest_int(dim.name, form.lo, form.hi, step=form.step, log=form.log)
    if isinstance(form, FloatRange):
        return trial.suggest_float(dim.name, form.lo, form.hi, log=form.log, step=form.step)
    labels = _labels(form)
    index = labels.index(trial.suggest_categorical(dim.name, list(dict.fromkeys(labels))))
    option = thaw(form.options[index])
    for sub in dimensions(option, prefix=f"{dim.name}:{index}"):
        value = _suggest_one(trial, sub)
        for path in sub.paths:
            option = _put(option, path, value)
    return option


def _labels(form: Choice) -> list:
    """The categorical value Optuna stores for each option: the option itself when it is a number,
    boolean, text or null, else its spec-language text."""
    return [o if isinstance(o, PRIMITIVE) else spec_text(thaw(o)) for o in form.options]


def _put(tree: Any, path: tuple, value: Any) -> Any:
    """``tree`` with the value at ``path`` replaced (the root itself when ``path`` is empty)."""
    if not path:
        return value
    node = tree
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return tree


def substitute(source: Source, values: dict[tuple, Any]) -> Source:
    """A copy of ``source`` with a value at each path: a model spec with positions kept, ready to
    validate (so problems of a candidate still name the file, line and column of its form)."""
    out = copy.copy(source)
    tree = copy.deepcopy(source.tree)
    for path, value in values.items():
        tree = _put(tree, path, copy.deepcopy(value))
    out.tree = tree
    return out


def extremes(form) -> list:
    """The values ``archdsl validate`` checks a form at: every option (a form inside an option at
    its first value), or a range's two ends."""
    if isinstance(form, Choice):
        return [first_value(thaw(o)) for o in form.options]
    if isinstance(form, FloatRange):
        return [form.lo, form.hi]
    return [form.lo, form.hi - (form.hi - form.lo) % form.step]


def first_value(tree: Any) -> Any:
    """``tree`` with every form in it replaced by its first value."""
    for path, form in search_forms(tree):
        tree = _put(tree, path, extremes(form)[0])
    return tree
