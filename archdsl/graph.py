"""The model as a networkx graph, with static shape inference, shape rules and analytic cost.

Nodes, in order: ``input``, ``stem``, per stage ``stages.i.downsample`` (optional),
``stages.i.layout`` (a free tokens/map conversion, when the stage's blocks need the other layout)
and ``stages.i.blocks.j`` (each preceded or followed by ``stages.i.pegs.j`` where the stage has a
positional encoding generator there), then ``norm`` (optional) and ``head``. A block's side branches (a
ResNet projection shortcut) are nodes ``stages.i.blocks.j.NAME`` fed by the block's input and
merging into the block (whose module holds them, in timm's parameter order). Every edge carries the
``TensorShape`` flowing along it; every node carries its spec path, component, input and output
shapes and its ``Cost``, its ``part`` (the row of the per-stage table: ``stem``, ``stage N`` counted
from 1 as papers do, ``head``) and its ``stage`` (the 0-based index into ``spec.stages``, None outside
the stages). Nothing here allocates a tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from . import cost as C
from .components import ShapeProblem, nested
from .cost import Cost, TensorShape
from .errors import Problem, SpecError
from .source import Source
from .spec import ModelSpec


@dataclass
class Design:
    """A validated spec with its inferred graph: everything known before building."""

    spec: ModelSpec
    graph: nx.DiGraph
    source: Source | None = None

    def nodes(self, kind: str | None = None) -> list[tuple[str, dict]]:
        return [(n, d) for n, d in self.graph.nodes(data=True) if kind is None or d["kind"] == kind]

    @property
    def cost(self) -> Cost:
        return C.total(d["cost"] for _, d in self.nodes())

    def part_cost(self, part: str) -> Cost:
        """Cost of ``stem``, ``stage i`` (1-based, as in papers) or ``head`` (final norm included)."""
        return C.total(d["cost"] for _, d in self.nodes() if d["part"] == part)

    def parts(self) -> list[str]:
        return list(dict.fromkeys(d["part"] for _, d in self.nodes() if d["part"]))

    def stage_of(self, part: str) -> int | None:
        """The 0-based stage index of a part (None for the stem and the head)."""
        return next(d["stage"] for _, d in self.nodes() if d["part"] == part)

    def output_shape(self, part: str) -> TensorShape:
        return [d["out_shape"] for _, d in self.nodes() if d["part"] == part][-1]


def build_graph(spec: ModelSpec, source: Source | None = None) -> Design:
    """Infer every shape and cost; raises SpecError with every broken shape rule."""
    g = nx.DiGraph()
    problems: list[tuple[tuple, ShapeProblem]] = []
    image = TensorShape("NCHW", spec.input.channels, spec.input.height, spec.input.width)
    last = "input"
    g.add_node(last, kind="input", path=("input",), part=None, stage=None, in_shape=image, out_shape=image, cost=C.ZERO)

    def add(name: str, kind: str, path: tuple, part: str, src: TensorShape, out: TensorShape, **attrs):
        nonlocal last
        stage = path[1] if path[0] == "stages" else None
        g.add_node(name, kind=kind, path=path, part=part, stage=stage, in_shape=src, out_shape=out, **attrs)
        g.add_edge(last, name, shape=src)
        last = name

    def report(path: tuple, found: list[ShapeProblem]) -> bool:
        problems.extend((path, p) for p in found)
        return bool(found)

    width = spec.stem.channels(spec.stages[0].width)
    if report(("stem",), spec.stem.check(image, width)):
        _raise(problems, source)
    shape = spec.stem.out_shape(image, width)
    if _too_small(shape, ("stem",), "the stem", problems):
        _raise(problems, source)
    add("stem", "stem", ("stem",), "stem", image, shape, component=spec.stem, width=width,
        cost=spec.stem.cost(image, width))

    rates = _drop_path_rates(spec)
    for i, stage in enumerate(spec.stages):
        path, part = ("stages", i), f"stage {i + 1}"
        ds = stage.downsample
        if ds is not None and ds.block_stride() > 1 and not stage.takes_stride:
            report(path + ("downsample",), [ShapeProblem((), f"{stage.block} blocks cannot carry a stride",
                                                         "use patch_merging or conv(...)")])
            ds = None
        if ds is not None and ds.block_stride() == 1:
            where = _where(i, image, shape)
            if report(path + ("downsample",), ds.check(shape, stage.width, where)):
                break
            out = ds.out_shape(shape, stage.width)
            add(f"stages.{i}.downsample", "downsample", path + ("downsample",), part, shape, out, component=ds,
                cost=ds.cost(shape, stage.width))
            shape = out
        if stage.layout != shape.layout:
            if shape.prefix:
                report(path + ("block",), [ShapeProblem((), f"{stage.block} blocks need a feature map, but the "
                                                        f"tokens include {shape.prefix} class token(s)",
                                                        "drop cls_token from the stem")])
                break
            out = shape.with_(layout=stage.layout)
            add(f"stages.{i}.layout", "layout", path, part, shape, out, cost=C.ZERO)
            shape = out
        outs = stage.block_shapes(shape)
        if _too_small(outs[0], path, f"stage {i + 1}", problems):
            break
        # the grid the blocks work on: their output's, or their input's where a block leaves the stage's
        # layout (a visual_transformer stage whose last block outputs tokens)
        where = _where(i, image, outs[0] if outs[0].layout == stage.layout else shape)
        found = stage.check_blocks(shape, where)
        if stage.peg is not None:
            found += nested(("peg",), stage.peg.check(shape, where, stage))
        if report(path, found):
            continue
        pegs = set(stage.peg.positions(stage.depth)) if stage.peg else set()

        def add_peg(j: int, place: str):
            if j in pegs and stage.peg.place == place:
                add(f"stages.{i}.pegs.{j}", "peg", path + ("peg",), part, shape, shape, component=stage.peg,
                    index=j, cost=stage.peg.cost(shape, stage, j))

        for j, out in enumerate(outs):
            add_peg(j, "before")
            before, name = last, f"stages.{i}.blocks.{j}"
            add(name, "block", path, part, shape, out, component=stage, index=j,
                drop_path=rates[i][j], label=stage.describe(j, shape), cost=stage.block_cost(j, shape))
            for branch, cost in stage.branches(j, shape).items():
                g.add_node(f"{name}.{branch}", kind="branch", path=path, part=part, stage=i, in_shape=shape,
                           out_shape=out, cost=cost, block=name)
                g.add_edge(before, f"{name}.{branch}", shape=shape)
                g.add_edge(f"{name}.{branch}", name, shape=out)
            shape = out
            add_peg(j, "after")
    if problems:
        _raise(problems, source)

    head = spec.head
    if head.norm is not None:
        if report(("head", "norm"), head.norm.check(shape)):
            _raise(problems, source)
        add("norm", "norm", ("head", "norm"), "head", shape, shape, component=head.norm, cost=head.norm.cost(shape))
    if report(("head",), head.check(shape)):
        _raise(problems, source)
    out = TensorShape("NLC", head.classes or head.pre_logits or shape.channels, 1, 1)
    add("head", "head", ("head",), "head", shape, out, component=head, cost=head.cost(shape))
    return Design(spec, g, source)


def _where(i: int, image: TensorShape, shape: TensorShape) -> str:
    stride = image.height // shape.height if shape.height else 0
    return f"stage {i + 1} (input {image.height}x{image.width}, stride {stride})"


def _too_small(shape: TensorShape, path: tuple, what: str, problems: list) -> bool:
    if shape.height < 1 or shape.width < 1:
        problems.append((path, ShapeProblem((), f"{what} reduces the input to an empty {shape.height}x{shape.width} grid",
                                            "use a larger input or fewer downsamplings")))
        return True
    return False


def _drop_path_rates(spec: ModelSpec) -> list[list[float]]:
    """timm's rule: rates rise linearly from 0 to ``drop_path`` over all blocks."""
    n = sum(s.depth for s in spec.stages)
    rates, k = [], 0
    for stage in spec.stages:
        row = []
        for _ in range(stage.depth):
            row.append(stage.drop_path if stage.drop_path is not None else
                       (spec.drop_path * k / (n - 1) if n > 1 else 0.0))
            k += 1
        rates.append(row)
    return rates


def _raise(problems: list[tuple[tuple, ShapeProblem]], source: Source | None):
    out = []
    for path, p in problems:
        full = path + p.rel_path
        out.append(source.problem(full, p.message, p.hint) if source else Problem(full, p.message, p.hint))
    raise SpecError(out)
