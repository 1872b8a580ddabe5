"""The analytic cost model (item 9): params equal the built model's exactly, FLOPs within 1% of
the traced count, for every spec in specs/ at its own input size and at a second one."""
import pytest

import archdsl
from archdsl import SpecError
from archdsl.source import read_file
from archdsl.tools.trace import traced_cost
from conftest import ROOT, SPECS

SECOND_SIZES = [(256, 256), (448, 448), (224, 448), (320, 192), (160, 160)]


def designs_at_two_sizes(path):
    source = read_file(path)
    yield archdsl.design_from_source(source)
    own = (source.tree["input"][1:] if isinstance(source.tree["input"], list) else None)
    for h, w in SECOND_SIZES:
        if own and [h, w] == own[-2:]:
            continue
        other = read_file(path)
        other.tree["input"] = [3, h, w]
        try:
            yield archdsl.design_from_source(other)
            return
        except SpecError:
            continue
    raise AssertionError(f"no second input size in {SECOND_SIZES} is valid for {path.name}")


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_analytic_cost_matches_built_and_traced(path):
    for design in designs_at_two_sizes(path):
        model = archdsl.build_model(design)
        image = design.graph.nodes["input"]["out_shape"]
        report = traced_cost(model, (image.channels, image.height, image.width))
        assert design.cost.params == sum(p.numel() for p in model.parameters()) == report.params
        assert abs(design.cost.flops - report.flops) <= 0.01 * report.flops, (image, design.cost.flops, report.flops)
        for i in range(len(design.spec.stages)):  # and per stage
            traced = report.by_module[f"stages.{i}"]
            assert abs(design.part_cost(f"stage {i + 1}").flops - traced) <= 0.01 * traced


def test_trace_counts_attention_that_fvcore_skips():
    model = archdsl.build_model(ROOT / "specs" / "deit_t.yaml")
    report = traced_cost(model, (3, 224, 224))
    assert "aten::scaled_dot_product_attention" not in report.uncounted
    assert 1.23e9 <= report.flops <= 1.29e9
    # the two attention products of 12 blocks x 3 heads over 197 tokens of 64 channels
    from fvcore.nn import FlopCountAnalysis
    import torch
    bare = FlopCountAnalysis(model.eval(), torch.randn(1, 3, 224, 224))
    bare.unsupported_ops_warnings(False)
    assert report.flops - bare.total() == 12 * 3 * 197 * 197 * 64 * 2
    assert bare.unsupported_ops()["aten::scaled_dot_product_attention"] == 12


def test_window_attention_cost_is_linear_and_global_quadratic_in_tokens(write_spec):
    def flops(mixer: str, size: int) -> int:
        path = write_spec(f"""
            name: probe
            input: 3x{size}x{size}
            stem: patch_embed(patch=4)
            stages: [{{depth: 1, width: 64, mixer: "{mixer}"}}]
            head: {{classes: 10}}
            """)
        design = archdsl.load_design(path)
        return sum(d["cost"].flops for _, d in design.nodes("block"))

    assert flops("window(size=7, heads=2)", 224) / flops("window(size=7, heads=2)", 112) == pytest.approx(4, rel=1e-9)
    assert flops("attention(heads=2)", 224) / flops("attention(heads=2)", 112) > 5


def test_graph_carries_shapes_and_branches():
    design = archdsl.load_design(ROOT / "specs" / "resnet50.yaml")
    g = design.graph
    shortcut = "stages.1.blocks.0.shortcut"
    assert g.nodes[shortcut]["kind"] == "branch"
    assert set(g.predecessors(shortcut)) == set(g.predecessors("stages.1.blocks.0")) - {shortcut} == {"stages.0.blocks.2"}
    assert g.edges[shortcut, "stages.1.blocks.0"]["shape"] == archdsl.TensorShape("NCHW", 512, 28, 28)
    # a projection shortcut wherever width or stride changes, nowhere else
    assert sorted(n for n, d in design.nodes("branch")) == [f"stages.{i}.blocks.0.shortcut" for i in range(4)]
    assert g.nodes[shortcut]["cost"].params == 256 * 512 + 2 * 512
    swin = archdsl.load_design(ROOT / "specs" / "swin_t.yaml").graph
    assert swin.edges["stages.1.downsample", "stages.1.blocks.0"]["shape"] == archdsl.TensorShape("NLC", 192, 28, 28)
    assert swin.nodes["stages.3.blocks.1"]["label"] == "window(7x7, heads=24)"  # 7x7 grid: no shift
