"""The JSON Schema of the spec language, for editors (``archdsl schema``).

It is pydantic's schema of ``ModelSpec`` (every component family a discriminated union on ``kind``
or ``block``, unknown keys refused), widened where YAML meets the value grammar: any value may be
written as a string (an expression: ``window(size=7, heads=3)``, ``2 * $dim``, ``3x224x224``,
``4.5G``, a search form), which only ``archdsl validate`` can check; mappings are checked key by
key. ``vars`` (names for ``$references``) is any mapping. A spec points editors at it with a first
line ``# yaml-language-server: $schema=<path to archdsl.schema.json>`` (the file at the
repository's root, written by ``archdsl schema -o archdsl.schema.json``).
"""
from __future__ import annotations

import json
from typing import Any

from ..spec import ModelSpec

EXPRESSION = {"type": "string", "description": "an expression of the spec language (archdsl validate checks it)"}


def _widen(node: Any) -> Any:
    """Let every property value and list item also be an expression string, but for the
    ``kind``/``block`` constants that pick a union's member."""
    if isinstance(node, list):
        return [_widen(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _widen(v) for k, v in node.items()}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: v if "const" in v else {"anyOf": [v, EXPRESSION]} for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = {"anyOf": [out["items"], EXPRESSION]}
    return out


def spec_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a model spec file."""
    schema = _widen(ModelSpec.model_json_schema())
    schema["properties"]["vars"] = {"type": "object", "description": "names for $references, removed after reading"}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "archdsl model spec"
    return schema


def schema_text() -> str:
    return json.dumps(spec_schema(), indent=1, sort_keys=True) + "\n"
