"""Reading a spec file: safe YAML with the position of every value, expressions, references.

The result is a plain tree (dicts, lists, scalars, search forms) plus a map from field paths to
``(line, col)``, so that every later problem (schema, shapes, sizes) can name ``file:line:col``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import Path as FieldPath, Problem, SpecError
from .expr import ExprError, Ref, check_magnitude, evaluate, parse

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's composer when present; same marks
_SCALARS = yaml.constructor.SafeConstructor()
MAX_NODES = 200_000  # YAML nodes visited, aliases included (guards against alias bombs)
MAX_DEPTH = 64  # nesting of YAML collections
MAX_REF_DEPTH = 64  # a reference to a reference to ...
MAX_BYTES = 2_000_000

TEXT_FIELDS = {("name",), ("description",)}  # taken as written, never parsed as expressions

_COLLECTION_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}
_PLAIN_TAGS = {
    "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null",
}


@dataclass
class Source:
    """A spec file read to a plain tree, with where each field stands."""

    file: str
    tree: Any
    positions: dict = field(default_factory=dict)  # field path -> (line, col) of the value
    key_positions: dict = field(default_factory=dict)  # field path -> (line, col) of its key

    def where(self, path: FieldPath, key: bool = False) -> tuple[int, int]:
        """The position of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        for cut in range(len(path), -1, -1):
            prefix = path[:cut]
            if key and prefix in self.key_positions:
                return self.key_positions[prefix]
            if prefix in self.positions:
                return self.positions[prefix]
        return (1, 1)

    def problem(self, path: FieldPath, message: str, hint: str = "", key: bool = False) -> Problem:
        line, col = self.where(path, key)
        return Problem(tuple(path), message, hint, self.file, line, col)


@dataclass
class _Pending:
    """An expression scalar whose value waits for reference resolution."""

    text: str
    ast: Any
    path: tuple
    line: int
    col: int
    quoted: bool = False  # a quoted value that does not evaluate is text


def read_text(text: str, file: str = "<spec>") -> Source:
    """Read spec text; raises SpecError naming every problem found."""
    source = Source(file, None)
    problems: list[Problem] = []
    if len(text) > MAX_BYTES:
        raise SpecError([Problem((), f"file is {len(text)} bytes, more than a spec can be", f"at most {MAX_BYTES}", file, 1, 1)])
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = _clamp(text, mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise SpecError([Problem((), f"YAML syntax error: {what}", "fix the YAML", file, line, col)]) from None
    except yaml.reader.ReaderError as exc:
        line, col = _position(text, exc.position)
        raise SpecError([Problem((), f"YAML error: {exc.reason} (character {exc.character!r})",
                                 "remove the character", file, line, col)]) from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise SpecError([Problem((), f"YAML error: {type(exc).__name__}", "fix the YAML", file, 1, 1)]) from None
    if node is None:
        raise SpecError([Problem((), "the file is empty", "a spec is a YAML mapping with name, input, stem, stages, head", file, 1, 1)])
    if not isinstance(node, yaml.MappingNode):
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        raise SpecError([Problem((), "this is not a spec: the top level is not a mapping",
                                 "a spec is a YAML mapping with name, input, stem, stages, head", file, line, col)])
    tree = _to_tree(node, (), source, problems, [0])
    if problems:
        raise SpecError(problems)
    source.tree = _resolve(tree, source, problems)
    if problems:
        raise SpecError(problems)
    return source


def read_file(path: str | Path) -> Source:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError([Problem((), f"cannot read the file: {exc.strerror or exc}", "give the path of a YAML spec",
                                 str(path))]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError([Problem((), f"the file is not UTF-8 text (byte {data[exc.start]:#04x})",
                                 "save the spec as UTF-8 YAML", str(path), line, col)]) from None
    return read_text(text, str(path))


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    offset = max(0, min(offset, len(text)))
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _clamp(text: str, line: int, col: int) -> tuple[int, int]:
    """A position on a line that exists (libyaml may name the line after the last one)."""
    lines = text.split("\n")
    if line <= len(lines):
        return line, col
    last = len(lines[-1]) if lines[-1] or len(lines) == 1 else len(lines[-2])
    return (len(lines) if lines[-1] or len(lines) == 1 else len(lines) - 1), last + 1


FLOW_HINT = ('inside a YAML [...] or {...} commas split values: quote the value, e.g. '
             '"window(size=7, heads=3)", or write the collection in block style')


def _to_tree(node, path: tuple, source: Source, problems: list, counter: list, flow: bool = False):
    counter[0] += 1
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    if counter[0] > MAX_NODES:
        raise SpecError([Problem(path, f"more than {MAX_NODES} YAML values (an alias bomb?)", "", source.file,
                                 line, col)])
    if len(path) > MAX_DEPTH:
        raise SpecError([Problem(path[:MAX_DEPTH], f"values nested more than {MAX_DEPTH} levels deep", "",
                                 source.file, line, col)])
    source.positions[path] = (line, col)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _COLLECTION_TAGS:
        problems.append(Problem(path, f"unsupported YAML value of type {node.tag}"[:200],
                                "use numbers, true/false, text, lists and mappings", source.file, line, col))
        return None
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            kline, kcol = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                got = repr(key_node.value[:40]) if isinstance(key_node, yaml.ScalarNode) else "a collection"
                problems.append(Problem(path, f"a key must be a name, got {got}", "", source.file, kline, kcol))
                continue
            key = key_node.value
            if key == "<<":
                problems.append(Problem(path, "YAML merge keys (<<) are not supported", "write the fields out", source.file, kline, kcol))
                continue
            if key in out:
                problems.append(Problem(path + (key,), f"key {key!r} given twice", "keep one", source.file, kline, kcol))
                continue
            source.key_positions[path + (key,)] = (kline, kcol)
            out[key] = _to_tree(value_node, path + (key,), source, problems, counter, flow or bool(node.flow_style))
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_tree(item, path + (i,), source, problems, counter, flow or bool(node.flow_style))
                for i, item in enumerate(node.value)]
    # a scalar
    if node.tag == "tag:yaml.org,2002:str":
        if path in TEXT_FIELDS:
            return node.value
        quoted = bool(node.style)  # '' or None: plain (libyaml and PyYAML differ); else quoted or a block
        try:
            return _Pending(node.value, parse(node.value), path, line, col + (node.style in ("'", '"')), quoted)
        except ExprError as exc:
            if quoted:  # a quoted value that is not an expression is text
                return node.value
            hint = FLOW_HINT if flow and "(" in node.value and ")" not in node.value else exc.hint
            problems.append(Problem(path, exc.message, hint, source.file, line, col + exc.col - 1))
            return None
    if node.tag in _PLAIN_TAGS:
        try:
            value = _SCALARS.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError, KeyError, IndexError, TypeError):
            problems.append(Problem(path, f"{node.value[:40]!r} is not a valid {node.tag.rsplit(':', 1)[-1]}",
                                    "write the value without a tag", source.file, line, col))
            return None
        try:
            return check_magnitude(value)
        except ExprError as exc:
            problems.append(Problem(path, exc.message, exc.hint, source.file, line, col))
            return None
    problems.append(Problem(path, f"unsupported YAML value of type {node.tag}"[:200],
                            "use numbers, true/false, text, lists and mappings", source.file, line, col))
    return None


