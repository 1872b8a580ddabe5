"""archdsl: vision backbones from short YAML specs.

``load_design(path)`` validates a spec and infers its graph (shapes, rules, analytic cost)
without building anything; ``build_model(path)`` compiles it to an ``nn.Module`` with timm's
interface; ``load_timm_weights(model, timm_model)`` copies a timm model's weights into it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .compiler import ArchModel
from .cost import Cost, TensorShape
from .errors import Problem, SpecError
from .export import export_model
from .graph import Design, build_graph
from .optimize import optimize
from .source import Source, read_file, read_text
from .spec import ModelSpec, validate_tree
from .timm_registry import register_shipped_specs, register_spec
from .timm_weights import load_timm_weights

DEFAULT_MAX_PARAMS = 2_000_000_000

__all__ = ["ArchModel", "Cost", "Design", "ModelSpec", "Problem", "Source", "SpecError", "TensorShape", "build_model",
           "design_from_source", "export_model", "load_design", "load_timm_weights", "optimize", "read_file", "read_text",
           "register_spec"]


def design_from_source(source: Source, max_params: float = DEFAULT_MAX_PARAMS) -> Design:
    """Validate a read spec and infer its graph; refuses a model over ``max_params`` parameters."""
    design = build_graph(validate_tree(source), source)
    params = design.cost.params
    if params > max_params:
        raise SpecError([source.problem((), f"the model would have {params:,} parameters, over the limit of "
                                        f"{int(max_params):,}", "shrink it, or raise the limit with --max-params")])
    return design


def load_design(spec: str | Path | Source, max_params: float = DEFAULT_MAX_PARAMS) -> Design:
    """A spec file (or read source) validated, with shapes, rules and costs, built into nothing."""
    return design_from_source(spec if isinstance(spec, Source) else read_file(spec), max_params)


def build_model(spec: str | Path | Source | Design, features_only: bool = False,
                out_indices: Sequence[int] | None = None, num_classes: int | None = None,
                max_params: float = DEFAULT_MAX_PARAMS) -> ArchModel:
    """Compile a spec to an ``nn.Module``; ``num_classes`` overrides the head's class count."""
    design = spec if isinstance(spec, Design) else load_design(spec, max_params)
    model = ArchModel(design, features_only=features_only, out_indices=out_indices)
    if num_classes is not None and not features_only and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model


register_shipped_specs()
