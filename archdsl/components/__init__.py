"""What every spec component shares: the strict pydantic base, the contract of each family, registries
that assemble the discriminated unions of the schema, and the shape-problem record the graph collects.

A component class is its schema (pydantic fields), its shape rule (``check``), its cost formula
(``cost``) and its module factory (``build``) in one place. It subclasses its family's contract
(:class:`Mixer`, :class:`Stem`, :class:`Downsample`, :class:`Norm`, :class:`StageOption`; stage kinds
subclass ``blocks.base.StageSpec``), whose abstract methods say when the graph or the compiler calls them and
with what, and whose optional hooks default to nothing. Registering it in its family's registry,
which refuses a class that is not of the family or leaves a method abstract, is all it takes for
the spec language, the validator, the graph and the compiler to know it.

The families, one module or package each under this one: ``mixers/`` (token mixers, one file per
family), ``blocks/`` (stage kinds), ``stems``, ``downsample``, ``norms`` (norms and activations),
``head`` (the classifier head, its schema, rules, cost and module) and ``options/`` (stage options:
graft, peg). Tensor helpers they share are in ``archdsl.layers``.
"""
from __future__ import annotations

import abc
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

if TYPE_CHECKING:
    import torch.nn as nn

    from ..cost import Cost, TensorShape

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


SMALL_GRIDS = ("3x16x16", "3x16x24", "3x20x20")
"""The inputs most examples are checked at: behind a 4x4 patch, a square (4x4), a non-square (4x6)
and an odd (5x5) token grid."""


@dataclass(frozen=True)
class Example:
    """The smallest model that hosts a component: what the conformance suite
    (``tests/test_conformance.py``) validates, costs, builds, exports and compiles it in.

    ``model``: the spec's keys as a spec file writes them (``stem``, ``stages``, optionally ``head``;
    the suite adds ``name``, ``input`` and, where it is absent, ``head: {pool: avg, classes: 4}``).
    ``inputs``: the input sizes (``CxHxW``) it is checked at: a square, a non-square and an odd token
    grid, where its rules allow them. ``refused``: one change, a dotted path of the spec
    (``input``, ``stages.0.mixer``) and its new value, that breaks one of the component's own rules
    (a size where it has a size rule); ``refused_at``: the path the located message must name (a
    prefix of the problem's path). A component with no rule to break gives ``refused=None`` and says
    why in ``unbreakable``."""

    model: dict
    inputs: tuple[str, ...]
    refused: tuple[str, Any] | None = None
    refused_at: tuple = ()
    unbreakable: str = ""


