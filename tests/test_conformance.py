"""The conformance suite (issue 13, item 2): every kind of every registry, in the smallest model that
hosts it (the kind's ``example()``, ``archdsl.components.Example``).

At each of the example's input sizes (a square, a non-square and an odd token grid where the kind's
rules allow): the spec validates and holds the kind; analytic params equal the built model's;
analytic FLOPs are within 1% of the traced count (``archdsl.tools.trace``, fvcore); a training forward and
backward are finite. At its first size: ``torch.export`` and ONNX (onnxruntime) and
``archdsl.optimize`` (``torch.compile``) agree with eager within 1e-4. The example's rule-breaking
change is refused with a located message (``file:line:col: field: ...``) at the kind's place. A
kind registered without an example fails the suite.
"""
from __future__ import annotations

from typing import Literal

import pytest
import torch
from pydantic import BaseModel

import archdsl
from archdsl import components
from archdsl.components import (
    DOWNSAMPLES,
    MIXERS,
    NORMS,
    STAGE_OPTIONS,
    STAGES,
    STEMS,
    Example,
    Mixer,
    Registry,
)
from archdsl.cost import ZERO
from archdsl.errors import SpecError
from archdsl.tools.testing import (
    eager_and_optimized,
    exported_difference_after,
    perturb_norms,
    write_example,
)
from archdsl.tools.trace import traced_cost

REGISTRIES = (MIXERS, NORMS, STEMS, DOWNSAMPLES, STAGES, STAGE_OPTIONS)
TOLERANCE = 1e-4


def kinds(registries=REGISTRIES) -> list[tuple[Registry, str]]:
    """Every (registry, kind name) the suite runs on."""
    return [(registry, name) for registry in registries for name in registry.names()]


def example_of(registry: Registry, name: str) -> Example:
    """The kind's example; a kind registered without one fails here."""
    cls = registry.classes[name]
    example = cls.example()
    if not isinstance(example, Example):
        raise AssertionError(f"{registry.family} {name!r} ({cls.__module__}.{cls.__qualname__}) is registered "
                             f"without an example: give it an example() returning archdsl.components.Example")
    return example


def spec_name(registry: Registry, name: str) -> str:
    return f"{registry.family.replace(' ', '_')}_{name}"


KINDS = [pytest.param(registry, name, id=spec_name(registry, name)) for registry, name in kinds()]


def holds(value, cls: type) -> bool:
    """Whether the validated spec ``value`` holds an instance of ``cls`` anywhere in it."""
    if isinstance(value, cls):
        return True
    if isinstance(value, BaseModel):
        return any(holds(getattr(value, field), cls) for field in type(value).model_fields)
    if isinstance(value, (list, tuple)):
        return any(holds(item, cls) for item in value)
    return False


def test_the_suite_runs_over_every_registry():
    """A registry the suite does not name (a new family) would leave its kinds untested."""
    every = {id(r) for r in vars(components).values() if isinstance(r, Registry)}
    assert every == {id(r) for r in REGISTRIES}
    assert {(r.family, n) for r, n in kinds()} == {(r.family, n) for r in REGISTRIES for n in r.names()}
    assert len(KINDS) >= 23


@pytest.mark.parametrize("registry, name", KINDS)
def test_kind_validates_costs_exactly_and_trains(registry, name, tmp_path):
    example = example_of(registry, name)
    assert example.inputs, "an example gives at least one input size"
    for size in example.inputs:
        path = write_example(tmp_path, spec_name(registry, name), example, size)
        design = archdsl.load_design(path)
        assert holds(design.spec, registry.classes[name]), f"the example at {size} does not hold {name}"
        model = archdsl.build_model(design)
        image = design.graph.nodes["input"]["out_shape"]
        report = traced_cost(model, (image.channels, image.height, image.width))
        assert design.cost.params == sum(p.numel() for p in model.parameters()) == report.params, size
        assert abs(design.cost.flops - report.flops) <= 0.01 * report.flops, (size, design.cost.flops, report.flops)
        perturb_norms(model).train()
        out = model(torch.randn(2, image.channels, image.height, image.width))
        assert out.shape == (2, design.spec.head.classes) and torch.isfinite(out).all(), size
        out.square().mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), size


@pytest.mark.parametrize("runtime", ["pt2", "onnx", "optimize"])
@pytest.mark.parametrize("registry, name", KINDS)
def test_kind_exports_and_compiles(registry, name, runtime, tmp_path):
    example = example_of(registry, name)
    model = archdsl.build_model(write_example(tmp_path, spec_name(registry, name), example, example.inputs[0]))
    if runtime == "optimize":
        expected, out, _ = eager_and_optimized(model)
        diff = (out - expected).abs().max().item()
    else:
        diff, _ = exported_difference_after(model, tmp_path, runtime)
    assert diff <= TOLERANCE, f"{runtime}: max abs difference {diff:.3g} over {TOLERANCE}"


@pytest.mark.parametrize("registry, name", KINDS)
def test_kind_refuses_a_broken_rule_with_a_located_message(registry, name, tmp_path):
    example = example_of(registry, name)
    if example.refused is None:
        assert example.unbreakable, f"{name}: an example without a rule to break says why (unbreakable)"
        pytest.skip(f"{name} has no rule to break: {example.unbreakable}")
    path = write_example(tmp_path, spec_name(registry, name), example, example.inputs[0], example.refused)
    with pytest.raises(SpecError) as caught:
        archdsl.load_design(path)
    at = tuple(example.refused_at)
    found = [p for p in caught.value.problems if tuple(p.path[:len(at)]) == at]
    assert found, f"refused, but not at {at}: {caught.value}"
    problem = found[0]
    assert problem.file == str(path) and problem.line and problem.col, problem
    assert f"{path}:{problem.line}:{problem.col}: " in str(caught.value)


class NoExampleMixer(Mixer):
    """A mixer that does everything but give an example."""

    kind: Literal["no_example"] = "no_example"

    def check(self, shape, where):
        return []

    def cost(self, shape, index):
        return ZERO

    def build(self, shape, index):
        return torch.nn.Identity()

    def describe(self, shape, index):
        return "no_example"


def test_a_kind_registered_without_an_example_fails_the_suite():
    registry = Registry("mixer", base=Mixer)
    registry.register(NoExampleMixer)
    assert kinds((registry,)) == [(registry, "no_example")]
    with pytest.raises(AssertionError, match=r"mixer 'no_example' \(.*NoExampleMixer\) is registered without an "
                                             r"example"):
        example_of(registry, "no_example")
