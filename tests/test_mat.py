"""MAT attention and Bilinear PE (thesis chapter 4), the MAT-1..5 specs and the MAT-2 ablations."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import archdsl
from archdsl import SpecError
from archdsl.components import MIXERS
from archdsl.cost import TensorShape
from archdsl.components.downsample import BilinearPESpec
from archdsl.components.mixers.attention import mhsa_cost
from archdsl.components.mixers.window import WindowAttentionSpec
from archdsl.tools.trace import traced_cost
from conftest import ROOT, Tokens, grid

# table 4.3: params, GFLOPs at 224x224; and what the specs measure (analytic = traced)
TABLE = {1: (6.714e6, 0.389e9), 2: (10.767e6, 0.666e9), 3: (17.008e6, 1.042e9), 4: (29.057e6, 1.933e9),
         5: (50.108e6, 3.156e9)}
MEASURED = {1: (6_653_510, 375_297_760), 2: (10_663_806, 647_831_424), 3: (16_853_702, 1_019_901_520),
            4: (28_851_422, 1_898_050_240), 5: (49_842_542, 3_121_162_752)}
MAT = MIXERS.classes["mat"]
# tables 4.2 and 4.9 (MAT-2 ablations): params, GFLOPs; and the measured values
ABLATIONS = {"pure_mlp": (5.699e6, 0.461e9, 5_698_926, 462_190_464),
             "window": (7.802e6, 0.659e9, 7_698_558, 638_458_752),
             "mat_1234": (10.874e6, 0.783e9, 10_770_346, 761_782_144),
             "mat_234": (10.852e6, 0.707e9, 10_748_486, 688_217_984),
             "mat_4": (9.767e6, 0.568e9, 9_664_206, 550_633_344),
             "conv_pe": (11.107e6, 0.703e9, 11_004_728, 685_444_608),
             "patch_merging_pe": (10.892e6, 0.679e9, 10_791_032, 662_238_208)}


pytestmark = pytest.mark.usefixtures("one_thread")


def spec_path(name) -> str:
    return ROOT / "specs" / (f"mat_{name}.yaml" if isinstance(name, int) else f"ablations/mat_2_{name}.yaml")


def params(name) -> int:
    return archdsl.load_design(spec_path(name)).cost.params


@pytest.mark.parametrize("k", list(TABLE))
def test_specs_against_table_4_3(k):
    design = archdsl.load_design(spec_path(k))
    assert (design.cost.params, design.cost.flops) == MEASURED[k]
    paper_params, paper_flops = TABLE[k]
    assert abs(design.cost.params - paper_params) <= 0.03 * paper_params
    assert abs(design.cost.flops - paper_flops) <= 0.05 * paper_flops
    labels = [d["label"] for _, d in design.nodes("block")]
    assert labels[0] == "identity" and labels[-1] == f"mat(7x7, 1 tokens, heads={design.spec.stages[3].mixer[0].heads})"


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_specs_against_tables_4_2_and_4_9(name):
    paper_params, paper_flops, measured_params, measured_flops = ABLATIONS[name]
    design = archdsl.load_design(spec_path(name))
    assert (design.cost.params, design.cost.flops) == (measured_params, measured_flops)
    assert abs(design.cost.params - paper_params) <= 0.03 * paper_params
    assert abs(design.cost.flops - paper_flops) <= 0.07 * paper_flops


def within_rounding(value: int, a: float, b: float) -> bool:
    """``value`` is a difference of two figures printed to the thousandth of a million."""
    return a - b - 1000 <= value <= a - b + 1000


def test_the_ablation_differences_that_settle_the_decisions():
    """The parameter differences between ablation rows (each a few blocks or layers) match the
    paper's to its rounding: one shared abstract token and a position bias per MAT block
    (stage 3, stage 2), 6d^2 + 7d more than window attention, two norms per pure-MLP block,
    Bilinear PE's layers against a 3x3 conv PE."""
    mat2, mat4, mat234 = params(2), params("mat_4"), params("mat_234")
    assert within_rounding(mat2 - mat4, 10.767e6, 9.767e6)           # stage 3: MAT vs pure MLP
    assert within_rounding(mat234 - mat2, 10.852e6, 10.767e6)        # stage 2: MAT vs pure MLP
    assert within_rounding(params("mat_1234") - mat234, 10.874e6, 10.852e6)
    assert within_rounding(mat2 - params("window"), 10.767e6, 7.802e6)
    assert within_rounding(params("conv_pe") - mat2, 11.107e6, 10.767e6)
    assert abs(params("pure_mlp") - 5.699e6) <= 500
    # per window instead of shared, the abstract tokens of stage 3 (4 windows) would break the first
    d = 128
    assert not within_rounding(mat2 - mat4 + 6 * 3 * d, 10.767e6, 9.767e6)


