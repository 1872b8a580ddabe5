"""ScalableViT (issue #3, part 1): the scalable self-attention mixer ``ssa`` (shape rules, analytic
cost against the built and traced model, what it computes, its receptive field) and the
ScalableViT-S spec (its layout, per-part parameter arithmetic against the official model, training
step, the paper's figures)."""
import math

import pytest
import torch
import torch.nn.functional as F

import archdsl
from archdsl import SpecError
from archdsl.cost import TensorShape
from archdsl.components.mixers.scalable import ScalableAttentionSpec
from archdsl.components.mixers.window import WindowAttentionSpec
from archdsl.source import read_file
from archdsl.tools.trace import traced_cost
from conftest import ROOT

SPEC = ROOT / "specs" / "scalablevit_s.yaml"

# One block of each of ScalableViT-S's four SSA configurations, with conv downsamples between them.
SSA_STAGES = [(64, "ssa(heads=2, sr=8, c_ratio=1.25)"), (128, "ssa(heads=4, sr=4, c_ratio=1.25)"),
              (256, "ssa(heads=8, sr=2, c_ratio=1.25)"), (512, "ssa(heads=16, sr=1, c_ratio=1)")]


def probe(stages, size=(224, 224), stem="patch_embed(patch=4, norm=layernorm)", head="{classes: 10}") -> str:
    lines = ["name: probe", f"input: 3x{size[0]}x{size[1]}", f"stem: {stem}", "stages:"]
    for i, (width, mixer) in enumerate(stages):
        down = 'downsample: "conv(kernel=3, stride=2, norm=layernorm)", ' if i else ""
        lines.append(f'  - {{depth: 1, width: {width}, {down}mixer: "{mixer}"}}')
    return "\n".join(lines + [f"head: {head}", ""])


def design_of(text: str) -> archdsl.Design:
    return archdsl.design_from_source(archdsl.read_text(text))


def problems_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        design_of(text)
    return [str(p) for p in info.value.problems]


# --- shape rules -------------------------------------------------------------------------------

def test_reduction_not_dividing_the_grid_names_the_field_and_valid_values():
    text = probe([(64, "ssa(heads=2, sr=3)")])  # a 56x56 grid
    [problem] = problems_of(text)
    assert problem.startswith("<spec>:5:")  # the stage's line
    assert ("stages[0].mixer.sr: reduction 3 does not divide the 56x56 token grid of stage 1 (input 224x224, "
            "stride 4); valid sr: 1, 2, 4, 7, 8, 14, 28, 56") in problem
    # a non-square grid lists the common divisors; in a list of mixers the path names the entry
    text = probe([(64, "[window(size=4, heads=2), ssa(heads=2, sr=8)]")], size=(320, 176))  # 80x44
    [problem] = problems_of(text)
    assert "stages[0].mixer[1].sr: reduction 8 does not divide the 80x44 token grid" in problem
    assert problem.endswith("valid sr: 1, 2, 4")


def test_heads_must_divide_the_width_and_the_scaled_width():
    # 64 channels scale to int(64 x 1.25) = 80: 32 heads divide 64 but not 80
    [problem] = problems_of(probe([(64, "ssa(heads=32, sr=2, c_ratio=1.25)")]))
    assert ("stages[0].mixer.heads: 32 heads do not divide the width 64 or the scaled width 80 (= int(64 x 1.25)) "
            "of stage 1") in problem
    assert problem.endswith("valid heads: 1, 2, 4, 8, 16")
    [problem] = problems_of(probe([(64, "ssa(heads=3, sr=1)")]))
    assert "stages[0].mixer.heads: 3 heads do not divide the width 64 of stage 1" in problem
    design_of(probe([(64, "ssa(heads=32, sr=1, c_ratio=1.25)")]))  # sr=1 does not scale the width


def test_other_rules_and_schema():
    [problem] = problems_of(probe([(64, "ssa(heads=1, sr=2, c_ratio=0.01)")]))
    assert "stages[0].mixer.c_ratio: c_ratio 0.01 scales the width 64 of stage 1" in problem
    assert problem.endswith("to 0 channels; use c_ratio >= 0.015625")
    cls = "patch_embed(patch=16, cls_token=true)"
    [problem] = problems_of(probe([(64, "ssa(heads=2, sr=2)")], stem=cls, head="{pool: token}"))
    assert "stages[0].mixer: the spatial reduction needs a plain token grid, but stage 1" in problem
    assert problem.endswith("use sr=1 or drop cls_token")
    design_of(probe([(64, "ssa(heads=2)")], stem=cls, head="{pool: token}"))  # sr=1 attends over all tokens
    [problem] = problems_of(probe([(64, "ssa(heads=2, sr=2, c_raito=1)")]))
    assert "stages[0].mixer.c_raito: unknown option 'c_raito'; did you mean 'c_ratio'?" in problem
    [problem] = problems_of(probe([(64, "ssa(sr=2)")]))
    assert "stages[0].mixer.heads: required option 'heads' is missing" in problem
    [problem] = problems_of(probe([(64, "ssa(heads=2, sr=0)")]))
    assert "stages[0].mixer.sr: 0 is not valid" in problem


