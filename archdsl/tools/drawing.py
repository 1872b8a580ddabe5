"""Drawings of a design's graph: ``archdsl graph SPEC -o FILE`` (``.png``, ``.svg`` or ``.dot``).

The main path runs top to bottom, grouped by part (stem, each stage with its grid, width and
stride, head); side branches (GrafT grafts, ResNet projection shortcuts) are drawn beside the block
they merge into, fed by the block's input. Runs of identical consecutive blocks (same mixer, same
branches) are drawn once with their count, so a 20-block stage stays one box. Free tokens/map
layout conversions are left out. PNG and SVG are drawn with matplotlib; ``.dot`` is Graphviz text
of the same rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import cost as C
from ..graph import Design

FORMATS = (".png", ".svg", ".dot")


@dataclass
class Row:
    """One box on the main path (``count`` identical consecutive blocks) and its side branches."""

    name: str
    part: str
    title: str
    detail: str
    count: int = 1
    branches: list[tuple[str, str]] = field(default_factory=list)  # (name, label)


def _shape(shape) -> str:
    extra = f" + {shape.prefix} token" if shape.prefix else ""
    return f"{shape.height}x{shape.width}x{shape.channels}{extra}"


def _size(flops: int, params: int) -> str:
    return f"{params / 1e6:.2f}M params, {flops / 1e9:.3f} GFLOPs"


def rows(design: Design) -> list[Row]:
    """The main path's boxes in order, identical consecutive blocks collapsed."""
    g = design.graph
    branches: dict[str, list[tuple[str, str]]] = {}
    for name, d in design.nodes("branch"):
        kind = name.rsplit(".", 1)[1]
        branches.setdefault(d["block"], []).append((name, f"{kind}\n{_size(d['cost'].flops, d['cost'].params)}"))
    out: list[Row] = []
    for name, d in g.nodes(data=True):
        kind = d["kind"]
        if kind in ("branch", "layout"):
            continue
        if kind == "input":
            out.append(Row(name, "", "input", _shape(d["out_shape"])))
            continue
        cost = C.total([d["cost"], *(g.nodes[b]["cost"] for b, _ in branches.get(name, []))])
        if kind == "block":
            title = d["label"]
        elif kind == "head":
            spec = d["component"]
            title = f"head: {spec.pool} pool" + (f", {spec.pre_logits} pre-logits" if spec.pre_logits else "") + \
                f", {spec.classes} classes"
        else:
            component = d.get("component")
            title = f"{kind}: {getattr(component, 'kind', kind)}"
        row = Row(name, d["part"] or "", title, f"-> {_shape(d['out_shape'])} | {_size(cost.flops, cost.params)}",
                  branches=[(b, label) for b, label in branches.get(name, [])])
        previous = out[-1] if out else None
        if (kind == "block" and previous and previous.part == row.part and previous.title == row.title
                and [b[1] for b in previous.branches] == [b[1] for b in row.branches]
                and previous.detail.split(" | ")[0] == row.detail.split(" | ")[0] and ".blocks." in previous.name):
            previous.count += 1
            if previous.count == 2:
                previous.detail = previous.detail.replace(" | ", " | each: ", 1)
            continue
        out.append(row)
    return out


def part_titles(design: Design) -> dict[str, str]:
    """``stage 2`` -> ``stage 2: 28x28, 192 channels, stride 8`` (and the stem's and head's)."""
    image = design.graph.nodes["input"]["out_shape"]
    titles = {}
    for part in design.parts():
        shape = design.output_shape(part)
        if part == "head":
            titles[part] = f"head: {shape.channels} outputs"
        else:
            stride = image.height // shape.height if shape.height else 0
            titles[part] = f"{part}: {shape.height}x{shape.width}, {shape.channels} channels, stride {stride}"
    return titles


