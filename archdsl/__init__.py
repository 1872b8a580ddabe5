"""archdsl: vision backbones from short YAML specs.

``load_design(path)`` validates a spec and infers its graph (shapes, rules, analytic cost)
without building anything; ``build_model(path)`` compiles it to an ``nn.Module`` with timm's
interface; ``load_timm_weights(model, timm_model)`` copies a timm model's weights into it (the
pipeline is ``archdsl/pipeline.py``). Importing the package registers the shipped specs with timm.
"""
from __future__ import annotations

from .compiler import ArchModel
from .cost import Cost, TensorShape
from .errors import Problem, SpecError
from .graph import Design
from .pipeline import DEFAULT_MAX_PARAMS, build_model, design_from_source, load_design
from .source import Source, read_file, read_text
from .spec import ModelSpec
from .tools.export import export_model
from .tools.optimize import optimize
from .tools.timm_registry import register_shipped_specs, register_spec
from .tools.timm_weights import load_timm_weights

__all__ = ["ArchModel", "Cost", "DEFAULT_MAX_PARAMS", "Design", "ModelSpec", "Problem", "Source", "SpecError",
           "TensorShape", "build_model", "design_from_source", "export_model", "load_design", "load_timm_weights",
           "optimize", "read_file", "read_text", "register_spec"]

register_shipped_specs()