def test_mat_2_builds_and_counts_exactly_at_a_non_square_size(write_spec):
    """224x448: stage 3 is a 14x28 grid (8 windows), stage 4 7x14 (2 windows)."""
    text = spec_path(2).read_text().replace("input: 3x224x224", "input: 3x224x448")
    model = archdsl.build_model(write_spec(text))
    report = traced_cost(model, (3, 224, 448))
    assert model.design.cost.params == report.params == MEASURED[2][0]
    assert abs(model.design.cost.flops - report.flops) <= 1e-6 * report.flops
    labels = [d["label"] for _, d in model.design.nodes("block")]
    assert labels[4] == "mat(7x7, 8 tokens, heads=8)" and labels[-1] == "mat(7x7, 2 tokens, heads=16)"
    model.train()
    out = model(torch.randn(1, 3, 224, 448))
    assert out.shape == (1, 1000)
    out.logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_a_size_the_windows_do_not_divide_is_refused(write_spec):
    text = spec_path(2).read_text().replace("input: 3x224x224", "input: 3x320x192")
    with pytest.raises(SpecError) as err:
        archdsl.load_design(write_spec(text))
    message = str(err.value)
    assert "stages[2].mixer.size: window 7 does not divide the 20x12 token grid of stage 3" in message
    assert "valid sizes: 1, 2, 4, 20" in message
    assert "stages[3].mixer.size: window 7 does not divide the 10x6 token grid of stage 4" in message


PROBE = """
    name: probe
    input: 3x56x56
    stem: patch_embed(patch=4)
    stages:
      - depth: 1
        width: 32
        mixer: {mixer}
    head: {{classes: 10}}
    """


@pytest.mark.parametrize("mixer, field, message", [
    ("mat(heads=5)", "mixer.heads", "5 heads do not divide the width 32"),
    ("mat(size=5, heads=2)", "mixer.size", "window 5 does not divide the 14x14 token grid"),
    ("mat(size=0, heads=2)", "mixer.size", "greater than or equal to 1"),
    ("mat(size=7)", "mixer.heads", "required option 'heads' is missing"),
])
def test_bad_options_name_their_field(write_spec, mixer, field, message):
    with pytest.raises(SpecError) as err:
        archdsl.load_design(write_spec(PROBE.format(mixer=mixer)))
    assert f"stages[0].{field}: " in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("size", [(14, 14), (14, 28), (5, 3), (7, 21)])
def test_mixer_cost_equals_the_traced_count(size):
    shape = grid(*size, 48)
    spec = MAT(heads=3)
    report = traced_cost(Tokens(spec.build(shape, 0)), (1, shape.tokens, 48))
    cost = spec.cost(shape, 0)
    assert cost.params == report.params
    assert cost.flops == report.flops


def test_information_crosses_windows_with_mat_and_not_with_window_attention():
    """14x14 grid, four 7x7 windows: changing the top-left window's tokens changes the
    bottom-right window's outputs through the mixed abstract tokens; plain window attention
    leaves them unchanged."""
    shape = grid(14, 14)
    x = torch.randn(1, 14, 14, 32)
    changed = x.clone()
    changed[:, :7, :7] += torch.randn(1, 7, 7, 32)
    for spec, crosses in [(MAT(heads=4), True), (WindowAttentionSpec(heads=4), False)]:
        mixer = spec.build(shape, 0).eval()
        with torch.inference_mode():
            a, b = (mixer(t.reshape(1, 196, 32)).reshape(1, 14, 14, 32) for t in (x, changed))
        far = (a[:, 7:, 7:] - b[:, 7:, 7:]).abs().max()
        assert (far > 1e-4) if crosses else (far == 0)
        assert (a[:, :7, :7] - b[:, :7, :7]).abs().max() > 1e-4


