"""What every spec component shares: the strict pydantic base, registries that assemble the
discriminated unions of the schema, and the shape-problem record the graph collects.

A component class is its schema (pydantic fields), its shape rule (``check``), its cost formula
(``cost``) and its module factory (``build``) in one place. Registering it in its registry is all
it takes for the spec language, the validator, the graph and the compiler to know it.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

Size = Annotated[int, Field(ge=1, le=1_000_000)]
Channels = Annotated[int, Field(ge=1, le=65_536)]
Depth = Annotated[int, Field(ge=1, le=1_000)]
Ratio = Annotated[float, Field(gt=0, le=64)]
Probability = Annotated[float, Field(ge=0, lt=1)]
Eps = Annotated[float, Field(gt=0, le=1)]


@dataclass(frozen=True)
class ShapeProblem:
    """A broken shape rule, at a path relative to the component that found it."""

    rel_path: tuple
    message: str
    hint: str = ""


def plain_grid(shape, what: str, where: str = "the input", hint: str = "drop cls_token from the stem",
               needs: str = "needs a plain token grid") -> list[ShapeProblem]:
    """The class-token rule: ``what`` works on the token grid itself, so no class token may precede it."""
    if shape.prefix:
        return [ShapeProblem((), f"{what} {needs}, but {where} has {shape.prefix} class token(s)", hint)]
    return []


def nested(prefix: tuple, problems: list[ShapeProblem]) -> list[ShapeProblem]:
    """Problems of a sub-component, re-rooted at the field that holds it."""
    return [ShapeProblem(prefix + p.rel_path, p.message, p.hint) for p in problems]


class Component(BaseModel):
    """A spec component: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @classmethod
    def kind_name(cls, key: str = "kind") -> str:
        return typing.get_args(cls.model_fields[key].annotation)[0]


def as_list(value: Any) -> Any:
    """One value stands for a list of one (``mixer: window(...)`` = ``mixer: [window(...)]``)."""
    return value if isinstance(value, list) else [value]


def bare_name(value: Any) -> Any:
    """A bare name (``layernorm``) is the call with no options (``layernorm()``)."""
    return {"kind": value} if isinstance(value, str) else value


class Registry:
    """The known kinds of one family of components (mixers, stems, norms, ...). A kind is registered
    once: a second class under a taken name is refused, naming the class that holds it."""

    def __init__(self, family: str, key: str = "kind"):
        self.family, self.key = family, key
        self.classes: dict[str, type[Component]] = {}

    def register(self, cls: type[Component]) -> type[Component]:
        name = cls.kind_name(self.key)
        holder = self.classes.get(name)
        if holder is not None and holder is not cls:
            raise ValueError(f"{self.family} {name!r} is already registered by {holder.__module__}.{holder.__qualname__}; "
                             f"{cls.__module__}.{cls.__qualname__} needs another name")
        self.classes[name] = cls
        return cls

    def names(self) -> list[str]:
        return sorted(self.classes)

    def union(self):
        """The pydantic type of a field holding one of these components."""
        classes = tuple(self.classes.values())
        inner = Annotated[Union[classes], Field(discriminator=self.key)] if len(classes) > 1 else classes[0]
        return Annotated[inner, BeforeValidator(bare_name)]


MIXERS = Registry("mixer")
NORMS = Registry("norm")
STEMS = Registry("stem")
DOWNSAMPLES = Registry("downsample")
STAGES = Registry("block", key="block")  # a stage's kind is the kind of its blocks


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
