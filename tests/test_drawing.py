"""Drawings of the model graph: every block and branch is in them, runs of equal blocks counted."""
import re

import pytest

import archdsl
from archdsl.tools.drawing import draw, rows, to_dot
from conftest import ROOT, SPECS


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_drawing_rows_cover_every_block_and_branch(path):
    design = archdsl.load_design(path)
    drawn = rows(design)
    assert sum(r.count for r in drawn if ".blocks." in r.name) == len(design.nodes("block"))
    assert sum(len(r.branches) * r.count for r in drawn) == len(design.nodes("branch"))
    dot = to_dot(design)
    assert dot.count("subgraph") == len(design.parts())
    assert len(re.findall(r'^  "[^"]*" -> "', dot, re.M)) == len(drawn) - 1 + 2 * sum(len(r.branches) for r in drawn)


def test_graft_branches_are_drawn(tmp_path):
    design = archdsl.load_design(ROOT / "specs" / "swin_t_graft.yaml")
    grafts = [n for n, _ in design.nodes("branch") if n.endswith(".graft")]
    assert len(grafts) == 9
    dot = to_dot(design)
    for name in grafts:
        assert f'"{name}" [label="graft' in dot and f'-> "{name}" [style=dashed]' in dot
    png = draw(design, tmp_path / "swin_t_graft.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = draw(design, tmp_path / "swin_t_graft.svg").read_text()
    assert svg.count(">graft<") + svg.count("graft") >= 9 and "stage 3: 14x14, 384 channels, stride 16" in svg


def test_identical_blocks_are_one_box():
    design = archdsl.load_design(ROOT / "specs" / "resnet50.yaml")
    counts = [(r.title, r.count) for r in rows(design) if ".blocks." in r.name]
    assert counts == [("bottleneck(1x3x1)", 1), ("bottleneck(1x3x1)", 2), ("bottleneck(1x3x1)", 1),
                      ("bottleneck(1x3x1)", 3), ("bottleneck(1x3x1)", 1), ("bottleneck(1x3x1)", 5),
                      ("bottleneck(1x3x1)", 1), ("bottleneck(1x3x1)", 2)]


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.png, \.svg, \.dot"):
        draw(archdsl.load_design(ROOT / "specs" / "deit_t.yaml"), tmp_path / "x.jpg")