class Component(BaseModel):
    """A spec component: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @classmethod
    def example(cls) -> Example | None:
        """Hook asked by the conformance suite for every registered kind: the smallest model that hosts
        it (:class:`Example`). The default, ``None``, makes the suite fail for the kind: a component
        is registered together with its example."""
        return None

    @classmethod
    def kind_name(cls, key: str = "kind") -> str:
        return typing.get_args(cls.model_fields[key].annotation)[0]


def as_list(value: Any) -> Any:
    """One value stands for a list of one (``mixer: window(...)`` = ``mixer: [window(...)]``)."""
    return value if isinstance(value, list) else [value]


def bare_name(value: Any) -> Any:
    """A bare name (``layernorm``) is the call with no options (``layernorm()``)."""
    return {"kind": value} if isinstance(value, str) else value


class Mixer(Component, abc.ABC):
    """A token mixer: tokens ``(B, N, C)`` on a static grid to tokens of the same shape (a metaformer
    block's first sub-layer). ``shape`` is the block's input (``NLC``, its grid and class tokens);
    ``index`` is the block's position in its stage (window attention shifts every other block)."""

    @abc.abstractmethod
    def check(self, shape: TensorShape, where: str) -> list[ShapeProblem]:
        """Called by the graph once per stage, before any cost: the rules the mixer sets on its input
        ``shape``; ``where`` names the stage for messages (``stage 2 (input 224x224, stride 8)``)."""

    @abc.abstractmethod
    def cost(self, shape: TensorShape, index: int) -> Cost:
        """Called by the graph for each block of a stage that passed ``check``: analytic params and
        FLOPs (a multiply-add is one FLOP) of block ``index``'s mixer."""

    @abc.abstractmethod
    def build(self, shape: TensorShape, index: int) -> nn.Module:
        """Called by the compiler for each block: the module, mapping ``(B, N, C)`` to ``(B, N, C)``."""

    @abc.abstractmethod
    def describe(self, shape: TensorShape, index: int) -> str:
        """Called for the build table: block ``index``'s mixer in a few words (``window(7x7, heads=3)``)."""

    def graft_window(self) -> int | None:
        """Hook asked by a graft (``components/options/graft.py``) on a block of this mixer: the L-MSA
        window its coarser scales use unless the graft names one; ``None`` (the default): no graft
        attaches."""
        return None


class Stem(Component, abc.ABC):
    """The image to the first features. ``image`` is the input (``NCHW``); ``width`` is the stem's
    output width (``channels``)."""

    @abc.abstractmethod
    def channels(self, first_stage_width: int) -> int:
        """Called first by the graph: the output width, given the first stage's."""

    @abc.abstractmethod
    def out_shape(self, image: TensorShape, width: int) -> TensorShape:
        """Called by the graph after ``check``: the output's layout, grid, channels and class tokens."""

    @abc.abstractmethod
    def check(self, image: TensorShape, width: int) -> list[ShapeProblem]:
        """Called by the graph before anything else: the rules the stem sets on the input image."""

    @abc.abstractmethod
    def cost(self, image: TensorShape, width: int) -> Cost:
        """Called by the graph: analytic params and FLOPs."""

    @abc.abstractmethod
    def build(self, image: TensorShape, width: int) -> nn.Module:
        """Called by the compiler: the module from the image batch to ``out_shape``'s features."""


class Downsample(Component, abc.ABC):
    """What comes before a stage's blocks and changes the grid and width: ``shape`` is the previous
    stage's output, ``width`` the stage's."""

    def block_stride(self) -> int:
        """Hook asked by the graph first: a stride greater than 1 means the stage's first block carries
        it (ResNet's strided blocks) and this component is no node of its own, so ``check``, ``cost``,
        ``build`` and ``out_shape`` are not called. The default, 1: it is a node."""
        return 1

    @abc.abstractmethod
    def check(self, shape: TensorShape, width: int, where: str) -> list[ShapeProblem]:
        """Called by the graph: the rules on its input; ``where`` names the stage."""

    @abc.abstractmethod
    def out_shape(self, shape: TensorShape, width: int) -> TensorShape:
        """Called by the graph after ``check``: its output shape."""

    @abc.abstractmethod
    def cost(self, shape: TensorShape, width: int) -> Cost:
        """Called by the graph: analytic params and FLOPs."""

    @abc.abstractmethod
    def build(self, shape: TensorShape, width: int) -> nn.Module:
        """Called by the compiler: the module from ``shape`` to ``out_shape``."""


class Norm(Component, abc.ABC):
    """A normalisation layer wherever a component or the head asks for one; ``shape`` is its input,
    which it keeps."""

    @abc.abstractmethod
    def check(self, shape: TensorShape) -> list[ShapeProblem]:
        """Called by whoever holds the norm, inside its own ``check``: the layouts it accepts."""

    @abc.abstractmethod
    def cost(self, shape: TensorShape) -> Cost:
        """Called inside the holder's ``cost``: analytic params and FLOPs."""

    @abc.abstractmethod
    def build(self, shape: TensorShape) -> nn.Module:
        """Called inside the holder's ``build``: the module."""


class StageOption(Component, abc.ABC):
    """An add-on a stage places on some of its blocks (``peg``, ``graft``): a field of the stage spec
    that may hold it. ``stage`` is that stage spec (its ``depth``, ``width`` and what its kind offers,
    such as a metaformer stage's ``mixer_at``); ``shape`` is the input of the block the option sits
    on (the stage's input after its downsample, for ``check``)."""

    @abc.abstractmethod
    def positions(self, depth: int) -> list[int]:
        """Asked by the graph and the stage: the indices of the blocks of a ``depth``-block stage the
        option is placed on (indices past the stage are ``check``'s to report)."""

    @abc.abstractmethod
    def check(self, shape: TensorShape, where: str, stage) -> list[ShapeProblem]:
        """Called by the graph (``peg``) or by the stage holding it (``graft``), once per stage: the
        rules the option sets on the stage; ``where`` names the stage for messages."""

    @abc.abstractmethod
    def cost(self, shape: TensorShape, stage, index: int) -> Cost:
        """Called by the graph for each block ``index`` the option sits on: analytic params and FLOPs."""

    @abc.abstractmethod
    def build(self, shape: TensorShape, stage, index: int) -> nn.Module:
        """Called by the compiler (``peg``, a node between blocks) or by the stage's ``build_block``
        (``graft``, a branch inside the block): the option's module at block ``index``."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Called for the build table: the option in a few words (``graft(2 scales)``)."""

    @staticmethod
    def blocks_past(positions: list[int], depth: int, valid: str) -> list[ShapeProblem]:
        """The rule every option shares: it names blocks of the stage only (``valid``: the other
        choices of its ``blocks`` field)."""
        late = [i for i in positions if i >= depth]
        if late:
            return [ShapeProblem(("blocks",), f"block {late[0]} does not exist in a stage of {depth} blocks",
                                 f"block indices 0 to {depth - 1}, {valid}")]
        return []


class Registry:
    """The known kinds of one family of components (mixers, stems, norms, ...), each a subclass of the
    family's ``base`` with no abstract method left. A kind is registered once: a second class under a
    taken name is refused, naming the class that holds it."""

    def __init__(self, family: str, key: str = "kind", base: type[Component] = Component):
        self.family, self.key, self.base = family, key, base
        self.classes: dict[str, type[Component]] = {}

    def register(self, cls: type[Component]) -> type[Component]:
        if not issubclass(cls, self.base):
            raise TypeError(f"{cls.__module__}.{cls.__qualname__} is registered as a {self.family} but is not a "
                            f"{self.base.__qualname__}; subclass it")
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        if missing:
            raise TypeError(f"{cls.__module__}.{cls.__qualname__} leaves {', '.join(missing)} of the {self.family} "
                            f"contract ({self.base.__qualname__}) unimplemented")
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
        """The pydantic type of a field holding one of these components, its members in kind order (so
        the schema and pydantic's list of expected kinds do not depend on the order modules import)."""
        classes = tuple(self.classes[name] for name in self.names())
        inner = Annotated[Union[classes], Field(discriminator=self.key)] if len(classes) > 1 else classes[0]
        return Annotated[inner, BeforeValidator(bare_name)]


MIXERS = Registry("mixer", base=Mixer)
NORMS = Registry("norm", base=Norm)
STEMS = Registry("stem", base=Stem)
DOWNSAMPLES = Registry("downsample", base=Downsample)
STAGE_OPTIONS = Registry("stage option", base=StageOption)
STAGES = Registry("block", key="block")  # a stage's kind is the kind of its blocks (base set by blocks.base)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