# --- cost --------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(224, 224), (320, 192)])
def test_analytic_cost_equals_built_and_traced(size):
    design = design_of(probe(SSA_STAGES, size))
    model = archdsl.build_model(design)
    report = traced_cost(model, (3, *size))
    assert design.cost.params == sum(p.numel() for p in model.parameters()) == report.params
    assert abs(design.cost.flops - report.flops) <= 0.01 * report.flops
    for i in range(len(SSA_STAGES)):
        traced = report.by_module[f"stages.{i}"]
        assert abs(design.part_cost(f"stage {i + 1}").flops - traced) <= 0.01 * traced
    assert "aten::scaled_dot_product_attention" not in report.uncounted


def test_cost_formula_by_hand():
    # 56x56 grid, C = 64, sr = 8 (7x7 = 49 reduced tokens), C' = 80, 2 heads
    shape = TensorShape("NLC", 64, 56, 56)
    cost = ScalableAttentionSpec(heads=2, sr=8, c_ratio=1.25).cost(shape, 1)
    n, m = 56 * 56, 49
    params = (64 * 80 + 80) + (64 * 64 + 64) + (64 * 80 + 80) + 2 * 80 + (80 * 80 + 80) + (80 * 64 + 64) + (64 * 64 + 64)
    flops = (n * 64 * 80 + m * 64 * 64 + m * 64 * 80 + 5 * m * 80 + m * 80 * 80 + m * 80 * 64
             + 2 * n * m * (40 + 32) + n * 64 * 64)
    assert (cost.params, cost.flops) == (params, flops) == (30544, 52064656)
    # sr = 1: q, kv and proj over all tokens, global attention
    shape = TensorShape("NLC", 512, 7, 7)
    cost = ScalableAttentionSpec(heads=16, sr=1, c_ratio=1).cost(shape, 1)
    assert cost.params == 4 * 512 * 512 + 4 * 512
    assert cost.flops == 49 * 4 * 512 * 512 + 16 * 49 * 49 * (32 + 32)


# --- what it computes --------------------------------------------------------------------------

def reference_ssa(m, x: torch.Tensor, grid: tuple, heads: int, sr: int, c_ratio: float) -> torch.Tensor:
    """SSA written out from its definition with the module's weights: the depth-wise
    kernel = stride = sr convolution as a weighted sum over each sr x sr patch, explicit softmax."""
    B, N, Cin = x.shape
    H, W = grid
    patches = x.view(B, H // sr, sr, W // sr, sr, Cin)
    w = m.spatial.weight[:, 0]  # (C, sr, sr)
    reduced = torch.einsum("bhiwjc,cij->bhwc", patches, w).reshape(B, -1, Cin) + m.spatial.bias
    reduced = reduced @ m.channel.weight[:, :, 0, 0].T + m.channel.bias
    reduced = F.gelu(F.layer_norm(reduced, reduced.shape[-1:], m.norm.weight, m.norm.bias))
    q, k, v = m.q(x), m.k(reduced), m.v(reduced)

    def split(t):
        return t.view(B, t.shape[1], heads, -1).transpose(1, 2)

    logits = split(q) @ split(k).transpose(-1, -2) * (Cin / heads * c_ratio) ** -0.5
    out = (logits.softmax(-1) @ split(v)).transpose(1, 2).reshape(B, N, Cin)
    return m.proj(out)


def test_ssa_computes_its_definition():
    shape = TensorShape("NLC", 64, 16, 12)
    spec = ScalableAttentionSpec(heads=4, sr=4, c_ratio=1.5)
    m = spec.build(shape, 1).eval()
    assert (m.q.out_features, m.k.out_features, m.v.out_features) == (96, 96, 64)
    assert m.spatial.groups == 64 and m.spatial.kernel_size == m.spatial.stride == (4, 4)
    x = torch.randn(2, 16 * 12, 64)
    with torch.no_grad():
        assert (m(x) - reference_ssa(m, x, (16, 12), 4, 4, 1.5)).abs().max() < 1e-5
    # sr = 1 with c_ratio = 1 is plain multi-head attention with separate q and kv projections
    m = ScalableAttentionSpec(heads=4, sr=1, c_ratio=1).build(shape, 1).eval()
    with torch.no_grad():
        q, (k, v) = m.q(x), m.kv(x).chunk(2, dim=-1)
        def split(t):
            return t.view(2, -1, 4, 16).transpose(1, 2)

        attn = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(16)).softmax(-1) @ split(v)
        assert (m(x) - m.proj(attn.transpose(1, 2).reshape(2, -1, 64))).abs().max() < 1e-5


