"""Spec errors: every problem is reported as ``FILE:LINE:COL: field.path: what; what would be valid``.

:class:`ValidationMapper` is the one place where pydantic's errors become such problems, for model
specs (``spec.py``) and search sections (``search/settings.py``) alike."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from pydantic import ValidationError

    from .source import Source

Path = tuple  # a field path: ('stages', 2, 'mixer', 'size')


def format_path(path: Sequence) -> str:
    """``('stages', 2, 'mixer', 'size')`` -> ``stages[2].mixer.size``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<spec>"


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A hint naming the close matches of ``name`` among ``known``, then all of them."""
    known = sorted(set(known))
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    listing = ", ".join(known)
    if close:
        return f"did you mean {' or '.join(repr(c) for c in close)}? known: {listing}"
    return f"known: {listing}"


@dataclass(frozen=True)
class Problem:
    """One problem in a spec: where (a field path), what is wrong, what would be valid."""

    path: Path
    message: str
    hint: str = ""
    file: str = "<spec>"
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        text = f"{where}: {format_path(self.path)}: {self.message}"
        text = f"{text}; {self.hint}" if self.hint else text
        return " ".join(text.splitlines())  # one line per problem, whatever the keys and values hold


@dataclass
class SpecError(Exception):
    """All the problems found in one spec file. The only exception the loader lets escape."""

    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class ValidationMapper:
    """pydantic's errors for ``tree``, the mapping read at path ``root`` of ``source``, as located problems, one per field
    (a value that fits no member of a union gets one line, the members' hints joined), in file order.

    The mapper walks each error's ``loc`` through the raw tree, so the problem points at the key or value
    the user wrote; union tags and validator names that pydantic inserts into ``loc`` are skipped. Hooks,
    each with a plain default, let the schema it serves name its classes and hints.

    Paths are the file's (``root`` first). Hooks:

    - ``owner(path)``: the schema class of the mapping at ``path`` (for unknown and missing options);
    - ``options(owner)``: the option names listed for an unknown one;
    - ``unknown_hint(path, owner)``, ``missing_hint(path, owner)``;
    - ``value_problem(path, err)``: any other error (a wrong type, a value out of range);
    - ``tag_problem(path, kind, ctx)``: a discriminated union's tag missing or unknown.
    """

    def __init__(self, source: "Source", tree: Any, root: tuple = ()):
        self.source, self.tree, self.root = source, tree, tuple(root)

    # ---------------------------------------------------------------- hooks

    def owner(self, path: tuple) -> type | None:
        return None

    def options(self, owner: type | None) -> list[str]:
        return sorted(owner.model_fields) if owner is not None else []

    def unknown_hint(self, path: tuple, owner: type | None) -> str:
        return did_you_mean(str(path[-1]), self.options(owner))

    def missing_hint(self, path: tuple, owner: type | None) -> str:
        doc = (owner.__doc__ or "").strip().splitlines()[0] if owner is not None and owner.__doc__ else ""
        return f"add {path[-1]}: ... ({doc})" if doc else f"add {path[-1]}: ..."

    def tag_problem(self, path: tuple, kind: str, ctx: dict) -> Problem:
        return self.source.problem(path, f"{ctx.get('tag', '?')!r} is not valid", f"expected one of {ctx.get('expected_tags', '?')}")

    # ---------------------------------------------------------------- mapping

    def problems(self, exc: "ValidationError") -> list[Problem]:
        return merged_problems(self.problem(err) for err in exc.errors(include_url=False))

    def problem(self, err: dict) -> Problem:
        path = self.path(tuple(err["loc"]))
        kind, ctx = err["type"], err.get("ctx") or {}
        if kind == "extra_forbidden":
            owner = self.owner(path[:-1])
            return self.source.problem(path, f"unknown option {path[-1]!r}", self.unknown_hint(path, owner), key=True)
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            return self.tag_problem(path, kind, ctx)
        if kind == "missing":
            return self.source.problem(path, f"required option {path[-1]!r} is missing",
                                       self.missing_hint(path, self.owner(path[:-1])))
        return self.value_problem(path, err)

    def value_problem(self, path: tuple, err: dict) -> Problem:
        """A value of the wrong type or out of range (every error but unknown, missing and tag ones)."""
        value = err.get("input")
        if err["type"] == "literal_error":
            return self.source.problem(path, f"{value!r} is not valid", f"valid: {(err.get('ctx') or {}).get('expected', '')}")
        message = err["msg"][0].lower() + err["msg"][1:]
        message = message.replace("input should", "should").replace("value error, ", "")
        shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
        return self.source.problem(path, f"{shown[:80]} is not valid", message)

    def path(self, loc: tuple) -> tuple:
        """``loc`` as a path in the raw tree, from the source's root."""
        path: list = list(self.root)
        node = self.tree
        for part in loc:
            if isinstance(node, dict) and part in node:
                path.append(part)
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                path.append(part)
                node = node[part]
            elif isinstance(node, dict) and part in (node.get("kind"), node.get("block"), "metaformer"):
                continue  # a discriminated union's tag
            elif part == 0 and node is not None and not isinstance(node, list):
                continue  # a single value standing for a list of one (a stage's mixer, an objective)
            elif isinstance(part, str) and (part.startswith("function-") or node is not None and
                                             not isinstance(node, (dict, list))):
                continue  # a validator's name, or the name of a union member tried on a plain value
            else:
                path.append(part)
                node = None
        return tuple(path)

    def node(self, path: tuple) -> Any:
        """The raw value at ``path`` (a file path, ``root`` first), None where the tree has none."""
        tree = self.tree
        for part in path[len(self.root):]:
            if isinstance(tree, dict) and part in tree:
                tree = tree[part]
            elif isinstance(tree, list) and isinstance(part, int) and 0 <= part < len(tree):
                tree = tree[part]
            else:
                return None
        return tree


def merged_problems(problems: Iterable[Problem]) -> list[Problem]:
    """One problem per field (hints of the same field joined with "or"), in file order."""
    by_field: dict[tuple, Problem] = {}
    for p in problems:
        key = (p.path, p.line, p.col)
        first = by_field.get(key)
        if first is None:
            by_field[key] = p
        elif p.hint and p.hint not in first.hint:
            by_field[key] = replace(first, hint=f"{first.hint}; or {p.hint}" if first.hint else p.hint)
    return sorted(by_field.values(), key=lambda p: (p.line, p.col, str(p.path)))
