"""The pipeline, source -> spec -> graph -> model: a read spec validated (``spec.validate_tree``), its
graph inferred with shapes, rules and analytic cost (``graph.build_graph``), and compiled to an
``nn.Module`` with timm's interface (``compiler.ArchModel``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .compiler import ArchModel
from .errors import SpecError
from .graph import Design, build_graph
from .source import Source, read_file
from .spec import validate_tree

DEFAULT_MAX_PARAMS = 2_000_000_000


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
