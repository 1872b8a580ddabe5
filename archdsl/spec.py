"""The spec schema (pydantic v2) and its validation with positioned, collected errors."""
from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, field_validator

from .components import DOWNSAMPLES, MIXERS, NORMS, STAGES, STEMS, Channels, Component, Probability, Registry
from .components.blocks import StageSpecUnion
from .components.head import HeadSpec
from .components.options.graft import GraftSpec
from .components.options.position import PegSpec
from .components.stems import StemSpec
from .errors import SpecError, ValidationMapper, did_you_mean
from .expr import is_search_form
from .source import Source

ImageSize = Annotated[int, Field(ge=1, le=16_384)]


def shape_to_input(value: Any) -> Any:
    """``input: 3x224x224`` or ``224x224`` (3 channels) as well as the mapping form."""
    if isinstance(value, list) and len(value) in (2, 3) and all(isinstance(v, int) for v in value):
        return dict(zip(("channels", "height", "width"), value if len(value) == 3 else [3, *value]))
    return value


def _default_block(value: Any) -> Any:
    """A stage without ``block:`` is a metaformer stage."""
    if isinstance(value, dict) and "block" not in value:
        return {"block": "metaformer", **value}
    return value


class InputSpec(Component):
    """The input image: ``channels x height x width`` (any size the shape rules allow)."""

    channels: Channels = 3
    height: ImageSize = 224
    width: ImageSize = 224


class ModelSpec(Component):
    """A whole model: ``input``, ``stem``, ``stages``, ``head``; ``drop_path`` is the stochastic
    depth rate of the last block, rising linearly from 0 over all blocks (timm's rule) unless a
    stage sets its own."""

    name: str = Field(min_length=1, max_length=100)
    description: str = ""
    input: Annotated[InputSpec, BeforeValidator(shape_to_input)] = InputSpec()
    stem: StemSpec
    stages: list[Annotated[StageSpecUnion, BeforeValidator(_default_block)]] = Field(min_length=1, max_length=64)
    head: HeadSpec = HeadSpec()
    drop_path: Probability = 0.0

    @field_validator("name")
    @classmethod
    def _identifier(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name):
            raise ValueError("a model name is letters, digits, '_', '-' and '.', starting with a letter")
        return name


# --- mapping pydantic errors to spec positions ------------------------------------------------
FAMILY_OF_FIELD: dict[str, Registry] = {"mixer": MIXERS, "stem": STEMS, "norm": NORMS, "downsample": DOWNSAMPLES,
                                        "stages": STAGES}
CLASS_OF_FIELD = {"input": InputSpec, "head": HeadSpec, "graft": GraftSpec, "peg": PegSpec}


def _field_name(path: tuple) -> str | None:
    """The schema field a value at ``path`` belongs to (list indices skipped)."""
    for part in reversed(path):
        if isinstance(part, str):
            return part
    return None


class SpecMapper(ValidationMapper):
    """Pydantic errors of a model spec: owners and union tags from the component registries."""

    def owner(self, path: tuple) -> type[Component] | None:
        """The component class of the mapping at ``path`` in the raw tree."""
        if not path:
            return ModelSpec
        name = _field_name(path)
        node = self.node(path)
        if name in FAMILY_OF_FIELD and isinstance(node, dict):
            registry = FAMILY_OF_FIELD[name]
            return registry.classes.get(node.get(registry.key, "metaformer" if registry is STAGES else None))
        return CLASS_OF_FIELD.get(name)

    def options(self, owner):
        return [k for k in super().options(owner) if k not in ("kind", "block")]

    def tag_problem(self, path, kind, ctx):
        registry = FAMILY_OF_FIELD.get(_field_name(path))
        family = registry.family if registry else "kind"
        names = registry.names() if registry else []
        if kind == "union_tag_not_found":
            return self.source.problem(path, f"which {family}? the {registry.key if registry else 'kind'} is missing",
                                       f"known: {', '.join(names)}")
        tag = ctx.get("tag", "?")
        return self.source.problem(path, f"unknown {family} {tag!r}", did_you_mean(tag, names))


def search_forms(tree: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every ``choice``/``int``/``float`` in a tree, with its path."""
    if is_search_form(tree):
        return [(path, tree)]
    if isinstance(tree, dict):
        return [f for k, v in tree.items() for f in search_forms(v, path + (k,))]
    if isinstance(tree, list):
        return [f for i, v in enumerate(tree) for f in search_forms(v, path + (i,))]
    return []


def validate_tree(source: Source) -> ModelSpec:
    """Validate a tree with no search forms; raises SpecError with all problems."""
    forms = search_forms(source.tree)
    if forms:
        raise SpecError([source.problem(p, f"{f} is a search-space form; a model spec needs one value",
                                        "pick a value, or run it with archdsl search") for p, f in forms])
    try:
        return ModelSpec.model_validate(source.tree)
    except ValidationError as exc:
        raise SpecError(SpecMapper(source, source.tree).problems(exc)) from None
    except (RecursionError, OverflowError) as exc:
        raise SpecError([source.problem((), f"cannot validate: {type(exc).__name__}", "")]) from None