def test_abstract_tokens_follow_the_window_count_and_parameters_do_not():
    spec = MAT(heads=8)
    counts = []
    for side in (7, 14, 28, 56):
        shape = grid(side, side, 128)
        mixer = spec.build(shape, 0)
        counts.append(sum(p.numel() for p in mixer.parameters()))
        nw = (side // 7) ** 2
        assert spec.parts(shape)["mixing"] == mhsa_cost(1, nw, 128, 8, True)
        assert spec.describe(shape, 0) == f"mat(7x7, {nw} tokens, heads=8)"
    assert len(set(counts)) == 1 and counts[0] == spec.cost(grid(14, 14, 128), 0).params


def test_flops_are_linear_in_the_grid_but_for_the_abstract_token_terms():
    """4x the tokens: 4x the FLOPs of every per-token part, 16x those of the mixing and fusion
    attention products (``N_w^2`` and ``HW N_w`` terms). Fusion makes MAT quadratic in the grid
    (``HW N_w = (HW)^2 / w^2``), contrary to the thesis' "linear complexity": 4.15x from 14x14 to
    28x28 (MAT-2's stage 3 at 224 and 448), 4.6x and 6.0x at the next two doublings."""
    spec = MAT(heads=8)
    ratios = []
    for side in (14, 28, 56):
        small, large = spec.parts(grid(side, side, 128)), spec.parts(grid(2 * side, 2 * side, 128))
        assert large["proj"].flops == 4 * small["proj"].flops
        nw = (side // 7) ** 2
        products = 2 * 128 * (nw * nw + side * side * nw)  # mixing and fusion attention products
        linear = sum(p.flops for p in small.values()) - products
        assert sum(p.flops for p in large.values()) == 4 * linear + 16 * products
        ratios.append(sum(p.flops for p in large.values()) / sum(p.flops for p in small.values()))
    assert 4 < ratios[0] < 4.2 and ratios[0] < ratios[1] < ratios[2]
    window = WindowAttentionSpec(heads=8)
    assert window.cost(grid(56, 56, 128), 0).flops == 4 * window.cost(grid(28, 28, 128), 0).flops


def bilinear_pe(src: TensorShape, width: int = 24):
    spec = BilinearPESpec()
    return spec, spec.build(src, width).eval()


def test_bilinear_pe_with_zero_offsets_samples_the_regular_grid():
    """Initialised offsets are zero: the output is the 1x1 conv's output, sampled exactly at its
    pixel centres."""
    src = TensorShape("NCHW", 16, 15, 9)
    _, pe = bilinear_pe(src)
    x = torch.randn(2, 16, 15, 9)
    with torch.inference_mode():
        out = pe(x)
        plain = pe.pwconv(pe.dwconv(x))
    assert out.shape == (2, 24, 8, 5)
    assert torch.allclose(out, plain, atol=1e-5)


def test_bilinear_pe_samples_bilinearly_at_the_offsets():
    """A constant offset of half a pixel to the right averages each pixel with its right
    neighbour (and with the zero padding at the right border)."""
    src = TensorShape("NCHW", 16, 16, 16)
    _, pe = bilinear_pe(src)
    with torch.no_grad():
        pe.offset.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.randn(1, 16, 16, 16)
    with torch.inference_mode():
        out, y = pe(x), pe.pwconv(pe.dwconv(x))
    expected = (y + F.pad(y[..., 1:], (0, 1))) / 2
    assert torch.allclose(out, expected, atol=1e-5)


def test_bilinear_pe_offsets_depend_on_the_input():
    src = TensorShape("NLC", 16, 8, 8)
    _, pe = bilinear_pe(src)
    nn.init.normal_(pe.offset.weight, std=0.5)
    x1, x2 = torch.randn(1, 64, 16), torch.randn(1, 64, 16)
    with torch.inference_mode():
        offsets = [pe.offset(pe.pwconv(pe.dwconv(x.transpose(1, 2).reshape(1, 16, 8, 8)))) for x in (x1, x2)]
        moved = pe(x1)
        regular = pe.pwconv(pe.dwconv(x1.transpose(1, 2).reshape(1, 16, 8, 8))).flatten(2).transpose(1, 2)
    assert not torch.allclose(offsets[0], offsets[1])
    assert moved.shape == (1, 16, 24) and not torch.allclose(moved, regular, atol=1e-3)


@pytest.mark.parametrize("src", [TensorShape("NCHW", 16, 15, 9), TensorShape("NLC", 32, 28, 14)])
def test_bilinear_pe_cost_equals_the_traced_count(src):
    spec, pe = bilinear_pe(src, 48)
    shape = (src.channels, src.height, src.width) if src.layout == "NCHW" else (1, src.tokens, src.channels)
    model = pe if src.layout == "NCHW" else Tokens(pe)
    report = traced_cost(model, shape)
    assert spec.cost(src, 48).params == report.params
    assert spec.cost(src, 48).flops == report.flops
    assert "aten::grid_sampler" not in report.uncounted
