"""The JSON Schema of the spec language: every spec validates against it and points to it."""
import os

import jsonschema
import pytest
import yaml

from archdsl.tools.schema import schema_text, spec_schema
from conftest import ROOT, SPECS

VALIDATOR = jsonschema.Draft202012Validator(spec_schema())


def test_the_committed_schema_is_current():
    committed = (ROOT / "archdsl.schema.json").read_text()
    assert committed == schema_text(), "regenerate it: archdsl schema -o archdsl.schema.json"
    jsonschema.Draft202012Validator.check_schema(spec_schema())


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_validates_and_carries_the_hint(path):
    text = path.read_text()
    assert [e.message for e in VALIDATOR.iter_errors(yaml.safe_load(text))] == []
    hint = text.splitlines()[0]
    assert hint.startswith("# yaml-language-server: $schema=")
    assert (path.parent / hint.split("=", 1)[1]).resolve() == ROOT / "archdsl.schema.json"
    assert os.path.relpath(ROOT / "archdsl.schema.json", path.parent) == hint.split("=", 1)[1]


@pytest.mark.parametrize("spec, where", [
    ({"name": "x", "stem": "resnet", "stages": [{"depth": 2, "width": 64, "block": "basic", "mixer": "identity"}]},
     ["stages"]),  # a basic stage has no mixer
    ({"name": "x", "stem": "resnet", "stages": [{"depth": 1, "width": 64, "block": "basic"}], "head": {"classes": {"many": 1}}}, ["head"]),
    ({"name": "x", "stem": {"kind": "patch_embedding"}, "stages": [{"depth": 1, "width": 64, "block": "basic"}]}, ["stem"]),
    ({"name": "x", "stem": "resnet", "stages": [{"depth": 1, "width": 64, "block": "basic"}], "heads": {}}, []),
    ({"stem": "resnet", "stages": [{"depth": 1, "width": 64, "block": "basic"}]}, []),  # no name
])
def test_wrong_structure_is_refused(spec, where):
    errors = list(VALIDATOR.iter_errors(spec))
    assert errors and list(errors[0].absolute_path) == where


def test_expressions_and_search_forms_are_strings_the_schema_accepts():
    spec = {"name": "x", "vars": {"dim": 64}, "input": "3x224x224", "stem": "patch_embed(patch=4)",
            "stages": [{"depth": "int(1, 4)", "width": "2 * $dim", "mixer": "choice(attention(heads=2), identity)"}],
            "head": {"classes": "1k"}}
    assert list(VALIDATOR.iter_errors(spec)) == []