def influence(mixer: torch.nn.Module, shape: TensorShape, token: tuple) -> torch.Tensor:
    """``(H, W)`` booleans: which input tokens output ``token`` depends on."""
    x = torch.randn(1, shape.grid, shape.channels, requires_grad=True)
    y = mixer(x)
    y[0, token[0] * shape.width + token[1]].sum().backward()
    return x.grad[0].abs().sum(-1).view(shape.height, shape.width) > 0


def test_ssa_sees_the_whole_map_window_attention_only_its_window():
    shape = TensorShape("NLC", 32, 28, 28)
    for token in [(0, 0), (6, 6), (27, 27), (13, 20)]:
        assert influence(ScalableAttentionSpec(heads=2, sr=4).build(shape, 1), shape, token).all()
        assert influence(ScalableAttentionSpec(heads=2, sr=1).build(shape, 1), shape, token).all()
    window = WindowAttentionSpec(size=7, heads=2, rpb=False).build(shape, 0)
    seen = influence(window, shape, (6, 6))
    assert seen[:7, :7].all() and seen.sum() == 49  # its own 7x7 window and nothing else
    # IWSA: the LIM's 3x3 depth-wise convolution on the values reaches one token past the window
    iwsa = WindowAttentionSpec(size=7, heads=2, rpb=False, lim=True).build(shape, 0)
    seen = influence(iwsa, shape, (6, 6))
    assert seen[:7, :7].all() and seen[5:8, 5:8].all() and seen.sum() == 49 + 5


# --- the ScalableViT-S spec --------------------------------------------------------------------

# Parameters of the official scalable_vit_small, part by part (written out in the report of
# issue #3): stem 7x7/4 conv with bias + LayerNorm = 9,472 + 128; per stage the downsample
# (3x3/2 conv + LN), the PEG (3x3 depth-wise conv + bias) and the blocks; final LN; head
# 512-4096 linear, LN(4096), GELU, 4096-1000 linear.
OFFICIAL = {"stem": 9600, "stage 1": 115152, "stage 2": 513824, "stage 3": 17658240, "stage 4": 7496192,
            "head": 1024 + 2101248 + 8192 + 4097000}


def test_spec_layout_matches_the_official_model():
    design = archdsl.load_design(SPEC)
    for i, depth in enumerate((2, 2, 20, 2)):
        blocks = [d for _, d in design.nodes("block") if d["part"] == f"stage {i + 1}"]
        assert len(blocks) == depth
        assert [b["label"].split("(")[0] for b in blocks] == ["iwsa", "ssa"] * (depth // 2)
        pegs = [n for n, d in design.nodes("peg") if d["part"] == f"stage {i + 1}"]
        assert pegs == [f"stages.{i}.pegs.0"]
    grids = [design.output_shape(f"stage {i}") for i in range(1, 5)]
    assert [(s.channels, s.height, s.width) for s in grids] == [(64, 56, 56), (128, 28, 28), (256, 14, 14),
                                                                 (512, 7, 7)]
    for part, params in OFFICIAL.items():
        assert design.part_cost(part).params == params, part
    assert sum(OFFICIAL.values()) == design.cost.params == 32_000_472


def test_spec_matches_the_paper_figures():
    """ScalableViT-S: 32.0M parameters (within 1%), 4.29 GFLOPs in fvcore's convention (within 3%)."""
    design = archdsl.load_design(SPEC)
    assert abs(design.cost.params / 32.0e6 - 1) <= 0.01
    assert abs(design.cost.flops / 4.29e9 - 1) <= 0.03


def test_spec_cost_equals_built_and_traced_and_trains():
    for size in [(224, 224), (224, 448)]:  # the 7x7 windows need multiples of 224 (320x192 is refused)
        source = read_file(SPEC)
        source.tree["input"] = [3, *size]
        design = archdsl.design_from_source(source)
        model = archdsl.build_model(design)
        report = traced_cost(model, (3, *size))
        assert design.cost.params == report.params == sum(p.numel() for p in model.parameters())
        assert abs(design.cost.flops - report.flops) <= 0.01 * report.flops
    # forward and backward at batch 2, 224x224, in training mode (stochastic depth on)
    model = archdsl.build_model(SPEC).train()
    logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([1, 2])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.forward_head(model.forward_features(torch.randn(1, 3, 224, 224)), pre_logits=True).shape == (1, 4096)


def test_spec_refuses_sizes_the_windows_do_not_fit():
    source = read_file(SPEC)
    source.tree["input"] = [3, 320, 192]
    with pytest.raises(SpecError) as info:
        archdsl.design_from_source(source)
    assert "stages[0].mixer[0].size: window 7 does not divide the 80x48 token grid" in str(info.value)