def to_dot(design: Design) -> str:
    """Graphviz text: one cluster per part, dashed side branches."""
    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = [f"digraph {quote(design.spec.name)} {{", "  rankdir=TB; node [shape=box, style=rounded, fontname=Helvetica];"]
    titles = part_titles(design)
    all_rows = rows(design)
    for part in [""] + design.parts():
        members = [r for r in all_rows if r.part == part]
        indent = "  "
        if part:
            lines.append(f"  subgraph {quote('cluster_' + part)} {{ label={quote(titles[part])};")
            indent = "    "
        for r in members:
            count = f" x{r.count}" if r.count > 1 else ""
            lines.append(f"{indent}{quote(r.name)} [label={quote(r.title + count + chr(10) + r.detail)}];")
            for b, label in r.branches:
                lines.append(f"{indent}{quote(b)} [label={quote(label)}, style=dashed];")
        if part:
            lines.append("  }")
    for before, after in zip(all_rows, all_rows[1:]):
        lines.append(f"  {quote(before.name)} -> {quote(after.name)};")
        for b, _ in after.branches:
            lines.append(f"  {quote(before.name)} -> {quote(b)} [style=dashed];")
            lines.append(f"  {quote(b)} -> {quote(after.name)} [style=dashed];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(design: Design, path: str | Path) -> Path:
    """Write the drawing; the suffix picks the format."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"cannot draw to {path.name}: the file must end in {', '.join(FORMATS)}")
    if path.suffix == ".dot":
        path.write_text(to_dot(design), encoding="utf-8")
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    all_rows = rows(design)
    titles = part_titles(design)
    box_w, box_h, gap, branch_x = 6.0, 0.9, 0.45, 6.6
    step = box_h + gap
    has_branches = any(r.branches for r in all_rows)
    width = branch_x + 3.6 if has_branches else box_w + 0.6
    part_rows: dict[str, list[int]] = {}
    for i, r in enumerate(all_rows):
        part_rows.setdefault(r.part, []).append(i)
    height = len(all_rows) * step + 0.5 * len(part_rows) + 1.2
    fig, ax = plt.subplots(figsize=(width * 1.15, height * 0.62))
    ax.set_xlim(-0.5, width)
    y_of, y = {}, 0.0
    current_part = None
    for i, r in enumerate(all_rows):
        if r.part != current_part:
            y -= 0.5 if r.part else 0.0
            current_part = r.part
        y_of[i] = y
        y -= step
    ax.set_ylim(y - 0.2, 1.0)
    colors = {"": "#eeeeee", "stem": "#dbe9f6", "head": "#e6e6e6"}
    for part, members in part_rows.items():
        if not part:
            continue
        top, bottom = y_of[members[0]] + 0.35, y_of[members[-1]] - box_h - 0.15
        color = colors[part] if part in colors else ("#e8f1e4" if design.stage_of(part) % 2 else "#f3efe0")
        ax.add_patch(FancyBboxPatch((-0.35, bottom), width - 0.3, top - bottom, boxstyle="round,pad=0.02",
                                    facecolor=color, edgecolor="#999999", linewidth=0.8, zorder=0))
        ax.text(-0.25, top - 0.05, titles[part], fontsize=8, color="#444444", va="top", zorder=3)
    for i, r in enumerate(all_rows):
        top = y_of[i] - 0.22
        ax.add_patch(FancyBboxPatch((0, top - box_h + 0.22), box_w, box_h - 0.22, boxstyle="round,pad=0.05",
                                    facecolor="white", edgecolor="#333333", linewidth=1.0, zorder=2))
        count = f"   x{r.count}" if r.count > 1 else ""
        ax.text(0.15, top - 0.08, r.title + count, fontsize=8.5, weight="bold", va="top", zorder=3)
        ax.text(0.15, top - 0.42, r.detail, fontsize=7, va="top", color="#333333", zorder=3)
        if i:
            ax.annotate("", xy=(box_w / 2, top + 0.05), xytext=(box_w / 2, y_of[i - 1] - box_h - 0.02),
                        arrowprops=dict(arrowstyle="->", color="#333333", lw=1), zorder=1)
        for k, (_, label) in enumerate(r.branches):
            bx, by = branch_x + 0.1 * k, top - 0.05 * k
            ax.add_patch(FancyBboxPatch((bx, by - box_h + 0.22), 3.2, box_h - 0.22, boxstyle="round,pad=0.05",
                                        facecolor="#fff4e0", edgecolor="#c07000", linestyle="--", zorder=2))
            ax.text(bx + 0.1, by - 0.08, label, fontsize=7, va="top", color="#7a4500", zorder=3)
            source_y = y_of[i - 1] - box_h + 0.1 if i else top
            ax.annotate("", xy=(bx, by - 0.25), xytext=(box_w + 0.05, source_y),
                        arrowprops=dict(arrowstyle="->", color="#c07000", ls="--", lw=1), zorder=1)
            ax.annotate("", xy=(box_w + 0.05, top - 0.45), xytext=(bx, by - 0.5),
                        arrowprops=dict(arrowstyle="->", color="#c07000", ls="--", lw=1), zorder=1)
    ax.set_title(f"{design.spec.name}: {_size(design.cost.flops, design.cost.params)}", fontsize=10)
    ax.axis("off")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