def _resolve(tree, source: Source, problems: list):
    """Evaluate every expression; ``$a.b`` looks in ``vars`` first, then from the top level."""
    done: dict[int, Any] = {}
    failed: dict[int, ExprError] = {}
    active: set[int] = set()
    root = tree

    def value_at(ref: Ref):
        node = root.get("vars") if isinstance(root.get("vars"), dict) and ref.path[0] in root["vars"] else root
        for part in ref.path:
            node = force(node)
            ok = (isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node)) or (
                isinstance(part, str) and isinstance(node, dict) and part in node)
            if not ok:
                raise ExprError(f"reference {ref.text} does not name a field", ref.col,
                                "refer to a name under vars: or a field path such as $stages[0].width")
            node = node[part]
        return resolved(node)

    def resolved(node):
        """A referenced value with every expression inside it evaluated."""
        node = force(node)
        if isinstance(node, dict):
            return {k: resolved(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolved(v) for v in node]
        return node

    def force(node):
        if not isinstance(node, _Pending):
            return node
        key = id(node)
        if key in done:
            return done[key]
        if key in failed:
            raise failed[key]
        if key in active:
            raise ExprError(f"reference cycle through {node.text}", 1)
        if len(active) >= MAX_REF_DEPTH:
            raise ExprError(f"references nested more than {MAX_REF_DEPTH} deep", 1)
        active.add(key)
        try:
            def record(rel, col, node=node):
                source.positions.setdefault(node.path + rel, (node.line, node.col + col - 1))
            value = evaluate(node.ast, value_at, record)
        except ExprError as exc:
            if not node.quoted:
                failed[key] = exc
                raise
            value = node.text  # a quoted value that does not evaluate is text
        finally:
            active.discard(key)
        done[key] = value
        return value

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        try:
            return force(node)
        except ExprError as exc:
            problems.append(Problem(node.path, exc.message, exc.hint, source.file, node.line, node.col + exc.col - 1))
            return None

    out = walk(tree)
    out.pop("vars", None)
    return out
